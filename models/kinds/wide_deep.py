"""Keras 3 Wide&Deep CTR model with its preprocessing inside the saved model.

Serving feeds the raw Feast features and ids; hashing of ids and crosses, the log scale and
the normalisation of counts (statistics adapted on the training days) are layers of the model,
so nothing can drift between training and serving. Only `keras.ops` and Keras layers are used:
the same code trains under the TensorFlow, JAX or PyTorch backend, and the `.keras` file loads
under any of them. Importable without Airflow, Feast or MLflow, so benchmarks can run it bare.

One coherent thing, hence its length: the model's layers, its training and fine-tuning, its fast
request scorer and its adapter to the model-kind protocol (`WideDeepKind`) belong together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from feature_repo.contract import ID_COLUMNS, LABEL
from models.kinds.base import Fitted, Scorer, logit, sampling_offset
from models.kinds.progress import FitProgress, keras_callback
from models.kinds.rows import Rows, as_rows

if TYPE_CHECKING:
    from models.scoring import ScoringModel

SERIALIZATION_PACKAGE = "realtime_ctr"
# Wide crosses: the user's taste for this very item and for its category (memorisation).
DEFAULT_CROSSES: tuple[tuple[str, str], ...] = (("user_id", "item_id"), ("user_id", "category_id"))
# Ids are reduced modulo this prime before a cross, so that a*P + b stays inside int32 on every
# backend (JAX runs without 64-bit integers by default).
CROSS_PRIME = 46_337
MAX_ID_BUCKETS = 1_000_003
# Frames up to this many rows (requests) go through the request scorer; larger ones (whole
# evaluation sets) through Keras' batched predict.
REQUEST_ROWS = 8192
# Rows per predict call of the permutation importance (shuffled copies of several features).
IMPORTANCE_ROWS = 400_000
# On a GPU: bfloat16 compute and large batches.
GPU_PARAMS: dict[str, Any] = {"mixed_precision": True, "batch_size": 8192}

# Rows per step when none is given. Keras' Adam and the embeddings' L2 penalty update every row of
# the embedding tables at each step, so a step costs about the same whatever its rows, and more as
# the catalogue (the tables) grows: at 4 M items most of a CPU epoch of 1,024-row steps goes there.
# Big training sets take bigger steps, an epoch within STEPS_PER_EPOCH of them; small ones keep
# the smallest batch.
MIN_BATCH, MAX_BATCH, STEPS_PER_EPOCH = 1024, 8192, 1000

DEFAULT_PARAMS: dict[str, Any] = {
    "embedding_dim": 16,
    "hidden_units": [256, 128, 64],
    "dropout": 0.1,
    "embedding_l2": 1e-6,
    "cross_buckets": 200_003,
    "learning_rate": 1e-3,
    "batch_size": None,  # None: batch_size_for(the training rows)
    "epochs": 20,
    "patience": 3,
    "mixed_precision": False,
    # Streaming: rows shuffled together per epoch (a buffer of whole blocks, in a new order each
    # epoch). A training set smaller than this is shuffled whole, as an in-memory fit would.
    "shuffle_buffer_rows": 1_000_000,
}


def batch_size_for(rows: int) -> int:
    """The smallest power-of-two batch from MIN_BATCH that makes an epoch of `rows` at most
    STEPS_PER_EPOCH steps, capped at MAX_BATCH."""
    size = MIN_BATCH
    while size < MAX_BATCH and -(-rows // size) > STEPS_PER_EPOCH:
        size *= 2
    return size


def _resolved(params: dict[str, Any], rows: int) -> dict[str, Any]:
    """The defaults, then `params`, with the batch size worked out for `rows` if none was given."""
    params = {**DEFAULT_PARAMS, **params}
    if params["batch_size"] is None:
        params["batch_size"] = batch_size_for(rows)
    return params


def _keras():
    import keras

    return keras


def _register(cls):
    return _keras().saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)(cls)


def custom_layers() -> dict[str, Any]:
    """Custom layers, defined on first use so that importing this module does not import Keras."""
    if "IdHash" in _LAYERS:
        return _LAYERS
    keras = _keras()
    ops = keras.ops

    @_register
    class IdHash(keras.layers.Layer):
        """An integer id to one of `num_buckets` buckets; any id, seen or not, gets a bucket."""

        def __init__(self, num_buckets: int, **kwargs):
            super().__init__(**kwargs)
            self.num_buckets = int(num_buckets)

        def call(self, ids):
            return ops.mod(ops.cast(ids, "int32"), self.num_buckets)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "num_buckets": self.num_buckets}

    @_register
    class HashedCross(keras.layers.Layer):
        """The pair (a, b) of two integer ids to one of `num_buckets` buckets: a wide cross feature."""

        def __init__(self, num_buckets: int, **kwargs):
            super().__init__(**kwargs)
            self.num_buckets = int(num_buckets)

        def call(self, inputs):
            a, b = (ops.mod(ops.cast(x, "int32"), CROSS_PRIME) for x in inputs)
            return ops.mod(a * CROSS_PRIME + b, self.num_buckets)

        def compute_output_shape(self, input_shape):
            return input_shape[0]

        def get_config(self):
            return {**super().get_config(), "num_buckets": self.num_buckets}

    @_register
    class LogCounts(keras.layers.Layer):
        """Counts and rates to log1p scale, plus a missing-value indicator per feature.

        A feature Feast could not find arrives as NaN: it becomes 0 with its indicator set, so the
        model can tell "no record" from "zero activity" without NaN reaching the weights.
        """

        def call(self, x):
            missing = ops.isnan(x)
            filled = ops.where(missing, ops.zeros_like(x), x)
            return ops.log1p(ops.relu(filled)), ops.cast(missing, x.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape, input_shape

    @_register
    class LogitShift(keras.layers.Layer):
        """Adds a constant to the logit: the correction for negative downsampling, saved with the
        model so that every consumer scores probabilities on unsampled data."""

        def __init__(self, offset: float, **kwargs):
            super().__init__(**kwargs)
            self.offset = float(offset)

        def call(self, x):
            return x + ops.cast(self.offset, x.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "offset": self.offset}

    _LAYERS.update(IdHash=IdHash, HashedCross=HashedCross, LogCounts=LogCounts, LogitShift=LogitShift)
    return _LAYERS


_LAYERS: dict[str, Any] = {}


@dataclass(frozen=True)
class WideDeepSpec:
    """What the model reads: numeric features in FeatureService order, categorical ids, crosses."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    crosses: tuple[tuple[str, str], ...] = ()

    @classmethod
    def for_columns(
        cls,
        numeric: Sequence[str],
        categorical: Sequence[str],
        crosses: Sequence[tuple[str, str]] = (),
    ) -> WideDeepSpec:
        """Keep only the crosses whose two columns the model reads."""
        usable = tuple((a, b) for a, b in crosses if a in categorical and b in categorical)
        return cls(tuple(numeric), tuple(categorical), usable)

    @property
    def inputs(self) -> tuple[str, ...]:
        return (*self.categorical, *self.numeric)


