"""The one protocol every model kind implements, so that scoring, the registry, explanations, the
promotion gate, training and the ranker never switch on which kind a model is.

A kind is a stateless adapter around its native model (an XGBoost booster, a Keras model, ...):
it fits one on the training rows, saves and loads it in a format that never unpickles, scores a
frame of raw FeatureService rows, and explains and ranks its features (models.kinds.packaging logs
any kind to MLflow as one pyfunc). Frames are pandas frames of the FeatureService's raw features
plus ids, so a kind that reads list-valued features (a behaviour sequence of recent item ids) fits
the same protocol. Adding a kind is one module implementing this and one line in `models.kinds.KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from models.kinds.rows import Rows
    from models.scoring import ScoringModel

Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass
class Fitted:
    """What fitting or fine-tuning returns: the native model, its spec (what it reads, when the
    model cannot say it itself) and what the run records."""

    model: Any
    spec: Any = None
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    # Kind-specific facts worth a line in the training summary: best round or epoch, throughput...
    summary: dict[str, Any] = field(default_factory=dict)
    # Further facts recorded with the model (its training meta) but not summarised.
    record: dict[str, Any] = field(default_factory=dict)


class ModelKind(Protocol):
    """A model kind. Class attributes name it; methods take and return native models or
    `ScoringModel`s (native model + feature list + spec)."""

    name: ClassVar[str]  # "xgboost": the tag recorded on every registered version
    model_file: ClassVar[str]  # file name of the saved native model
    registered_name_setting: ClassVar[str]  # the Settings attribute with its registered model name
    history_unit: ClassVar[str]  # x axis of its training curves: "round", "epoch"
    pip_packages: ClassVar[tuple[str, ...]]  # what a logged model needs installed (numpy, pandas too)

    def fit(
        self,
        train: pd.DataFrame | Rows,
        valid: pd.DataFrame | Rows,
        features: list[str],
        *,
        device: str,
        seed: int,
    ) -> Fitted:
        """Fit on `train` (raw features + label, a frame or Rows streamed block by block),
        early-stopped on `valid`."""
        ...

    def correct_sampling(self, model: Any, negative_rate: float) -> Any:
        """The native model predicting for all rows when it was fitted on all positives and a
        share `negative_rate` of the negatives: its logit moved by log(negative_rate), inside the
        model itself, so every consumer of the saved model scores corrected probabilities."""
        ...

    def fine_tune(
        self, model: ScoringModel, train: pd.DataFrame, valid: pd.DataFrame, *, seed: int
    ) -> Fitted:
        """Warm start: continue a trained model on newer rows."""
        ...

    def save(self, model: Any, path: Path) -> None: ...

    def load(self, path: Path) -> Any: ...

    def spec_of(self, model: Any, meta: dict[str, Any]) -> tuple[list[str], Any]:
        """The features (FeatureService order) and spec a loaded native model reads."""
        ...

    def scorer(self, model: ScoringModel) -> Scorer:
        """A function from a frame of raw rows to the probability of purchase intent per row."""
        ...

    def contributions(self, model: ScoringModel, frame: pd.DataFrame) -> pd.DataFrame:
        """[rows x features] contributions to each row's logit."""
        ...

    def importance(
        self, model: ScoringModel, test: pd.DataFrame, y: np.ndarray, p: np.ndarray
    ) -> dict[str, dict[str, float]]:
        """Importance per feature under one or more named measures."""
        ...

    def load_from_mlflow(self, uri: str) -> Any:
        """The native model of a version logged in MLflow's own flavour for the kind (registries
        written before every kind was logged as one pyfunc, models.kinds.packaging)."""
        ...


def feature_matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Model input: the service's features in order, float32, missing values as NaN.

    Training and serving both build their input with this function.
    """
    return frame.reindex(columns=features).to_numpy(dtype=np.float32, na_value=np.nan)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def sampling_offset(negative_rate: float) -> float:
    """What negative downsampling adds to a model's logit, to be taken off again: a model fitted
    on every positive and a share w of the negatives predicts odds 1/w times too high, so
    p = q / (q + (1 - q) / w), i.e. logit(p) = logit(q) + log(w)."""
    if not 0 < negative_rate <= 1:
        raise ValueError(f"negative sampling rate {negative_rate}: expected a share in (0, 1]")
    return float(np.log(negative_rate))


def corrected_probability(q: np.ndarray, negative_rate: float) -> np.ndarray:
    """`q`, predicted by a model fitted on downsampled negatives, as the probability on all rows."""
    q = np.asarray(q, dtype=np.float64)
    return q / (q + (1 - q) / negative_rate)


def pip_requirements(*names: str) -> list[str]:
    """Exact requirements for a logged model: MLflow's inference loads it in a subprocess and
    would otherwise name both the CPU and the CUDA variant of a package."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in [*names, "numpy", "pandas"]]
