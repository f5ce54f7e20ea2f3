"""Daily monitoring of the ranking service: the A/B readout, feature drift and catalogue coverage.

It reads the served-ranking log (models/monitoring/serving_log.py) joined with what shoppers did next,
compares the features the model was served with the training set, and checks all of it against
`Thresholds`. The summary is JSON. The caller decides whether breaches fail its task
(`raise_for_breaches`). Runs go to the MLflow experiment `<CTR_EXPERIMENT>-monitoring`, so they
sit beside the training runs and are never mixed in with them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from feature_repo.contract import CATEGORY_ID, ID_COLUMNS, ITEM_ID, USER_ID
from models.monitoring.report import figures, log_to_mlflow
from models.monitoring.serving_log import FEATURE_PREFIX, REQUEST_ID, SERVED_AT, join_outcomes
from models.registry import CHALLENGER, CHAMPION
from models.settings import Settings

if TYPE_CHECKING:
    pass

VARIANTS: tuple[str, ...] = (CHAMPION, CHALLENGER)
CATEGORY_COLUMN = FEATURE_PREFIX + CATEGORY_ID
EPSILON = 1e-4  # share given to an empty bin, so that PSI stays finite
DRIFT_COLUMNS = ["feature", "psi", "expected_mean", "served_mean"]
EMPTY_LOG = (
    "the serving log has no rows in this window: nothing was served, or the ranker wrote its log "
    "elsewhere (CTR_SERVING_LOG)"
)


ALPHA = 0.05  # significance level of the champion/challenger test


@dataclass(frozen=True)
class Thresholds:
    """The limits a daily report is checked against: the CTR_MONITOR_* settings (their defaults
    and meaning are in models/settings.py; build with `from_settings`), and the A/B test's level."""

    max_psi: float  # a served feature's PSI from training
    min_coverage: float  # share of the catalogue served at least once
    min_online_auc: float  # per variant: score vs intent among the served items then viewed
    max_fallback_share: float  # share of requests answered by the popularity fallback
    min_requests: int  # fewer requests served in the window is an alert (0 turns it off)
    alpha: float = ALPHA

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> Thresholds:
        """The configured thresholds; `changes` replaces some of them (e.g. alpha)."""
        configured = {
            "max_psi": settings.monitor_max_psi,
            "min_coverage": settings.monitor_min_coverage,
            "min_online_auc": settings.monitor_min_online_auc,
            "max_fallback_share": settings.monitor_max_fallback_share,
            "min_requests": settings.monitor_min_requests,
        }
        return cls(**{**configured, **changes})


class MonitoringAlert(RuntimeError):
    """Monitoring found breaches: raised so that the Airflow task fails and its failure callback alerts."""


# --- A/B readout ---------------------------------------------------------------------------


def _rate(hits: int, n: int) -> float | None:
    return hits / n if n else None


def _model_scored(served: pd.DataFrame) -> pd.Series:
    """Rows the model scored: not a fallback, and with the features it saw logged. Popularity lists
    (fallback and cold start) are logged without features, and their scores are not the model's."""
    scored = ~served["fallback"].astype(bool)
    features = [c for c in served.columns if c.startswith(FEATURE_PREFIX)]
    if features:
        scored &= served[features].notna().any(axis=1)
    return scored


def _variant(rows: pd.DataFrame, name: str) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    per_request = rows.groupby(REQUEST_ID)["clicked"].any()
    scored = rows[_model_scored(rows)]
    y = scored["clicked"].to_numpy(bool)
    readout: dict[str, Any] = {
        "traffic": not rows.empty,
        "requests": len(per_request),
        "users": int(rows[USER_ID].nunique()),
        "served_rows": len(rows),
        "clicked_rows": int(rows["clicked"].sum()),
        "clicked_requests": int(per_request.sum()),
        "converted_rows": int(rows["converted"].sum()),
        "model_scored_rows": len(scored),
        "model_versions": sorted(rows["model_version"].dropna().astype(str).unique().tolist()),
    }
    readout["row_ctr"] = _rate(readout["clicked_rows"], len(rows))
    readout["request_click_rate"] = _rate(readout["clicked_requests"], len(per_request))
    readout["conversion_rate"] = _rate(readout["converted_rows"], len(rows))
    # AUC needs both classes; with one it is undefined, not 0.5.
    readout["online_auc"] = float(roc_auc_score(y, scored["score"])) if 0 < y.sum() < len(y) else None
    # The models predict intent (cart, fav, buy) after a view: their own label, online, is
    # `converted` among the served items the shopper went on to view. The threshold applies to it.
    viewed = scored[scored["clicked"].astype(bool)]
    label = viewed["converted"].to_numpy(bool)
    readout["online_label_auc"] = (
        float(roc_auc_score(label, viewed["score"])) if 0 < label.sum() < len(label) else None
    )
    if rows.empty:
        readout["note"] = f"no {name} traffic in this window"
    return readout