def _buckets(values: np.ndarray) -> int:
    """Twice the ids seen in training, capped: few collisions without a table per possible id."""
    return _buckets_for(int(len(np.unique(values))))


def _buckets_for(distinct: int) -> int:
    return int(min(max(2 * distinct + 1, 101), MAX_ID_BUCKETS))


def _log_scale(raw: np.ndarray) -> np.ndarray:
    """What the normaliser sees: log1p of the counts, missing and negative values as 0."""
    return np.log1p(np.clip(np.nan_to_num(raw, nan=0.0), 0, None))


@dataclass(frozen=True)
class InputStats:
    """What the preprocessing layers are adapted to on the training rows: the hash buckets per id
    column and the mean and variance of each log-scaled numeric feature."""

    buckets: dict[str, int]
    mean: np.ndarray
    variance: np.ndarray

    @classmethod
    def of_inputs(cls, spec: WideDeepSpec, inputs: dict[str, np.ndarray]) -> InputStats:
        buckets = {name: _buckets(inputs[name]) for name in spec.categorical}
        if not spec.numeric:
            return cls(buckets, np.zeros(0), np.zeros(0))
        logs = _log_scale(np.concatenate([inputs[name] for name in spec.numeric], axis=1)).astype(np.float64)
        return cls(buckets, logs.mean(axis=0), logs.var(axis=0))

    @classmethod
    def of_rows(cls, spec: WideDeepSpec, rows: Rows) -> InputStats:
        """The same statistics in one pass over the blocks: distinct ids as a running union,
        moments as float64 sums."""
        seen = {name: np.zeros(0, np.int64) for name in spec.categorical}
        total, squares, n = np.zeros(len(spec.numeric)), np.zeros(len(spec.numeric)), 0
        for frame in rows.frames(spec.inputs):
            inputs = model_inputs(frame, spec)
            for name in spec.categorical:
                seen[name] = np.union1d(seen[name], inputs[name].ravel())
            if spec.numeric:
                logs = _log_scale(np.concatenate([inputs[name] for name in spec.numeric], axis=1))
                total += logs.sum(axis=0, dtype=np.float64)
                squares += np.square(logs, dtype=np.float64).sum(axis=0)
                n += len(frame)
        mean = total / max(n, 1)
        return cls(
            {name: _buckets_for(len(ids)) for name, ids in seen.items()},
            mean,
            np.maximum(squares / max(n, 1) - mean**2, 0.0),
        )


