"""One interface over both model kinds: score a frame of raw features, save and load in formats
that never unpickle (XGBoost UBJ, Keras `.keras` in safe mode)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

XGBOOST = "xgboost"
WIDE_DEEP = "wide_deep"
KINDS: tuple[str, ...] = (XGBOOST, WIDE_DEEP)
_MODEL_FILES = {XGBOOST: "model.ubj", WIDE_DEEP: "model.keras"}
# Frames up to this many rows (requests) go through Wide&Deep's request scorer; larger ones (whole
# evaluation sets) through Keras' batched predict.
REQUEST_ROWS = 8192


@dataclass
class ScoringModel:
    """A trained model with what it needs to score: its kind, features and (Wide&Deep) spec."""

    kind: str
    model: Any
    features: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    spec: Any = None  # models.kinds.wide_deep.WideDeepSpec for Wide&Deep
    _request_scorer: Any = field(default=None, init=False, repr=False, compare=False)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of purchase intent per row of raw features (and ids for Wide&Deep)."""
        if self.kind == XGBOOST:
            from models.features.training_set import feature_matrix
            from models.kinds.xgb import predict_ctr

            return predict_ctr(self.model, feature_matrix(frame, self.features))
        from models.kinds.wide_deep import RequestScorer, predict_wide_deep

        if len(frame) > REQUEST_ROWS:
            return predict_wide_deep(self.model, frame, self.spec)
        if self._request_scorer is None:  # traced once, on the first request-sized frame
            self._request_scorer = RequestScorer.for_model(self.model, self.spec) or (
                lambda f: predict_wide_deep(self.model, f, self.spec)
            )
        return self._request_scorer(frame)

    def save(self, folder: Path) -> Path:
        """Model file plus meta.json; returns the model file."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _MODEL_FILES[self.kind]
        if self.kind == XGBOOST:
            self.model.save_model(path)
        else:
            self.model.save(path)
        (folder / "meta.json").write_text(json.dumps({**self.meta, "kind": self.kind}, indent=2, default=str))
        return path


def load_model_file(kind: str, path: Path) -> Any:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    if kind == XGBOOST:
        import xgboost as xgb

        model = xgb.XGBClassifier()
        model.load_model(path)
        return model
    from models.kinds.wide_deep import load_wide_deep

    return load_wide_deep(str(path))


def wrap(kind: str, model: Any, meta: dict[str, Any]) -> ScoringModel:
    """A ScoringModel around a loaded native model; Wide&Deep reads its spec from the model."""
    spec = None
    if kind == WIDE_DEEP:
        from models.kinds.wide_deep import spec_of

        spec = spec_of(model)
        features = list(meta.get("features") or spec.numeric)
    else:
        features = list(meta["features"])
    return ScoringModel(kind=kind, model=model, features=features, meta=meta, spec=spec)


def load_saved(folder: Path) -> ScoringModel:
    """Load what `ScoringModel.save` wrote."""
    meta = json.loads((folder / "meta.json").read_text())
    kind = meta["kind"]
    return wrap(kind, load_model_file(kind, folder / _MODEL_FILES[kind]), meta)


def scoring_times_s(model: ScoringModel, frame: pd.DataFrame, repeats: int) -> list[float]:
    """Wall time of each of `repeats` predict calls on `frame`, after one untimed warm-up call
    (tracing, caches)."""
    model.predict(frame)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(frame)
        timings.append(time.perf_counter() - started)
    return timings


def scoring_latency_ms(model: ScoringModel, frame: pd.DataFrame, rows: int = 100, repeats: int = 15) -> float:
    """Median wall time to score one request of `rows` candidates (first call excluded: warm-up)."""
    return float(np.median(scoring_times_s(model, frame.head(rows), repeats)) * 1000)
