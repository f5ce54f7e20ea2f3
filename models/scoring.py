"""What the service scores with: a trained model of any kind with its feature list, saved and
loaded in formats that never unpickle. The kind's adapter (models.kinds) does the work."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.kinds import KINDS, kind_of
from models.kinds.base import ModelKind, Scorer
from models.kinds.wide_deep import WideDeepKind
from models.kinds.xgb import XGBoostKind

__all__ = ["KINDS", "WIDE_DEEP", "XGBOOST", "ScoringModel", "load_saved", "wrap"]

# The kinds' names, for callers that name one.
XGBOOST = XGBoostKind.name
WIDE_DEEP = WideDeepKind.name


@dataclass
class ScoringModel:
    """A trained model with what it needs to score: its kind, features and (if it has one) spec."""

    kind: str
    model: Any
    features: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    spec: Any = None  # what the model reads, for kinds whose native model does not say it
    _scorer: Scorer | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def adapter(self) -> ModelKind:
        return kind_of(self.kind)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of purchase intent per row of raw features (and ids)."""
        if self._scorer is None:  # built once (Wide&Deep traces its request function on first use)
            self._scorer = self.adapter.scorer(self)
        return self._scorer(frame)

    def save(self, folder: Path) -> Path:
        """Model file plus meta.json; returns the model file."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.adapter.model_file
        self.adapter.save(self.model, path)
        (folder / "meta.json").write_text(json.dumps({**self.meta, "kind": self.kind}, indent=2, default=str))
        return path


def load_model_file(kind: str, path: Path) -> Any:
    return kind_of(kind).load(path)


def wrap(kind: str, model: Any, meta: dict[str, Any]) -> ScoringModel:
    """A ScoringModel around a loaded native model; features and spec as the kind reads them."""
    features, spec = kind_of(kind).spec_of(model, meta)
    return ScoringModel(kind=kind, model=model, features=features, meta=meta, spec=spec)


def load_saved(folder: Path) -> ScoringModel:
    """Load what `ScoringModel.save` wrote."""
    meta = json.loads((folder / "meta.json").read_text())
    kind = meta["kind"]
    return wrap(kind, load_model_file(kind, folder / kind_of(kind).model_file), meta)


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
