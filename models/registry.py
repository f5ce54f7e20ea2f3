"""MLflow tracking and registry: log a candidate, gate it against the champion, load by alias.

Two registered models, `ctr-xgboost` and `ctr-wide-deep`, each with its own `champion` and
`challenger`. Every version records the FeatureService it was trained with (name and
fingerprint), so a server can read exactly the features the model expects. Models are stored in
XGBoost's UBJ and Keras' `.keras` formats, loaded in safe mode: nothing is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.scoring import KINDS, WIDE_DEEP, XGBOOST, ScoringModel
from models.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_KIND = "model_kind"
TAG_FEATURE_SERVICE = "feature_service"
TAG_FINGERPRINT = "feature_service_fingerprint"
TAG_FEATURES = "features"
TAG_TRAINING = "training"


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
    names = {XGBOOST: settings.xgb_model_name, WIDE_DEEP: settings.wide_deep_model_name}
    if kind not in names:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    return names[kind]


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


# --- plots -----------------------------------------------------------------------------------


def _importance(model: ScoringModel, test: pd.DataFrame, y: np.ndarray, p: np.ndarray) -> dict[str, dict]:
    """Importance per feature: XGBoost gain and mean |SHAP| (`pred_contribs`); for Wide&Deep the
    drop in test AUC when the feature is shuffled (permutation importance)."""
    from sklearn.metrics import roc_auc_score

    if model.kind == XGBOOST:
        from models.features.training_set import feature_matrix
        from models.kinds.xgb import shap_contributions

        gain = model.model.get_booster().get_score(importance_type="gain")
        contribs = shap_contributions(model.model, feature_matrix(test, model.features), model.features)
        shap = np.abs(contribs[:, :-1]).mean(axis=0)
        return {
            "total gain": {f: float(gain.get(f, 0.0)) for f in model.features},
            "mean |SHAP contribution| (log-odds)": dict(zip(model.features, shap.tolist(), strict=True)),
        }
    rng = np.random.default_rng(0)
    base = roc_auc_score(y, p)
    drops = {}
    for column in model.spec.inputs:
        shuffled = test.copy()
        shuffled[column] = rng.permutation(shuffled[column].to_numpy())
        drops[column] = float(base - roc_auc_score(y, model.predict(shuffled)))
    return {"test AUC drop when shuffled": drops}


def _figures(model: ScoringModel, test: pd.DataFrame, y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    figures = {}
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=model.kind)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test window")
    ax.legend()
    figures["plots/roc_curve.png"] = fig

    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(predicted, observed, "o-", label=model.kind)
    top = max(float(predicted.max()), float(observed.max()))
    ax.plot([0, top], [0, top], "--", color="grey", label="perfect")
    ax.set(xlabel="mean predicted", ylabel="observed rate", title="Calibration, test window")
    ax.legend()
    figures["plots/calibration_curve.png"] = fig

    for title, values in _importance(model, test, y, p).items():
        ranked = sorted(values.items(), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(ranked) + 1))
        ax.barh([k for k, _ in ranked], [v for _, v in ranked])
        ax.set(xlabel=title, title=f"{model.kind} feature importance")
        fig.tight_layout()
        slug = "shap" if "SHAP" in title else "feature_importance"
        figures[f"plots/{slug}.png"] = fig

    history = model.meta.get("history") or {}
    if history:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in history.items():
            if "loss" in name:
                ax.plot(values, label=name)
        ax.set(
            xlabel="round" if model.kind == XGBOOST else "epoch", ylabel="logloss", title="Training curves"
        )
        ax.legend()
        figures["plots/training_curves.png"] = fig
    return figures


# --- logging ---------------------------------------------------------------------------------


def _pip_requirements(kind: str) -> list[str]:
    """Explicit requirements: MLflow's inference loads the model in a subprocess and can name
    both the CPU and the CUDA variant of a package."""
    from importlib.metadata import version

    names = ["xgboost", "scikit-learn"] if kind == XGBOOST else ["keras", "tensorflow"]
    return [f"{name}=={version(name)}" for name in [*names, "numpy", "pandas"]]


def _log_model(settings: Settings, model: ScoringModel, test: pd.DataFrame):
    import mlflow
    from mlflow.models import infer_signature

    example = test.head(5)
    name = model_name(settings, model.kind)
    if model.kind == XGBOOST:
        from models.features.training_set import feature_matrix

        x = pd.DataFrame(feature_matrix(example, model.features), columns=model.features)
        return mlflow.xgboost.log_model(
            model.model,
            name="model",
            signature=infer_signature(x, model.predict(example)),
            input_example=x,
            model_format="ubj",
            registered_model_name=name,
            pip_requirements=_pip_requirements(XGBOOST),
        )
    from models.kinds.wide_deep import model_inputs

    inputs = model_inputs(example, model.spec)
    # mlflow.keras 3.17 fails to save an input example (it writes before creating the folder):
    # keep the example beside the model as a run artifact instead.
    mlflow.log_dict({k: v.reshape(-1).tolist() for k, v in inputs.items()}, "model_input_example.json")
    return mlflow.keras.log_model(
        model.model,
        name="model",
        signature=infer_signature(inputs, model.predict(example).astype(np.float32).reshape(-1, 1)),
        registered_model_name=name,
        pip_requirements=_pip_requirements(WIDE_DEEP),
    )


def log_candidate(
    settings: Settings,
    model: ScoringModel,
    test: pd.DataFrame,
    y_test: np.ndarray,
    metrics: dict[str, float],
    lineage: dict[str, Any],
    feature_service: str,
    fingerprint: str,
    training: str = "full",
) -> str:
    """Log run + model, register a new version with alias `challenger`; return the version.

    `training` is "full" (from scratch) or "warm_start" (continued from the champion).
    """
    import matplotlib.pyplot as plt
    import mlflow

    tracking = client(settings)
    name = model_name(settings, model.kind)
    params = {k: v for k, v in (model.meta.get("params") or {}).items() if not isinstance(v, dict)}
    with mlflow.start_run(run_name=f"{model.kind}-{training}") as run:
        mlflow.log_params({k: str(v) if isinstance(v, list) else v for k, v in params.items()})
        mlflow.log_params({TAG_FEATURE_SERVICE: feature_service, TAG_TRAINING: training})
        mlflow.log_metrics(metrics)
        for series, values in (model.meta.get("history") or {}).items():
            for step, value in enumerate(values):
                mlflow.log_metric(f"history_{series}", value, step=step)
        mlflow.log_dict(lineage, "lineage.json")
        mlflow.log_dict(model.meta, "training_meta.json")
        for path, fig in _figures(model, test, y_test, model.predict(test)).items():
            mlflow.log_figure(fig, path)
            plt.close(fig)
        mlflow.set_tags(
            {TAG_KIND: model.kind, TAG_FEATURE_SERVICE: feature_service, TAG_FINGERPRINT: fingerprint}
        )
        info = _log_model(settings, model, test)
    version = str(info.registered_model_version)
    for key, value in {
        TAG_KIND: model.kind,
        TAG_FEATURE_SERVICE: feature_service,
        TAG_FINGERPRINT: fingerprint,
        TAG_FEATURES: ",".join(model.features),
        TAG_TRAINING: training,
        "run_id": run.info.run_id,
        "test_auc": f"{metrics['auc']:.6f}",
    }.items():
        tracking.set_model_version_tag(name, version, key, value)
    tracking.set_registered_model_alias(name, CHALLENGER, version)
    return version


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
    import mlflow

    from models.scoring import wrap

    kind = version.tags.get(TAG_KIND, XGBOOST)
    uri = f"models:/{name}/{version.version}"
    if kind == XGBOOST:
        native = mlflow.xgboost.load_model(uri)
    else:
        from models.kinds.wide_deep import custom_layers

        custom_layers()  # registered, so that safe-mode loading finds them
        native = mlflow.keras.load_model(uri)
    meta = {"features": version.tags[TAG_FEATURES].split(",")}
    return ServedModel(
        scorer=wrap(kind, native, meta),
        name=name,
        version=str(version.version),
        feature_service=version.tags[TAG_FEATURE_SERVICE],
        fingerprint=version.tags[TAG_FINGERPRINT],
    )


# --- promotion gate --------------------------------------------------------------------------


def sanity_failures(
    settings: Settings,
    model: ScoringModel,
    test: pd.DataFrame,
    metrics: dict[str, float],
    scores: np.ndarray,
    popularity_auc: float,
) -> list[str]:
    """Reasons a candidate must not reach users, whatever its AUC; empty when it may."""
    from models.scoring import scoring_latency_ms

    failures = []
    bad = int(np.sum(~np.isfinite(scores)))
    if bad:
        failures.append(f"{bad} of {len(scores)} test scores are NaN or infinite")
    if not metrics["ece"] <= settings.max_calibration_error:
        failures.append(
            f"calibration error {metrics['ece']:.4f} > "
            f"CTR_MAX_CALIBRATION_ERROR {settings.max_calibration_error}"
        )
    ratio = metrics["mean_prediction"] / max(metrics["positive_rate"], 1e-12)
    low, high = 1 / settings.max_prediction_bias, settings.max_prediction_bias
    if not low <= ratio <= high:
        failures.append(f"mean prediction / positive rate = {ratio:.2f}, outside [{low:.2f}, {high:.2f}]")
    if not metrics["auc"] > popularity_auc:
        failures.append(
            f"test AUC {metrics['auc']:.4f} does not beat the popularity baseline {popularity_auc:.4f}"
        )
    latency = scoring_latency_ms(model, test, rows=100)
    if latency > settings.scoring_budget_ms:
        failures.append(
            f"scoring 100 candidates takes {latency:.1f} ms > "
            f"CTR_SCORING_BUDGET_MS {settings.scoring_budget_ms}"
        )
    return failures


def artifact_failures(
    settings: Settings, name: str, version: str, test: pd.DataFrame, scores: np.ndarray
) -> list[str]:
    """What the service would hit: the registered version must load, and score the test rows as the
    trained model did. A version that fails here can never become champion."""
    try:
        loaded = load_version(settings, name, version)
        served = loaded.predict(test)
    except Exception as exc:
        return [f"the registered artifact of {name} v{version} cannot be loaded and scored: {exc}"]
    if served.shape != scores.shape or not np.allclose(served, scores, rtol=1e-4, atol=1e-6, equal_nan=True):
        worst = float(np.nanmax(np.abs(served - scores))) if served.shape == scores.shape else float("nan")
        return [
            f"the registered artifact of {name} v{version} scores differently from the trained "
            f"model (largest difference {worst:.3g})"
        ]
    return []


def promote_if_better(
    settings: Settings,
    model: ScoringModel,
    version: str,
    metrics: dict[str, float],
    test: pd.DataFrame,
    y_test: np.ndarray,
    fingerprint: str,
    popularity_auc: float,
) -> dict[str, Any]:
    """Move `champion` to `version` only if it passes the sanity checks and beats the champion on
    the same test rows by more than CTR_PROMOTION_MIN_AUC_GAIN (an equal model is not promoted).

    The first version of an empty registry is promoted if it is sane. A champion trained on other
    features is compared by its recorded test AUC. Returns the decision with its reasons.
    """
    from models.evaluation.metrics import ctr_metrics

    tracking = client(settings)
    name = model_name(settings, model.kind)
    scores = model.predict(test)
    candidate_auc = metrics["auc"]
    decision: dict[str, Any] = {"model": name, "version": version, "candidate_auc": candidate_auc}
    failures = sanity_failures(settings, model, test, metrics, scores, popularity_auc)
    try:
        champion = load_by_alias(settings, CHAMPION, name)
    except NoChampionError:
        champion = None
    if champion is not None and champion.version == version:
        return {**decision, "promoted": True, "champion_changed": False, "reason": "already champion"}
    failures += artifact_failures(settings, name, version, test, scores)
    if failures:
        decision.update(promoted=False, reason="sanity checks failed: " + "; ".join(failures))
    elif champion is None:
        decision.update(promoted=True, reason="first model in an empty registry, sanity checks passed")
    else:
        if champion.fingerprint == fingerprint:
            champion_auc = ctr_metrics(y_test, champion.predict(test))["auc"]
        else:
            champion_auc = float(tracking.get_model_version(name, champion.version).tags["test_auc"])
        needed = champion_auc + settings.promotion_min_auc_gain
        decision.update(champion_version=champion.version, champion_auc=champion_auc, required_auc=needed)
        if candidate_auc > needed:
            decision.update(promoted=True, reason=f"test AUC {candidate_auc:.4f} > required {needed:.4f}")
        else:
            decision.update(promoted=False, reason=f"test AUC {candidate_auc:.4f} <= required {needed:.4f}")
    decision["champion_changed"] = decision["promoted"]
    if decision["promoted"]:
        tracking.set_registered_model_alias(name, CHAMPION, version)
        tracking.delete_registered_model_alias(name, CHALLENGER)
    elif failures:
        # A sane challenger serves a share of users (services/champion_challenger.py); this one
        # must reach none.
        tracking.delete_registered_model_alias(name, CHALLENGER)
    tracking.set_model_version_tag(name, version, "promotion", decision["reason"][:5000])
    return decision