def two_proportion_ztest(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """z of rate b minus rate a (pooled standard error) and its two-sided p-value."""
    from scipy.stats import norm

    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:  # both rates 0 or both 1: no evidence of a difference
        return 0.0, 1.0
    z = (hits_b / n_b - hits_a / n_a) / se
    return z, float(2 * norm.sf(abs(z)))


def ab_readout(joined: pd.DataFrame, alpha: float = ALPHA) -> dict[str, Any]:
    """Online metrics per variant from the log joined with outcomes (`serving_log.join_outcomes`),
    and whether the challenger's per-request click rate differs from the champion's at `alpha`.

    Fallback rows are counted apart: they show the store's health, not a model's quality. The test
    takes requests as independent; a user's requests are not quite, so with heavy users p is optimistic.
    """
    fallback = joined["fallback"].astype(bool)
    model_rows = joined[~fallback]
    variants = {name: _variant(model_rows[model_rows["variant"] == name], name) for name in VARIANTS}
    test: dict[str, Any] = dict(
        metric="request_click_rate", alpha=alpha, z=None, p_value=None, significant=False
    )
    champion, challenger = variants[CHAMPION], variants[CHALLENGER]
    if champion["requests"] and challenger["requests"]:
        z, p = two_proportion_ztest(
            champion["clicked_requests"], champion["requests"],
            challenger["clicked_requests"], challenger["requests"],
        )  # fmt: skip
        test.update(z=z, p_value=p, significant=p < alpha)
    else:
        idle = " and ".join(name for name in VARIANTS if not variants[name]["requests"])
        test["note"] = f"not tested: no {idle} traffic"
    return {
        "requests": int(joined[REQUEST_ID].nunique()),
        "served_rows": len(joined),
        "fallback_rows": int(fallback.sum()),
        "fallback_requests": int(joined.loc[fallback, REQUEST_ID].nunique()),
        "variants": variants,
        "test": test,
    }


# --- Feature drift -------------------------------------------------------------------------


def population_stability_index(expected: Any, actual: Any, bins: int = 10) -> float:
    """PSI of `actual` against `expected`: the sum over bins of (a - e) * ln(a / e).

    Bins are quantiles of the expected sample (equal edges merged, both ends open); NaN is a bin of
    its own, so a feature that stops arriving shows as drift. Empty bins get EPSILON. NaN when
    either sample is empty.
    """
    e, a = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    if not e.size or not a.size:
        return float("nan")
    finite = e[np.isfinite(e)]
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))[1:-1] if finite.size else finite

    def shares(x: np.ndarray) -> np.ndarray:
        nan = np.isnan(x)
        counts = np.bincount(np.searchsorted(edges, x[~nan], side="right"), minlength=len(edges) + 1)
        return np.maximum(np.r_[counts, nan.sum()] / len(x), EPSILON)

    pe, pa = shares(e), shares(a)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def feature_drift(training: pd.DataFrame, served: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """PSI and means of each feature as the model was served it (rows it scored) against training.

    A feature the log does not carry gets a NaN PSI and served mean.
    """
    scored = served[_model_scored(served)]
    rows = []
    for feature in features:
        expected = training[feature].to_numpy(dtype=float, na_value=np.nan)
        column = FEATURE_PREFIX + feature
        actual = scored[column].to_numpy(dtype=float, na_value=np.nan) if column in scored else np.empty(0)
        psi = population_stability_index(expected, actual)
        rows.append((feature, psi, pd.Series(expected).mean(), pd.Series(actual, dtype=float).mean()))
    return pd.DataFrame(rows, columns=DRIFT_COLUMNS)


# --- Coverage and diversity ----------------------------------------------------------------


def gini(values: Any) -> float:
    """Gini coefficient of non-negative values: 0 when all are equal, near 1 when one holds all."""
    x = np.sort(np.asarray(values, dtype=float))
    if not x.size or not x.sum():
        return 0.0
    n = x.size
    return float(2 * np.sum(np.arange(1, n + 1) * x) / (n * x.sum()) - (n + 1) / n)


def coverage_and_diversity(
    served: pd.DataFrame, catalogue_items: int, category_column: str = CATEGORY_COLUMN
) -> dict[str, Any]:
    """How much of the catalogue shoppers were shown, how evenly, and how varied each list was.

    `catalogue_items` is the number of items that could have been served. The Gini coefficient is
    over the whole catalogue (an item never served has zero exposure). Intra-list diversity is
    distinct categories / items of known category per request, None when the log has no category.
    """
    if catalogue_items <= 0:
        raise ValueError(f"catalogue_items={catalogue_items}: expected a positive count")
    exposure = served[ITEM_ID].value_counts().to_numpy()
    unserved = np.zeros(max(catalogue_items - len(exposure), 0))
    report: dict[str, Any] = {
        "served_items": len(exposure),
        "catalogue_items": catalogue_items,
        "coverage": len(exposure) / catalogue_items,
        "exposure_gini": gini(np.r_[exposure, unserved]),
        "mean_distinct_items_per_user": float(served.groupby(USER_ID)[ITEM_ID].nunique().mean()),
        "intra_list_diversity": None,
    }
    if category_column in served.columns:
        known = served[[REQUEST_ID, category_column]].dropna().groupby(REQUEST_ID)[category_column]
        if known.ngroups:
            report["intra_list_diversity"] = float((known.nunique() / known.size()).mean())
    if report["intra_list_diversity"] is None:
        report["diversity_note"] = f"no {category_column} values in the log: diversity not measured"
    return report


# --- Thresholds ----------------------------------------------------------------------------


def breaches(report: dict[str, Any], thresholds: Thresholds) -> list[str]:
    """One sentence per limit the `monitor` summary breaks, naming the metric, its value and the limit."""
    found = []
    ab = report.get("ab") or {}
    requests = ab.get("requests", 0)
    if requests < thresholds.min_requests:
        found.append(
            f"{requests} requests served in the window, below the minimum of {thresholds.min_requests}"
        )
    if requests:
        share = ab["fallback_requests"] / requests
        if share > thresholds.max_fallback_share:
            found.append(
                f"fallback share of requests {share:.3f} is above the limit {thresholds.max_fallback_share}"
            )
        for name, variant in ab["variants"].items():
            auc = variant["online_label_auc"]
            if auc is not None and auc < thresholds.min_online_auc:
                found.append(
                    f"{name} online AUC of intent after a view {auc:.4f} is below the limit "
                    f"{thresholds.min_online_auc}"
                )
        test = ab["test"]
        if test["p_value"] is not None and test["p_value"] < thresholds.alpha and test["z"] < 0:
            rates = [ab["variants"][name]["request_click_rate"] for name in (CHALLENGER, CHAMPION)]
            found.append(
                f"challenger per-request click rate {rates[0]:.4f} is significantly below the champion's "
                f"{rates[1]:.4f} (p = {test['p_value']:.2g}, alpha {thresholds.alpha})"
            )
    for row in report.get("drift") or []:
        if row["psi"] is not None and row["psi"] > thresholds.max_psi:
            found.append(
                f"feature {row['feature']} PSI {row['psi']:.3f} is above the limit {thresholds.max_psi}"
            )
    coverage = report.get("coverage")
    if coverage and coverage["coverage"] < thresholds.min_coverage:
        found.append(
            f"catalogue coverage {coverage['coverage']:.4f} is below the limit {thresholds.min_coverage}"
        )
    return found


def raise_for_breaches(found: list[str]) -> None:
    """Fail the calling task when monitoring found breaches; do nothing otherwise."""
    if found:
        raise MonitoringAlert(f"{len(found)} monitoring breach(es): " + "; ".join(found))


# --- The stage -----------------------------------------------------------------------------


def window_readout(
    settings: Settings,
    served: pd.DataFrame,
    events: pd.DataFrame,
    training: pd.DataFrame,
    catalogue_items: int,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """The daily monitoring stage: A/B readout, drift and coverage of one window of the serving
    log, checked against `thresholds` (default: the settings') and logged to MLflow; returns a
    JSON-able summary.

    `served` is `read_serving_log(...)` for the window, `events` the canonical events from its
    start to LABEL_WINDOW after its end, `training` the training set (feature columns by name).
    Breaches are listed, never raised: the caller decides (`raise_for_breaches`).
    """
    thresholds = thresholds or Thresholds.from_settings(settings)
    summary: dict[str, Any] = {
        "rows": len(served),
        "message": None,
        "window": None,
        "catalogue_items": catalogue_items,
        "thresholds": asdict(thresholds),
        "ab": None,
        "drift": [],
        "coverage": None,
    }
    drift = pd.DataFrame(columns=DRIFT_COLUMNS)
    if served.empty:
        summary["message"] = EMPTY_LOG
    else:
        served = served.assign(**{SERVED_AT: pd.to_datetime(served[SERVED_AT], utc=True)})
        summary["window"] = [served[SERVED_AT].min().isoformat(), served[SERVED_AT].max().isoformat()]
        # The features the log carries and training has; ids are left out, they are not quantities.
        logged = [c.removeprefix(FEATURE_PREFIX) for c in served if c.startswith(FEATURE_PREFIX)]
        drift = feature_drift(training, served, [f for f in logged if f in training and f not in ID_COLUMNS])
        summary.update(
            ab=ab_readout(join_outcomes(served, events), thresholds.alpha),
            drift=drift.astype(object).where(drift.notna(), None).to_dict("records"),
            coverage=coverage_and_diversity(served, catalogue_items),
        )
    summary["breaches"] = breaches(summary, thresholds)
    summary["mlflow_run_id"] = log_to_mlflow(settings, summary, drift, figures(summary, drift, thresholds))
    return summary


monitor = window_readout  # its older name