def model_inputs(frame: pd.DataFrame, spec: WideDeepSpec) -> dict[str, np.ndarray]:
    """The model's named inputs from a frame of raw features: training and serving both use this."""
    inputs: dict[str, np.ndarray] = {}
    for name in spec.categorical:
        column = frame[name] if name in frame else pd.Series(-1, index=frame.index)
        inputs[name] = column.fillna(-1).to_numpy(dtype=np.int32).reshape(-1, 1)
    for name in spec.numeric:
        column = frame[name] if name in frame else pd.Series(np.nan, index=frame.index)
        inputs[name] = column.to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1)
    return inputs


def build_wide_deep(
    spec: WideDeepSpec,
    train_inputs: dict[str, np.ndarray] | InputStats,
    params: dict[str, Any] | None = None,
    seed: int = 42,
):
    """A compiled Wide&Deep model whose hashing and normalisation are adapted on `train_inputs`
    (the training rows' model inputs, or their InputStats)."""
    stats = train_inputs if isinstance(train_inputs, InputStats) else InputStats.of_inputs(spec, train_inputs)
    keras = _keras()
    layers = custom_layers()
    params = {**DEFAULT_PARAMS, **(params or {})}
    keras.utils.set_random_seed(seed)
    regulariser = keras.regularizers.L2(params["embedding_l2"])

    inputs = {name: keras.Input(shape=(1,), name=name, dtype="int32") for name in spec.categorical}
    inputs |= {name: keras.Input(shape=(1,), name=name, dtype="float32") for name in spec.numeric}

    wide_terms, deep_parts, hashed = [], [], {}
    for name in spec.categorical:
        buckets = stats.buckets[name]
        hashed[name] = layers["IdHash"](buckets, name=f"{name}_hash")(inputs[name])
        deep = keras.layers.Embedding(
            buckets, params["embedding_dim"], embeddings_regularizer=regulariser, name=f"{name}_embedding"
        )(hashed[name])
        deep_parts.append(keras.layers.Flatten(name=f"{name}_flat")(deep))
        wide_terms.append(keras.layers.Embedding(buckets, 1, name=f"{name}_wide")(hashed[name]))
    for a, b in spec.crosses:
        cross = layers["HashedCross"](params["cross_buckets"], name=f"{a}_x_{b}")([inputs[a], inputs[b]])
        wide_terms.append(
            keras.layers.Embedding(
                params["cross_buckets"], 1, embeddings_regularizer=regulariser, name=f"{a}_x_{b}_wide"
            )(cross)
        )
    wide_terms = [keras.layers.Flatten()(term) for term in wide_terms]

    if spec.numeric:
        raw = keras.layers.Concatenate(name="numeric")([inputs[name] for name in spec.numeric])
        logs, missing = layers["LogCounts"](name="log_counts")(raw)
        normaliser = keras.layers.Normalization(
            mean=stats.mean.tolist(), variance=stats.variance.tolist(), name="normalise"
        )
        numeric = keras.layers.Concatenate(name="numeric_encoded")([normaliser(logs), missing])
        deep_parts.append(numeric)
        wide_terms.append(keras.layers.Dense(1, name="numeric_wide")(numeric))

    deep = keras.layers.Concatenate(name="deep_input")(deep_parts) if len(deep_parts) > 1 else deep_parts[0]
    for i, units in enumerate(params["hidden_units"]):
        deep = keras.layers.Dense(units, activation="relu", name=f"deep_{i}")(deep)
        deep = keras.layers.Dropout(params["dropout"], seed=seed + i)(deep)
    wide_terms.append(keras.layers.Dense(1, name="deep_logit")(deep))
    logit = keras.layers.Add(name="logit")(wide_terms) if len(wide_terms) > 1 else wide_terms[0]
    # float32 output even under a mixed-precision policy: probabilities need the precision.
    output = keras.layers.Activation("sigmoid", dtype="float32", name="ctr")(logit)
    model = keras.Model(inputs=inputs, outputs=output, name="wide_deep_ctr")
    _compile(model, params["learning_rate"])
    return model


