"""From a trained model to the champion: log its run, plots and model to MLflow as a new version
with alias `challenger`, then the promotion gate moves `champion` to it only if it is sane, its
registered artifact scores as trained, and it beats the champion on the same test rows.

Every version the gate admits gets its signed promotion record (models.registry.promotion_record):
`champion` when promoted, `challenger` when sane but not better. It is written before the alias
moves, and the ranking service serves no version without it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from models.evaluation.metrics import ctr_metrics
from models.evaluation.plots import figures
from models.evaluation.report import run_metrics
from models.evaluation.streamed import sample_rows, score_rows
from models.kinds.packaging import log_pyfunc, pyfunc_scores
from models.kinds.rows import Rows
from models.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_FEATURE_SERVICE,
    TAG_FEATURES,
    TAG_FINGERPRINT,
    TAG_KIND,
    TAG_PROMOTION_RECORD,
    TAG_SYNTHETIC,
    TAG_TEST_AUC,
    TAG_TRAINING,
    NoChampionError,
    client,
    load_by_alias,
    load_version,
    model_name,
    promotion_key,
    promotion_record,
)
from models.scoring import ScoringModel, scoring_latency_ms
from models.settings import Settings
from models.training.fit import placement_tags


def log_candidate(
    settings: Settings,
    model: ScoringModel,
    test: pd.DataFrame | Rows,
    y_test: np.ndarray,
    metrics: dict[str, float],
    lineage: dict[str, Any],
    feature_service: str,
    fingerprint: str,
    training: str = "full",
) -> str:
    """Log run + model, register a new version with alias `challenger`; return the version.

    `training` is "full" (from scratch) or "warm_start" (continued from the champion). The plots
    are drawn on at most CTR_DIAGNOSTIC_ROWS test rows (a seeded sample beyond).
    """
    import matplotlib.pyplot as plt
    import mlflow

    tracking = client(settings)
    name = model_name(settings, model.kind)
    params = {k: v for k, v in (model.meta.get("params") or {}).items() if not isinstance(v, dict)}
    sample, at = sample_rows(test, settings.diagnostic_rows, settings.seed)
    with mlflow.start_run(run_name=f"{model.kind}-{training}") as run:
        mlflow.log_params({k: str(v) if isinstance(v, list) else v for k, v in params.items()})
        mlflow.log_params({TAG_FEATURE_SERVICE: feature_service, TAG_TRAINING: training})
        mlflow.log_metrics(metrics)
        for series, values in (model.meta.get("history") or {}).items():
            for step, value in enumerate(values):
                mlflow.log_metric(f"history_{series}", value, step=step)
        mlflow.log_dict(lineage, "lineage.json")
        mlflow.log_dict(model.meta, "training_meta.json")
        for path, fig in figures(model, sample, np.asarray(y_test)[at], model.predict(sample)).items():
            mlflow.log_figure(fig, path)
            plt.close(fig)
        mlflow.set_tags(
            {
                TAG_KIND: model.kind,
                TAG_FEATURE_SERVICE: feature_service,
                TAG_FINGERPRINT: fingerprint,
                **placement_tags(model.meta),  # the worker, queue and device that trained it
                TAG_SYNTHETIC: str(bool(lineage.get("synthetic"))).lower(),
            }
        )
        info = log_pyfunc(model, sample.head(5), name)
    version = str(info.registered_model_version)
    for key, value in {
        TAG_KIND: model.kind,
        TAG_FEATURE_SERVICE: feature_service,
        TAG_FINGERPRINT: fingerprint,
        TAG_FEATURES: ",".join(model.features),
        TAG_TRAINING: training,
        "run_id": run.info.run_id,
        TAG_TEST_AUC: f"{metrics['auc']:.6f}",
        **placement_tags(model.meta),
    }.items():
        tracking.set_model_version_tag(name, version, key, value)
    tracking.set_registered_model_alias(name, CHALLENGER, version)
    return version


def sanity_failures(
    settings: Settings,
    model: ScoringModel,
    test: pd.DataFrame,
    metrics: dict[str, float],
    scores: np.ndarray,
    popularity_auc: float,
) -> list[str]:
    """Reasons a candidate must not reach users, whatever its AUC; empty when it may."""
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
    """What the service and every other MLflow consumer would hit: the registered version must
    load, through the service's loader and through `mlflow.pyfunc`, and score the test rows as the
    trained model did. A version that fails here can never become champion."""
    failures = []
    loaders = {
        "": lambda: load_version(settings, name, version).predict(test),
        " through mlflow.pyfunc": lambda: pyfunc_scores(f"models:/{name}/{version}", test),
    }
    for how, score in loaders.items():
        try:
            served = score()
        except Exception as exc:
            failures.append(
                f"the registered artifact of {name} v{version} cannot be loaded and scored{how}: {exc}"
            )
            continue
        if served.shape != scores.shape or not np.allclose(
            served, scores, rtol=1e-4, atol=1e-6, equal_nan=True
        ):
            worst = (
                float(np.nanmax(np.abs(served - scores))) if served.shape == scores.shape else float("nan")
            )
            failures.append(
                f"the registered artifact of {name} v{version} scores differently{how} from the trained "
                f"model (largest difference {worst:.3g})"
            )
    return failures


def decide(
    candidate_auc: float, failures: list[str], champion_auc: float | None, min_auc_gain: float
) -> dict[str, Any]:
    """The gate's rule, given the facts: a candidate with any failure is refused; the first sane
    model of an empty registry (no champion AUC) is promoted; otherwise it must beat the champion's
    AUC by more than `min_auc_gain` (an equal model is not promoted)."""
    if failures:
        decision: dict[str, Any] = {
            "promoted": False,
            "reason": "sanity checks failed: " + "; ".join(failures),
        }
    elif champion_auc is None:
        decision = {"promoted": True, "reason": "first model in an empty registry, sanity checks passed"}
    else:
        needed = champion_auc + min_auc_gain
        better = candidate_auc > needed
        decision = {
            "champion_auc": champion_auc,
            "required_auc": needed,
            "promoted": better,
            "reason": f"test AUC {candidate_auc:.4f} {'>' if better else '<='} required {needed:.4f}",
        }
    return decision | {"champion_changed": decision["promoted"]}


def promote_if_better(
    settings: Settings,
    model: ScoringModel,
    version: str,
    metrics: dict[str, float],
    test: pd.DataFrame | Rows,
    y_test: np.ndarray,
    fingerprint: str,
    popularity_auc: float,
) -> dict[str, Any]:
    """Move `champion` to `version` only if it passes the sanity checks and beats the champion on
    the same test rows by more than CTR_PROMOTION_MIN_AUC_GAIN (an equal model is not promoted).

    The first version of an empty registry is promoted if it is sane. A champion trained on other
    features is compared by its recorded test AUC. Returns the decision with its reasons.

    Every test row is scored, block by block; the registered artifact's check and the latency
    probe use at most CTR_DIAGNOSTIC_ROWS of them (a seeded sample beyond).
    """
    key = promotion_key(settings)  # before anything: a gate that cannot sign must not run
    tracking = client(settings)
    name = model_name(settings, model.kind)
    scores = score_rows(test, {"candidate": model.predict}).scores["candidate"]
    sample, at = sample_rows(test, settings.diagnostic_rows, settings.seed)
    candidate_auc = metrics["auc"]
    decision: dict[str, Any] = {"model": name, "version": version, "candidate_auc": candidate_auc}
    failures = sanity_failures(settings, model, sample, metrics, scores, popularity_auc)
    try:
        champion = load_by_alias(settings, CHAMPION, name)
    except NoChampionError:
        champion = None
    if champion is not None and champion.version == version:
        return {**decision, "promoted": True, "champion_changed": False, "reason": "already champion"}
    failures += artifact_failures(settings, name, version, sample, scores[at])
    champion_auc = None
    if champion is not None and not failures:
        if champion.fingerprint == fingerprint:
            champion_scores = score_rows(test, {"champion": champion.predict}).scores["champion"]
            champion_auc = ctr_metrics(y_test, champion_scores)["auc"]
        else:
            champion_auc = float(tracking.get_model_version(name, champion.version).tags[TAG_TEST_AUC])
        decision["champion_version"] = champion.version
    decision |= decide(candidate_auc, failures, champion_auc, settings.promotion_min_auc_gain)
    if not failures:  # admitted: as champion if promoted, else as the challenger it already is
        admitted = CHAMPION if decision["promoted"] else CHALLENGER
        record_promotion(settings, name, version, admitted, run_metrics(metrics), key)
    if decision["promoted"]:
        tracking.set_registered_model_alias(name, CHAMPION, version)
        tracking.delete_registered_model_alias(name, CHALLENGER)
    elif failures:
        # A sane challenger serves a share of users (services/champion_challenger.py); this one
        # must reach none.
        tracking.delete_registered_model_alias(name, CHALLENGER)
    tracking.set_model_version_tag(name, version, "promotion", decision["reason"][:5000])
    return decision


def record_promotion(
    settings: Settings,
    name: str,
    version: str,
    alias: str,
    metrics: dict[str, float],
    key: bytes | None = None,
) -> dict[str, Any]:
    """Sign and store the gate's record that `version` of `name` may serve as `alias`, with its
    test-window metrics as its run recorded them (models.evaluation.report.run_metrics); returns
    the record. The gate calls it; so may an operator holding the key who re-admits a version by
    hand, which is the point: without the key there is no record."""
    import json

    tracking = client(settings)
    record = promotion_record(
        name,
        tracking.get_model_version(name, version),
        alias,
        metrics,
        key or promotion_key(settings),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    tracking.set_model_version_tag(name, version, TAG_PROMOTION_RECORD, json.dumps(record, sort_keys=True))
    return record
