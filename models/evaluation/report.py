"""The test-window comparison every stage after training reads: each trained model and both
baselines scored on the same test rows, and the metrics an MLflow run records from it."""

from __future__ import annotations

from typing import Any

import numpy as np

from feature_repo.contract import LABEL, USER_ID
from models.evaluation.metrics import LogisticBaseline, PopularityBaseline, ctr_metrics
from models.features.training_set import Split
from models.scoring import ScoringModel

POPULARITY = "popularity"
LOGISTIC = "logistic_regression"
BASELINES: tuple[str, ...] = (POPULARITY, LOGISTIC)
TABLE_COLUMNS = ["auc", "logloss", "ece", "gauc", "ndcg_at_10", "hitrate_at_10"]
SUMMARY_COLUMNS = ("auc", "logloss", "ece", "gauc", "ndcg_at_10")


def popularity_auc(split: Split) -> float:
    """Test AUC of the popularity baseline fitted on the training days: the floor any model must beat."""
    baseline = PopularityBaseline().fit(split.train, split.train[LABEL].to_numpy())
    return ctr_metrics(split.test[LABEL].to_numpy(), baseline.predict(split.test))["auc"]


def test_table(
    split: Split, models: dict[str, ScoringModel], features: list[str], seed: int
) -> dict[str, dict]:
    """AUC, logloss, calibration and per-user ranking quality on the test days, per model and
    baseline (baselines fitted on the training days)."""
    y, users = split.test[LABEL].to_numpy(), split.test[USER_ID].to_numpy()
    y_train = split.train[LABEL].to_numpy()
    baselines = {
        POPULARITY: PopularityBaseline().fit(split.train, y_train),
        LOGISTIC: LogisticBaseline(features, seed=seed).fit(split.train, y_train),
    }
    scored = {name: model.predict(split.test) for name, model in models.items()}
    scored |= {name: baseline.predict(split.test) for name, baseline in baselines.items()}
    return {name: ctr_metrics(y, p, users) for name, p in scored.items()}


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'model':<22}" + "".join(f"{c:>14}" for c in TABLE_COLUMNS)]
    for name, metrics in table.items():
        lines.append(f"{name:<22}" + "".join(f"{metrics[c]:>14.4f}" for c in TABLE_COLUMNS))
    return "\n".join(lines)


def summarise(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The headline metrics per model, rounded for a log line or a task result."""
    return {name: {k: round(v, 5) for k, v in m.items() if k in SUMMARY_COLUMNS} for name, m in table.items()}


def run_metrics(
    metrics: dict[str, Any], table: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """What a model's MLflow run records: its finite test metrics as `test_*`, its `auc`, and the
    baselines' AUCs when the table has them."""
    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)}
    recorded = {f"test_{k}": v for k, v in finite.items()} | {"auc": metrics["auc"]}
    if table is not None:
        recorded |= {f"{base}_auc": table[base]["auc"] for base in BASELINES}
    return recorded