@dataclass
class TrainedWideDeep:
    model: Any  # keras.Model
    spec: WideDeepSpec
    params: dict[str, Any]
    best_epoch: int
    history: dict[str, list[float]] = field(default_factory=dict)
    train_seconds: float = 0.0
    rows: int = 0

    @property
    def examples_per_second(self) -> float:
        """Training rows per second over all epochs, compilation and validation included."""
        return self.rows * len(self.history.get("loss", [])) / self.train_seconds

    @property
    def steady_examples_per_second(self) -> float:
        """Training rows per second of the fastest epoch after the first (which compiles)."""
        seconds = self.history.get("epoch_seconds") or [self.train_seconds]
        return self.rows / min(seconds[1:] or seconds)


def _compile(model, learning_rate: float) -> None:
    keras = _keras()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )


def _callbacks(params: dict[str, Any]) -> tuple[list[Any], Any]:
    """Early stopping on the validation loss (best weights restored), the epoch timer, and the
    progress log: what every fit uses; returns them and the timer."""
    keras = _keras()
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=params["patience"], restore_best_weights=True
    )
    timer = _EpochTimer.make()
    progress = keras_callback(FitProgress("wide&deep epochs", params["epochs"], every_s=0))
    return [stop, timer, progress], timer


def _fit(
    model, spec: WideDeepSpec, x_train, y_train, x_valid, y_valid, params: dict[str, Any], verbose: int
) -> TrainedWideDeep:
    """Fit with early stopping on the validation rows, best weights restored."""
    callbacks, timer = _callbacks(params)
    started = time.perf_counter()
    history = model.fit(
        x_train,
        y_train.astype(np.float32),
        validation_data=(x_valid, y_valid.astype(np.float32)),
        batch_size=params["batch_size"],
        epochs=params["epochs"],
        callbacks=callbacks,
        verbose=verbose,
        shuffle=True,
    )
    return _trained(model, spec, params, history, timer.seconds, time.perf_counter() - started, len(y_train))


