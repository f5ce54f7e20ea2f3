"""MLflow tracking and registry: log a candidate, gate it against the champion, load by alias.

Every version records the FeatureService it was trained with (name and fingerprint), so a server
can read exactly the features the model expects. Models are stored in XGBoost's own UBJ format:
loading one never unpickles arbitrary objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_FEATURE_SERVICE = "feature_service"
TAG_FINGERPRINT = "feature_service_fingerprint"
TAG_FEATURES = "features"


class NoChampionError(LookupError):
    """The registry has no version with the champion alias yet."""


@dataclass(frozen=True)
class ServedModel:
    model: Any
    name: str
    version: str
    features: list[str]
    feature_service: str
    fingerprint: str


def client(settings: Settings):
    """An MlflowClient on the configured tracking store; creates the experiment on first use."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        settings.data_dir.joinpath("mlflow").mkdir(parents=True, exist_ok=True)
    tracking = MlflowClient(settings.mlflow_tracking_uri)
    if tracking.get_experiment_by_name(settings.experiment) is None:
        settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
        tracking.create_experiment(
            settings.experiment, artifact_location=settings.mlflow_artifact_root.resolve().as_uri()
        )
    mlflow.set_experiment(settings.experiment)
    return tracking


def _figures(y: np.ndarray, p: np.ndarray, model: Any, features: list[str]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    figures = {}
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test window")
    ax.legend()
    figures["plots/roc_curve.png"] = fig

    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(predicted, observed, "o-", label="model")
    top = max(float(predicted.max()), float(observed.max()))
    ax.plot([0, top], [0, top], "--", color="grey", label="perfect")
    ax.set(xlabel="mean predicted", ylabel="observed rate", title="Calibration, test window")
    ax.legend()
    figures["plots/calibration_curve.png"] = fig

    gain = model.get_booster().get_score(importance_type="gain")
    ranked = sorted(((gain.get(f, 0.0), f) for f in features), reverse=True)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(features) + 1))
    ax.barh([f for _, f in ranked][::-1], [g for g, _ in ranked][::-1])
    ax.set(xlabel="total gain", title="XGBoost feature importance")
    fig.tight_layout()
    figures["plots/feature_importance.png"] = fig
    return figures


def log_candidate(
    settings: Settings,
    trained: Any,
    x_test: np.ndarray,
    y_test: np.ndarray,
    metrics: dict[str, float],
    lineage: dict[str, Any],
    feature_service: str,
    fingerprint: str,
) -> str:
    """Log run + model, register a new version with alias `challenger`; return the version."""
    import matplotlib.pyplot as plt
    import mlflow
    from mlflow.models import infer_signature

    from models.xgb import predict_ctr

    tracking = client(settings)
    example = x_test[:5]
    signature = infer_signature(_frame(example, trained.features), predict_ctr(trained.model, example))
    with mlflow.start_run(run_name="xgboost") as run:
        mlflow.log_params({k: v for k, v in trained.params.items() if not isinstance(v, list | dict)})
        mlflow.log_params({"best_iteration": trained.best_iteration, TAG_FEATURE_SERVICE: feature_service})
        mlflow.log_metrics(metrics)
        for name, values in trained.history.items():
            for step, value in enumerate(values):
                mlflow.log_metric(f"valid_{name}", value, step=step)
        mlflow.log_dict(lineage, "lineage.json")
        for path, fig in _figures(
            y_test, predict_ctr(trained.model, x_test), trained.model, trained.features
        ).items():
            mlflow.log_figure(fig, path)
            plt.close(fig)
        mlflow.set_tags({TAG_FEATURE_SERVICE: feature_service, TAG_FINGERPRINT: fingerprint})
        info = mlflow.xgboost.log_model(
            trained.model,
            name="model",
            signature=signature,
            input_example=_frame(example, trained.features),
            model_format="ubj",
            registered_model_name=settings.xgb_model_name,
        )
    version = str(info.registered_model_version)
    for key, value in {
        TAG_FEATURE_SERVICE: feature_service,
        TAG_FINGERPRINT: fingerprint,
        TAG_FEATURES: ",".join(trained.features),
        "run_id": run.info.run_id,
        "test_auc": f"{metrics['test_auc']:.6f}",
    }.items():
        tracking.set_model_version_tag(settings.xgb_model_name, version, key, value)
    tracking.set_registered_model_alias(settings.xgb_model_name, CHALLENGER, version)
    return version


def _frame(x: np.ndarray, features: list[str]):
    import pandas as pd

    return pd.DataFrame(x, columns=features)


def load_by_alias(settings: Settings, alias: str = CHAMPION, name: str | None = None) -> ServedModel:
    """Load a registered version (native XGBoost model) with its feature binding."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = name or settings.xgb_model_name
    tracking = client(settings)
    try:
        version = tracking.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise NoChampionError(
            f"No model version of '{name}' has alias '{alias}' in {settings.mlflow_tracking_uri}; "
            "run the training pipeline first (make demo, or airflow dags test ctr_pipeline)"
        ) from exc
    model = mlflow.xgboost.load_model(f"models:/{name}@{alias}")
    return ServedModel(
        model=model,
        name=name,
        version=str(version.version),
        features=version.tags[TAG_FEATURES].split(","),
        feature_service=version.tags[TAG_FEATURE_SERVICE],
        fingerprint=version.tags[TAG_FINGERPRINT],
    )


def promote_if_better(
    settings: Settings,
    version: str,
    candidate_auc: float,
    x_test: np.ndarray,
    y_test: np.ndarray,
    fingerprint: str,
) -> dict[str, Any]:
    """Move `champion` to `version` only if it beats the champion on the same test rows by more
    than CTR_PROMOTION_MIN_AUC_GAIN (an equal model is not promoted).

    The first version of an empty registry is promoted. A champion trained on other features is
    compared by its recorded test AUC. Returns the decision with its reasons.
    """
    from models.evaluate import ctr_metrics
    from models.xgb import predict_ctr

    tracking = client(settings)
    decision: dict[str, Any] = {"version": version, "candidate_auc": candidate_auc}
    try:
        champion = load_by_alias(settings, CHAMPION)
    except NoChampionError:
        champion = None
    if champion is not None and champion.version == version:
        return {**decision, "promoted": True, "reason": "already champion"}
    if champion is None:
        decision.update(promoted=True, reason="first model in an empty registry")
    else:
        if champion.fingerprint == fingerprint:
            champion_auc = ctr_metrics(y_test, predict_ctr(champion.model, x_test))["auc"]
        else:
            champion_auc = float(
                tracking.get_model_version(settings.xgb_model_name, champion.version).tags["test_auc"]
            )
        needed = champion_auc + settings.promotion_min_auc_gain
        decision.update(champion_version=champion.version, champion_auc=champion_auc, required_auc=needed)
        if np.isfinite(candidate_auc) and candidate_auc > needed:
            decision.update(promoted=True, reason=f"test AUC {candidate_auc:.4f} > required {needed:.4f}")
        else:
            decision.update(promoted=False, reason=f"test AUC {candidate_auc:.4f} <= required {needed:.4f}")
    if decision["promoted"]:
        tracking.set_registered_model_alias(settings.xgb_model_name, CHAMPION, version)
        tracking.delete_registered_model_alias(settings.xgb_model_name, CHALLENGER)
    tracking.set_model_version_tag(settings.xgb_model_name, version, "promotion", decision["reason"])
    return decision
