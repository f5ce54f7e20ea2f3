"""The XGBoost model kind: gradient-boosted trees over the FeatureService's numeric features.

Importable without Airflow, Feast or MLflow, so benchmarks can run it bare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from feature_repo.contract import LABEL
from models.kinds.base import Fitted, Scorer, feature_matrix, sampling_offset
from models.kinds.progress import FitProgress, xgboost_callback
from models.kinds.rows import Rows, as_rows

if TYPE_CHECKING:
    from models.scoring import ScoringModel

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 600,
    "learning_rate": 0.03,
    "max_depth": 4,
    "min_child_weight": 20,
    "subsample": 0.9,
    "colsample_bytree": 0.9,
    "reg_lambda": 1.0,
    "tree_method": "hist",
    # Early stopping watches the last metric: logloss, which also keeps the scores calibrated.
    "eval_metric": ["auc", "logloss"],
    "early_stopping_rounds": 100,
}


@dataclass
class TrainedXGB:
    model: Any  # xgboost.XGBClassifier
    features: list[str]
    params: dict[str, Any]
    best_iteration: int
    history: dict[str, list[float]] = field(default_factory=dict)


def train_xgb(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    features: list[str],
    device: str = "cpu",
    seed: int = 42,
    **overrides: Any,
) -> TrainedXGB:
    """Fit with early stopping on the validation window (the days after training)."""
    import xgboost as xgb

    params = {**DEFAULT_PARAMS, **overrides, "device": device, "random_state": seed}
    progress = xgboost_callback(FitProgress("xgboost rounds", params["n_estimators"]))
    model = xgb.XGBClassifier(**params, callbacks=[progress])
    model.fit(x_train, y_train, eval_set=[(x_valid, y_valid)], verbose=False)
    model.callbacks = None  # only for this fit: not saved with the model nor used by a later one
    model.get_booster().feature_names = list(features)
    history = {name: list(values) for name, values in model.evals_result()["validation_0"].items()}
    best = model.best_iteration if params.get("early_stopping_rounds") else params["n_estimators"] - 1
    return TrainedXGB(model, list(features), params, int(best), history)


# The scikit-learn names of DEFAULT_PARAMS that xgboost.train takes under another name or not at all.
_NOT_BOOSTER_PARAMS = ("n_estimators", "early_stopping_rounds")


def _batches(rows: Rows, features: list[str]):
    """An xgboost.DataIter over `rows`, one block at a time: the quantile DMatrix built from it
    sketches and compresses block by block, so no float copy of the whole set exists."""
    import xgboost as xgb

    class Blocks(xgb.DataIter):
        def __init__(self) -> None:
            self._next = 0
            super().__init__(release_data=True)

        def next(self, input_data) -> bool:
            if self._next == len(rows.block_rows()):
                return False
            frame = rows.block(self._next, [*features, LABEL])
            input_data(data=feature_matrix(frame, features), label=frame[LABEL].to_numpy(np.float32))
            self._next += 1
            return True

        def reset(self) -> None:
            self._next = 0

    return Blocks()


def train_xgb_rows(
    train: Rows,
    valid: Rows,
    features: list[str],
    device: str = "cpu",
    seed: int = 42,
    **overrides: Any,
) -> TrainedXGB:
    """Like `train_xgb`, streaming: the training and validation rows go block by block into
    QuantileDMatrix (the validation one sharing the training cuts), so memory holds the
    quantised matrix (one byte per value) and one block, never the frame. The same booster
    params and early stopping as `train_xgb`, returned as an XGBClassifier."""
    import xgboost as xgb

    params = {**DEFAULT_PARAMS, **overrides, "device": device, "random_state": seed}
    booster_params = {k: v for k, v in params.items() if k not in _NOT_BOOSTER_PARAMS}
    booster_params |= {"objective": "binary:logistic"}
    dtrain = xgb.QuantileDMatrix(_batches(train, features), max_bin=params.get("max_bin", 256))
    dvalid = xgb.QuantileDMatrix(_batches(valid, features), ref=dtrain)
    curves: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(
        booster_params,
        dtrain,
        num_boost_round=params["n_estimators"],
        evals=[(dvalid, "validation_0")],
        early_stopping_rounds=params.get("early_stopping_rounds"),
        evals_result=curves,
        verbose_eval=False,
        callbacks=[xgboost_callback(FitProgress("xgboost rounds", params["n_estimators"]))],
    )
    booster.feature_names = list(features)
    model = xgb.XGBClassifier(**params)
    model.load_model(bytearray(booster.save_raw("ubj")))
    history = {name: list(values) for name, values in curves["validation_0"].items()}
    best = booster.best_iteration if params.get("early_stopping_rounds") else params["n_estimators"] - 1
    return TrainedXGB(model, list(features), params, int(best), history)


def shift_base_score(model: Any, offset: float) -> Any:
    """The model with `offset` added to every logit (its base score moved in log-odds): what
    correcting for negative downsampling takes, kept inside the saved model file."""
    import json

    booster = model.get_booster()
    raw = json.loads(booster.save_config())["learner"]["learner_model_param"]["base_score"]
    base = float(np.asarray(json.loads(raw) if raw.startswith("[") else raw, dtype=np.float64).ravel()[0])
    shifted = np.log(base / (1 - base)) + offset
    booster.set_param({"base_score": float(1 / (1 + np.exp(-shifted)))})
    return model


def continue_xgb(
    model: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    features: list[str],
    seed: int = 42,
    rounds: int = 200,
    learning_rate: float = 0.01,
) -> TrainedXGB:
    """Warm start: add trees to a trained model on newer rows (`xgb_model=`), at a lower learning
    rate, early-stopped on the newest of them."""
    import xgboost as xgb

    params = {
        **model.get_params(),
        "n_estimators": rounds,
        "learning_rate": learning_rate,
        "early_stopping_rounds": 50,
        "random_state": seed,
    }
    base = model.get_booster().copy()
    base.feature_names = None  # the new rows come as arrays in the same column order
    updated = xgb.XGBClassifier(**params)
    updated.fit(x_train, y_train, eval_set=[(x_valid, y_valid)], verbose=False, xgb_model=base)
    updated.get_booster().feature_names = list(features)
    history = {name: list(values) for name, values in updated.evals_result()["validation_0"].items()}
    return TrainedXGB(updated, list(features), params, int(updated.best_iteration), history)


# A request's rows (a few hundred at most) are scored on one thread: for so few rows OpenMP's threads
# cost more than they save, and on a busy machine they wait for one another. 100 rows on 2 cores at
# load ~4: p50/p99 5.8/35 ms on the default threads, 1.3/5.3 ms on one. Larger frames (evaluation,
# batch scoring) keep every thread. The predictions are the same either way.
SINGLE_THREAD_ROWS = 2048


def _single_threaded(model: Any) -> Any:
    import copy

    single = copy.deepcopy(model)
    single.n_jobs = 1
    single.get_booster().set_param({"nthread": 1})  # what its predictions run on
    return single


def predict_ctr(model: Any, x: np.ndarray) -> np.ndarray:
    """Probability of purchase intent for each row."""
    return model.predict_proba(x)[:, 1]


def shap_contributions(model: Any, x: np.ndarray, features: list[str]) -> np.ndarray:
    """TreeSHAP value per row and feature, bias last, in log-odds: over the same trees as
    `predict_ctr` (with early stopping, up to the best iteration), so a row's values add up to its
    predicted logit."""
    import xgboost as xgb

    best = getattr(model, "best_iteration", None)
    return model.get_booster().predict(
        xgb.DMatrix(x, feature_names=features),
        pred_contribs=True,
        iteration_range=(0, best + 1) if best is not None else (0, 0),
    )


class XGBoostKind:
    """XGBoost behind the model-kind protocol (models.kinds.base.ModelKind): saved as UBJ, exact
    TreeSHAP explanations, gain and mean |SHAP| importance."""

    name = "xgboost"
    model_file = "model.ubj"
    registered_name_setting = "xgb_model_name"
    history_unit = "round"
    pip_packages = ("xgboost", "scikit-learn")

    def fit(
        self,
        train: pd.DataFrame | Rows,
        valid: pd.DataFrame | Rows,
        features: list[str],
        *,
        device: str,
        seed: int,
    ) -> Fitted:
        started = time.perf_counter()
        train, valid = as_rows(train), as_rows(valid)
        trained = train_xgb_rows(train, valid, features, device=device, seed=seed)
        return self._fitted(trained, time.perf_counter() - started)

    def correct_sampling(self, model: Any, negative_rate: float) -> Any:
        return shift_base_score(model, sampling_offset(negative_rate))

    def fine_tune(
        self, model: ScoringModel, train: pd.DataFrame, valid: pd.DataFrame, *, seed: int
    ) -> Fitted:
        started = time.perf_counter()
        trained = continue_xgb(
            model.model,
            feature_matrix(train, model.features),
            train[LABEL].to_numpy(),
            feature_matrix(valid, model.features),
            valid[LABEL].to_numpy(),
            model.features,
            seed=seed,
        )
        return self._fitted(trained, time.perf_counter() - started)

    @staticmethod
    def _fitted(trained: TrainedXGB, seconds: float) -> Fitted:
        return Fitted(
            model=trained.model,
            seconds=seconds,
            params=trained.params,
            history=trained.history,
            summary={"best_iteration": trained.best_iteration},
        )

    def save(self, model: Any, path: Path) -> None:
        model.save_model(path)

    def load(self, path: Path) -> Any:
        import xgboost as xgb

        model = xgb.XGBClassifier()
        model.load_model(path)
        return model

    def spec_of(self, model: Any, meta: dict[str, Any]) -> tuple[list[str], Any]:
        return list(meta["features"]), None

    def scorer(self, model: ScoringModel) -> Scorer:
        native, features = model.model, model.features
        single = _single_threaded(native)

        def score(frame: pd.DataFrame) -> np.ndarray:
            x = feature_matrix(frame, features)
            return predict_ctr(single if len(x) <= SINGLE_THREAD_ROWS else native, x)

        return score

    def contributions(self, model: ScoringModel, frame: pd.DataFrame) -> pd.DataFrame:
        values = shap_contributions(model.model, feature_matrix(frame, model.features), model.features)
        return pd.DataFrame(values[:, :-1], columns=model.features, index=frame.index)

    def importance(
        self, model: ScoringModel, test: pd.DataFrame, y: np.ndarray, p: np.ndarray
    ) -> dict[str, dict[str, float]]:
        gain = model.model.get_booster().get_score(importance_type="gain")
        shap = np.abs(self.contributions(model, test).to_numpy()).mean(axis=0)
        return {
            "total gain": {f: float(gain.get(f, 0.0)) for f in model.features},
            "mean |SHAP contribution| (log-odds)": dict(zip(model.features, shap.tolist(), strict=True)),
        }

    def load_from_mlflow(self, uri: str) -> Any:
        """A version logged in MLflow's own flavour for this kind (before the pyfunc packaging)."""
        import mlflow

        return mlflow.xgboost.load_model(uri)