def _shuffled_batches(
    rows: Rows, spec: WideDeepSpec, batch_size: int, buffer_rows: int, seed: int, shuffle: bool
):
    """A keras.utils.PyDataset of (model inputs, labels) batches read block by block from `rows`.

    Each epoch the blocks are taken in a new seeded order and grouped into buffers of about
    `buffer_rows` rows, each shuffled: memory holds at most two buffers, whatever the number of
    rows. Batches are read in order (one worker), so each buffer is read once per epoch.
    """
    keras = _keras()
    columns = [*spec.inputs, LABEL]

    class ShuffledBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch, self.total = 0, len(rows)
            self._cache: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] = {}
            self._plan()

        def _plan(self) -> None:
            sizes = rows.block_rows()
            rng = np.random.default_rng([seed, self.epoch])
            order = rng.permutation(len(sizes)) if shuffle else np.arange(len(sizes))
            self.buffers, current, filled = [], [], 0
            for block in order:
                if current and filled + sizes[block] > buffer_rows:
                    self.buffers.append(current)
                    current, filled = [], 0
                current.append(int(block))
                filled += sizes[block]
            if current:
                self.buffers.append(current)
            counts = [sum(sizes[b] for b in buffer) for buffer in self.buffers]
            self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            self._cache.clear()

        def _buffer(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
            if index not in self._cache:
                frames = [rows.block(block, columns) for block in self.buffers[index]]
                frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
                inputs, labels = model_inputs(frame, spec), frame[LABEL].to_numpy(np.float32)
                if shuffle:
                    mix = np.random.default_rng([seed, self.epoch, index]).permutation(len(frame))
                    inputs, labels = {k: v[mix] for k, v in inputs.items()}, labels[mix]
                for old in [k for k in self._cache if k < index - 1]:
                    del self._cache[old]
                self._cache[index] = inputs, labels
            return self._cache[index]

        def __len__(self) -> int:
            return -(-self.total // batch_size)

        def __getitem__(self, i: int):
            lo, hi = i * batch_size, min((i + 1) * batch_size, self.total)
            first = int(np.searchsorted(self.starts, lo, side="right") - 1)
            last = int(np.searchsorted(self.starts, hi - 1, side="right") - 1)
            parts_x, parts_y = [], []
            for index in range(first, last + 1):
                inputs, labels = self._buffer(index)
                a, b = (
                    max(lo, self.starts[index]) - self.starts[index],
                    min(hi, self.starts[index + 1]) - self.starts[index],
                )
                parts_x.append({k: v[a:b] for k, v in inputs.items()})
                parts_y.append(labels[a:b])
            if len(parts_x) == 1:
                return parts_x[0], parts_y[0]
            return {k: np.concatenate([p[k] for p in parts_x]) for k in parts_x[0]}, np.concatenate(parts_y)

        def on_epoch_end(self) -> None:
            self.epoch += 1
            if shuffle:
                self._plan()

    return ShuffledBatches()


def _fit_batches(
    model, spec: WideDeepSpec, train: Rows, valid: Rows, params: dict[str, Any], seed: int, verbose: int
) -> TrainedWideDeep:
    """`_fit`, streaming: training batches from a shuffled PyDataset, validation in order."""
    size, buffer = params["batch_size"], params["shuffle_buffer_rows"]
    callbacks, timer = _callbacks(params)
    started = time.perf_counter()
    history = model.fit(
        _shuffled_batches(train, spec, size, buffer, seed, shuffle=True),
        validation_data=_shuffled_batches(valid, spec, max(size, 8192), buffer, seed, shuffle=False),
        epochs=params["epochs"],
        callbacks=callbacks,
        verbose=verbose,
    )
    return _trained(model, spec, params, history, timer.seconds, time.perf_counter() - started, len(train))


class _EpochTimer:
    @staticmethod
    def make():
        keras = _keras()

        class EpochTimer(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)

        return EpochTimer()


def _trained(model, spec, params, history, epoch_seconds, seconds, rows) -> TrainedWideDeep:
    # Epoch times include the validation pass; the first also includes compilation.
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    return TrainedWideDeep(
        model=model,
        spec=spec,
        params=params,
        best_epoch=int(np.argmin(curves["val_loss"])),
        history={**curves, "epoch_seconds": epoch_seconds},
        train_seconds=seconds,
        rows=rows,
    )


def train_wide_deep_rows(
    train: Rows, valid: Rows, spec: WideDeepSpec, seed: int = 42, verbose: int = 0, **overrides: Any
) -> TrainedWideDeep:
    """`train_wide_deep` streaming from Rows: the preprocessing is adapted in one pass over the
    blocks, then every epoch reads them again, a shuffle buffer at a time."""
    params = _resolved(overrides, len(train))
    _set_precision(params["mixed_precision"])
    try:
        model = build_wide_deep(spec, InputStats.of_rows(spec, train), params, seed)
        return _fit_batches(model, spec, train, valid, params, seed, verbose)
    finally:
        _set_precision(False)


def shift_logit(model: Any, offset: float):
    """The model with `offset` added to its logit before the sigmoid (a LogitShift layer): the
    correction for negative downsampling, saved in the `.keras` file."""
    keras = _keras()
    shift = custom_layers()["LogitShift"](offset, dtype="float32", name="sampling_correction")
    output = keras.layers.Activation("sigmoid", dtype="float32", name="ctr_corrected")(
        shift(model.get_layer("logit").output)
    )
    inputs = {tensor.name.split(":")[0]: tensor for tensor in model.inputs}
    return keras.Model(inputs=inputs, outputs=output, name=model.name)


def _set_precision(mixed: bool) -> None:
    keras = _keras()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed else "float32")


def train_wide_deep(
    train: pd.DataFrame,
    y_train: np.ndarray,
    valid: pd.DataFrame,
    y_valid: np.ndarray,
    spec: WideDeepSpec,
    seed: int = 42,
    verbose: int = 0,
    **overrides: Any,
) -> TrainedWideDeep:
    """Fit on the training days, early-stopped on the validation day; best weights kept."""
    params = _resolved(overrides, len(train))
    _set_precision(params["mixed_precision"])
    try:
        x_train, x_valid = model_inputs(train, spec), model_inputs(valid, spec)
        model = build_wide_deep(spec, x_train, params, seed)
        return _fit(model, spec, x_train, y_train, x_valid, y_valid, params, verbose)
    finally:
        _set_precision(False)


def continue_training(
    trained: TrainedWideDeep,
    train: pd.DataFrame,
    y_train: np.ndarray,
    valid: pd.DataFrame,
    y_valid: np.ndarray,
    learning_rate: float = 1e-4,
    epochs: int = 5,
    verbose: int = 0,
) -> TrainedWideDeep:
    """Warm start: fine-tune a trained model on newer rows, keeping its adapted preprocessing."""
    _compile(trained.model, learning_rate)
    params = _resolved(
        {**trained.params, "learning_rate": learning_rate, "epochs": epochs, "patience": 2}, len(train)
    )
    x_train, x_valid = model_inputs(train, trained.spec), model_inputs(valid, trained.spec)
    return _fit(trained.model, trained.spec, x_train, y_train, x_valid, y_valid, params, verbose)


def predict_wide_deep(
    model: Any, frame: pd.DataFrame, spec: WideDeepSpec, batch_size: int = 8192
) -> np.ndarray:
    """Probability of purchase intent per row. A request-sized frame goes through
    `predict_on_batch` (the compiled step, no per-call data pipeline): ~5x faster than calling
    the model eagerly and ~10x faster than `predict` at serving sizes."""
    x = model_inputs(frame, spec)
    if len(frame) <= batch_size:
        out = model.predict_on_batch(x)
    else:
        out = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(out, dtype=np.float64).reshape(-1)


class RequestScorer:
    """Scores request-sized frames through one traced TensorFlow function of two matrices.

    `predict_on_batch` converts each of the model's ~50 named inputs to a tensor and flattens the
    dict on every call: 3.1 ms for 100 rows on 2 cores, nearly all of it per-input overhead. Here the
    inputs cross into TensorFlow as one float matrix and one id matrix and are split into the named
    inputs inside the graph: 1.1 ms, the same scores to float32 rounding (benchmarks/RESULTS.md).
    TensorFlow backend only (`for_model` returns None under another backend, where
    `predict_wide_deep` is used instead).
    """

    def __init__(self, model: Any, spec: WideDeepSpec) -> None:
        import tensorflow as tf

        self.spec = spec
        numeric, categorical = list(spec.numeric), list(spec.categorical)

        def score(x_numeric, x_categorical):
            inputs = {name: x_numeric[:, i : i + 1] for i, name in enumerate(numeric)}
            inputs |= {name: x_categorical[:, i : i + 1] for i, name in enumerate(categorical)}
            return model(inputs, training=False)

        signature = [
            tf.TensorSpec([None, len(numeric)], tf.float32),
            tf.TensorSpec([None, len(categorical)], tf.int32),
        ]
        self._score = tf.function(score, input_signature=signature).get_concrete_function()

    @classmethod
    def for_model(cls, model: Any, spec: WideDeepSpec) -> RequestScorer | None:
        return cls(model, spec) if _keras().backend.backend() == "tensorflow" else None

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        if frame.empty:
            return np.zeros(0, np.float64)
        x_numeric, x_categorical = model_matrices(frame, self.spec)
        out = self._score(x_numeric, x_categorical)
        return np.asarray(out, dtype=np.float64).reshape(-1)


def model_matrices(frame: pd.DataFrame, spec: WideDeepSpec) -> tuple[np.ndarray, np.ndarray]:
    """The values `model_inputs` gives, as one float32 matrix (numeric, in spec order, missing as NaN)
    and one int32 matrix (ids, missing as -1)."""
    numeric = frame.reindex(columns=list(spec.numeric)).to_numpy(np.float32, na_value=np.nan)
    categorical = frame.reindex(columns=list(spec.categorical)).fillna(-1).to_numpy(np.int32)
    return numeric, categorical


def spec_of(model: Any) -> WideDeepSpec:
    """Read the spec back from a loaded model: its input names and dtypes, its cross layers."""
    layers = custom_layers()
    categorical, numeric = [], []
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        (categorical if "int" in str(tensor.dtype) else numeric).append(name)
    crosses = []
    for layer in model.layers:
        if isinstance(layer, layers["HashedCross"]):
            a, b = layer.name.split("_x_")
            crosses.append((a, b))
    return WideDeepSpec(tuple(numeric), tuple(categorical), tuple(crosses))


def load_wide_deep(path: str):
    """Load a `.keras` file in safe mode (no arbitrary code), with the custom layers registered."""
    custom_layers()
    return _keras().saving.load_model(path, safe_mode=True)


class _Scorer:
    """Request-sized frames through the traced `RequestScorer` (built on the first one), larger
    frames through Keras' batched predict."""

    def __init__(self, model: Any, spec: WideDeepSpec) -> None:
        self.model, self.spec = model, spec
        self._request: Scorer | None = None

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        if len(frame) > REQUEST_ROWS:
            return predict_wide_deep(self.model, frame, self.spec)
        if self._request is None:
            self._request = RequestScorer.for_model(self.model, self.spec) or (
                lambda f: predict_wide_deep(self.model, f, self.spec)
            )
        return self._request(frame)


class WideDeepKind:
    """Wide&Deep behind the model-kind protocol (models.kinds.base.ModelKind): saved as `.keras`
    and loaded in safe mode, explained by occlusion, ranked by permutation importance.

    Occlusion: each numeric feature of a candidate is in turn replaced by its mean over the
    request's candidates (a missing value stays missing); the change in logit is its
    contribution. It answers "what lifts this item above the other candidates": features the
    candidates share (the user's own numbers) contribute nothing. Ids (memorised by the wide part)
    are not occluded.
    """

    name = "wide_deep"
    model_file = "model.keras"
    registered_name_setting = "wide_deep_model_name"
    history_unit = "epoch"
    pip_packages = ("keras", "tensorflow")

    def fit(
        self,
        train: pd.DataFrame | Rows,
        valid: pd.DataFrame | Rows,
        features: list[str],
        *,
        device: str,
        seed: int,
    ) -> Fitted:
        train, valid = as_rows(train), as_rows(valid)
        present = set(train.block(0).columns) if train.block_rows() else set()
        categorical = [c for c in ID_COLUMNS if c in present]
        spec = WideDeepSpec.for_columns(features, categorical, DEFAULT_CROSSES)
        trained = train_wide_deep_rows(
            train, valid, spec, seed=seed, **(GPU_PARAMS if device == "cuda" else {})
        )
        fitted = self._fitted(trained)
        fitted.summary["examples_per_second"] = round(trained.examples_per_second)
        fitted.record = {"categorical": list(spec.categorical), "crosses": [list(p) for p in spec.crosses]}
        return fitted

    def correct_sampling(self, model: Any, negative_rate: float) -> Any:
        return shift_logit(model, sampling_offset(negative_rate))

    def fine_tune(
        self, model: ScoringModel, train: pd.DataFrame, valid: pd.DataFrame, *, seed: int
    ) -> Fitted:
        base = TrainedWideDeep(model.model, model.spec, {}, 0)
        trained = continue_training(base, train, train[LABEL].to_numpy(), valid, valid[LABEL].to_numpy())
        return self._fitted(trained)

    @staticmethod
    def _fitted(trained: TrainedWideDeep) -> Fitted:
        return Fitted(
            model=trained.model,
            spec=trained.spec,
            seconds=trained.train_seconds,
            params=trained.params,
            history=trained.history,
            summary={"best_epoch": trained.best_epoch},
        )

    def save(self, model: Any, path: Path) -> None:
        model.save(path)

    def load(self, path: Path) -> Any:
        return load_wide_deep(str(path))

    def spec_of(self, model: Any, meta: dict[str, Any]) -> tuple[list[str], Any]:
        spec = spec_of(model)
        return list(meta.get("features") or spec.numeric), spec

    def scorer(self, model: ScoringModel) -> Scorer:
        return _Scorer(model.model, model.spec)

    def contributions(self, model: ScoringModel, frame: pd.DataFrame) -> pd.DataFrame:
        numeric = list(model.spec.numeric)
        base = logit(model.predict(frame))
        means = frame[numeric].astype(np.float64).mean()
        n = len(frame)
        occluded = pd.concat([frame] * len(numeric), ignore_index=True)  # one block of rows per feature
        for block, name in enumerate(numeric):
            rows = slice(block * n, (block + 1) * n)
            column = occluded.columns.get_loc(name)
            occluded.iloc[rows, column] = means[name] if np.isfinite(means[name]) else np.nan
        scores = logit(model.predict(occluded)).reshape(len(numeric), n)
        return pd.DataFrame((base[None, :] - scores).T, columns=numeric, index=frame.index)

    def importance(
        self, model: ScoringModel, test: pd.DataFrame, y: np.ndarray, p: np.ndarray
    ) -> dict[str, dict[str, float]]:
        """The drop in test AUC when the feature is shuffled (permutation importance). The
        shuffled copies of several features go through one predict (Keras' predict has a fixed
        cost per call of ~0.25 s), at most IMPORTANCE_ROWS rows at a time."""
        from sklearn.metrics import roc_auc_score

        rng = np.random.default_rng(0)
        base = roc_auc_score(y, p)
        columns, n = list(model.spec.inputs), len(test)
        per_call = max(1, IMPORTANCE_ROWS // max(n, 1))
        drops = {}
        for lo in range(0, len(columns), per_call):
            group = columns[lo : lo + per_call]
            shuffled = pd.concat([test] * len(group), ignore_index=True)
            for block, column in enumerate(group):
                at = shuffled.columns.get_loc(column)
                shuffled.iloc[block * n : (block + 1) * n, at] = rng.permutation(test[column].to_numpy())
            scores = model.predict(shuffled).reshape(len(group), n)
            for column, shuffled_scores in zip(group, scores, strict=True):
                drops[column] = float(base - roc_auc_score(y, shuffled_scores))
        return {"test AUC drop when shuffled": drops}

    def load_from_mlflow(self, uri: str) -> Any:
        """A version logged in MLflow's own flavour for this kind (before the pyfunc packaging)."""
        import mlflow

        custom_layers()  # registered, so that safe-mode loading finds them
        return mlflow.keras.load_model(uri)
