"""The test-window comparison every stage after training reads: each trained model and both
baselines scored on the same test rows, and the metrics an MLflow run records from it."""

from __future__ import annotations

from typing import Any

import numpy as np

from feature_repo.contract import LABEL
from models.evaluation.metrics import LogisticBaseline, PopularityBaseline, ctr_metrics
from models.evaluation.streamed import Scorer, sample_rows, score_rows
from models.features.training_set import Split
from models.kinds.base import corrected_probability
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
    split: Split,
    models: dict[str, ScoringModel],
    features: list[str],
    seed: int,
    baseline_rows: int,
    negative_rate: float = 1.0,
) -> dict[str, dict]:
    """AUC, logloss, calibration and per-user ranking quality on the test days, per model and
    baseline. The baselines are fitted on at most `baseline_rows` training rows (a seeded sample
    beyond: a linear model on ~50 features gains nothing from more), and every test row is scored
    block by block (models.evaluation.streamed). On training rows whose negatives were kept at
    `negative_rate` < 1 the baselines' probabilities are corrected as the models correct theirs, so
    that their logloss and calibration are read on the unsampled test days too."""
    train, _ = sample_rows(split.train, baseline_rows, seed)
    y_train = train[LABEL].to_numpy()
    baselines = {
        POPULARITY: PopularityBaseline().fit(train, y_train),
        LOGISTIC: LogisticBaseline(features, seed=seed).fit(train, y_train),
    }
    del train
    scorers = {name: model.predict for name, model in models.items()}
    scorers |= {name: _unsampled(baseline.predict, negative_rate) for name, baseline in baselines.items()}
    scored = score_rows(split.test, scorers)
    return {name: ctr_metrics(scored.y, p, scored.users) for name, p in scored.scores.items()}


def _unsampled(predict: Scorer, negative_rate: float) -> Scorer:
    if negative_rate >= 1.0:
        return predict
    return lambda frame: corrected_probability(predict(frame), negative_rate)


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
