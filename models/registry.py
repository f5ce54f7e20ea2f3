"""The MLflow registry as the service reads it: the tracking client, registered model names,
and loading a version by alias with its feature binding.

One registered model per model kind (`ctr-xgboost`, `ctr-wide-deep`), each with its own
`champion` and `challenger`. Every version records the FeatureService it was trained with (name
and fingerprint), so a server can read exactly the features the model expects. Models are stored
in their kind's safe format (XGBoost UBJ, Keras `.keras` in safe mode): nothing is ever
unpickled. Logging and promoting versions is in models.evaluation.promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.kinds import kind_of
from models.kinds.packaging import load_native
from models.scoring import XGBOOST, ScoringModel, wrap
from models.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_KIND = "model_kind"
TAG_FEATURE_SERVICE = "feature_service"
TAG_FINGERPRINT = "feature_service_fingerprint"
TAG_FEATURES = "features"
TAG_TRAINING = "training"
# "true" on a model trained on SYNTHETIC data (ctr synth), "false" on real data
TAG_SYNTHETIC = "data.synthetic"


class NoChampionError(LookupError):
    """The registry has no version with the asked-for alias yet."""


@dataclass(frozen=True)
class ServedModel:
    scorer: ScoringModel
    name: str
    version: str
    feature_service: str
    fingerprint: str

    @property
    def kind(self) -> str:
        return self.scorer.kind

    @property
    def features(self) -> list[str]:
        return self.scorer.features

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.scorer.predict(frame)


def model_name(settings: Settings, kind: str) -> str:
    """The registered model name of a model kind."""
    return getattr(settings, kind_of(kind).registered_name_setting)


def client(settings: Settings):
    """An MlflowClient on the configured tracking store; creates the experiment on first use."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        settings.paths.mlflow.mkdir(parents=True, exist_ok=True)
    tracking = MlflowClient(settings.mlflow_tracking_uri)
    if tracking.get_experiment_by_name(settings.experiment) is None:
        settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
        tracking.create_experiment(
            settings.experiment, artifact_location=settings.mlflow_artifact_root.resolve().as_uri()
        )
    mlflow.set_experiment(settings.experiment)
    return tracking


# --- loading ---------------------------------------------------------------------------------


def load_by_alias(settings: Settings, alias: str = CHAMPION, name: str | None = None) -> ServedModel:
    """Load a registered version by alias (native model, safe formats) with its feature binding."""
    name = name or settings.served_model_name
    return _load(name, aliased_version(settings, alias, name))


def aliased_version(settings: Settings, alias: str = CHAMPION, name: str | None = None) -> Any:
    """The registered version an alias points to, or NoChampionError saying what to run."""
    from mlflow.exceptions import MlflowException

    name = name or settings.served_model_name
    try:
        return client(settings).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise NoChampionError(
            f"No model version of '{name}' has alias '{alias}' in {settings.mlflow_tracking_uri}; "
            "run the training pipeline first (make demo, or the ctr_features then ctr_training DAGs)"
        ) from exc


def load_version(settings: Settings, name: str, version: str) -> ServedModel:
    """Load one registered version exactly as the service would."""
    return _load(name, client(settings).get_model_version(name, version))


def _load(name: str, version: Any) -> ServedModel:
    kind = version.tags.get(TAG_KIND, XGBOOST)
    native = load_native(f"models:/{name}/{version.version}", kind)
    meta = {"features": version.tags[TAG_FEATURES].split(",")}
    return ServedModel(
        scorer=wrap(kind, native, meta),
        name=name,
        version=str(version.version),
        feature_service=version.tags[TAG_FEATURE_SERVICE],
        fingerprint=version.tags[TAG_FINGERPRINT],
    )
