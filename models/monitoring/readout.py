"""Daily monitoring of the ranking service: the A/B readout, feature drift and catalogue coverage.

It reads the served-ranking log (models/monitoring/serving_log.py) joined with what shoppers did next,
compares the features the model was served with the training set, and checks all of it against
`Thresholds`. The summary is JSON. The caller decides whether breaches fail its task
(`raise_for_breaches`). Runs go to the MLflow experiment `<CTR_EXPERIMENT>-monitoring`, so they
sit beside the training runs and are never mixed in with them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from feature_repo.contract import CATEGORY_ID, ID_COLUMNS, ITEM_ID, LABEL_WINDOW, USER_ID
from models.monitoring.report import figures, log_to_mlflow
from models.monitoring.serving_log import FEATURE_PREFIX, REQUEST_ID, SERVED_AT
from models.monitoring.tables import Table, literal, quoted, relation, with_outcomes
from models.registry import CHALLENGER, CHAMPION
from models.settings import Settings

if TYPE_CHECKING:
    import duckdb

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


@contextlib.contextmanager
def _relations(*tables: Table) -> Iterator[tuple[duckdb.DuckDBPyRelation, ...]]:
    """The tables as relations of one connection: relations as given (they share theirs), frames
    on a connection of their own, closed afterwards."""
    if not any(isinstance(t, pd.DataFrame) for t in tables):
        yield tables
        return
    if not all(isinstance(t, pd.DataFrame) for t in tables):
        raise TypeError("pass either DataFrames or relations of one DuckDB connection, not both")
    import duckdb

    con = duckdb.connect()
    try:
        yield tuple(relation(con, t) for t in tables)
    finally:
        con.close()


# --- A/B readout ---------------------------------------------------------------------------
#
# Every metric is a DuckDB aggregate over a relation (models/monitoring/tables.py), so a day of the
# serving log is read from its files as the queries need it; in-memory frames work the same.


def _rate(hits: int, n: int) -> float | None:
    return hits / n if n else None


def _flag(columns: list[str], name: str) -> str:
    """A boolean column as SQL, false where the table has no such column."""
    return f"coalesce(CAST({quoted(name)} AS BOOLEAN), false)" if name in columns else "false"


def _present(column: str) -> str:
    """A number that is there: neither NULL (a feature a file lacks) nor NaN (one the model lacked)."""
    return f"coalesce(NOT isnan(CAST({quoted(column)} AS DOUBLE)), false)"


def _model_scored(columns: list[str]) -> str:
    """SQL for rows the model scored: not a fallback, and with the features it saw logged. Popularity
    lists (fallback and cold start) are logged without features, and their scores are not the model's."""
    features = [c for c in columns if c.startswith(FEATURE_PREFIX)]
    scored = f"NOT {_flag(columns, 'fallback')}"
    if features:
        scored += " AND (" + " OR ".join(_present(c) for c in features) + ")"
    return scored


def auc(table: duckdb.DuckDBPyRelation, where: str, label: str, score: str = "score") -> float | None:
    """Area under the ROC curve of `score` for `label` over the rows `where` selects, as the
    Mann-Whitney statistic with ties counted half (what sklearn's roc_auc_score gives), computed
    over the distinct scores so that it runs in DuckDB at any size. None without both classes:
    AUC is undefined then, not 0.5."""
    y = f"CAST({quoted(label)} AS BOOLEAN)"
    got = table.query(
        "t",
        f"""
        WITH g AS (
            SELECT CAST({quoted(score)} AS DOUBLE) AS s,
                   count(*) FILTER (WHERE {y}) AS pos, count(*) FILTER (WHERE NOT {y}) AS neg
            FROM t WHERE {where} GROUP BY s
        ), c AS (
            SELECT pos, neg,
                   coalesce(sum(neg) OVER (ORDER BY s ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   AS below
            FROM g
        )
        SELECT sum(pos * (below + 0.5 * neg)), sum(pos), sum(neg) FROM c
        """,
    ).fetchall()[0]
    wins, positives, negatives = got if got is not None else (None, 0, 0)
    if not positives or not negatives:
        return None
    return float(wins) / (float(positives) * float(negatives))


def _variant(table: duckdb.DuckDBPyRelation, name: str) -> dict[str, Any]:
    """The readout of one variant's rows of `table` (model rows only: fallbacks left out)."""
    columns = table.columns
    scored = _model_scored(columns)
    rows = f"variant = {literal(name)} AND NOT {_flag(columns, 'fallback')}"
    clicked, converted = _flag(columns, "clicked"), _flag(columns, "converted")
    version = "model_version" if "model_version" in columns else "NULL"
    counts = table.query(
        "t",
        f"""
        SELECT count(DISTINCT {quoted(REQUEST_ID)}), count(DISTINCT {quoted(USER_ID)}), count(*),
               count(*) FILTER (WHERE {clicked}),
               count(DISTINCT {quoted(REQUEST_ID)}) FILTER (WHERE {clicked}),
               count(*) FILTER (WHERE {converted}),
               count(*) FILTER (WHERE {scored}),
               list(DISTINCT CAST({version} AS VARCHAR)) FILTER (WHERE {version} IS NOT NULL)
        FROM t WHERE {rows}
        """,
    ).fetchall()[0]
    requests, users, served_rows, clicked_rows, clicked_requests, converted_rows, scored_rows = counts[:7]
    versions = counts[7]
    readout: dict[str, Any] = {
        "traffic": served_rows > 0,
        "requests": requests,
        "users": users,
        "served_rows": served_rows,
        "clicked_rows": clicked_rows,
        "clicked_requests": clicked_requests,
        "converted_rows": converted_rows,
        "model_scored_rows": scored_rows,
        "model_versions": sorted(versions or []),
    }
    readout["row_ctr"] = _rate(clicked_rows, served_rows)
    readout["request_click_rate"] = _rate(clicked_requests, requests)
    readout["conversion_rate"] = _rate(converted_rows, served_rows)
    readout["online_auc"] = auc(table, f"{rows} AND {scored}", "clicked")
    # The models predict intent (cart, fav, buy) after a view: their own label, online, is
    # `converted` among the served items the shopper went on to view. The threshold applies to it.
    readout["online_label_auc"] = auc(table, f"{rows} AND {scored} AND {clicked}", "converted")
    if not served_rows:
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


def ab_readout(joined: Table, alpha: float = ALPHA) -> dict[str, Any]:
    """Online metrics per variant from the log joined with outcomes (`tables.with_outcomes`, or
    `serving_log.join_outcomes` in memory), and whether the challenger's per-request click rate
    differs from the champion's at `alpha`.

    Fallback rows are counted apart: they show the store's health, not a model's quality. The test
    takes requests as independent; a user's requests are not quite, so with heavy users p is optimistic.
    """
    with _relations(joined) as (table,):
        fallback = _flag(table.columns, "fallback")
        requests, served_rows, fallback_rows, fallback_requests = table.query(
            "t",
            f"SELECT count(DISTINCT {quoted(REQUEST_ID)}), count(*), count(*) FILTER (WHERE {fallback}), "
            f"count(DISTINCT {quoted(REQUEST_ID)}) FILTER (WHERE {fallback}) FROM t",
        ).fetchall()[0]
        variants = {name: _variant(table, name) for name in VARIANTS}
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
        "requests": requests,
        "served_rows": served_rows,
        "fallback_rows": fallback_rows,
        "fallback_requests": fallback_requests,
        "variants": variants,
        "test": test,
    }


# --- Feature drift -------------------------------------------------------------------------

# Quantile edges of a training feature come from at most this many of its rows (all of them when
# the training set is smaller); the bins' counts are over every row on both sides.
EDGE_SAMPLE_ROWS = 1_000_000


def _edges(expected: np.ndarray, bins: int) -> np.ndarray:
    """Inner quantile edges of the expected sample's finite values, equal edges merged."""
    finite = expected[np.isfinite(expected)]
    return np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))[1:-1] if finite.size else finite


def _psi(expected_counts: np.ndarray, actual_counts: np.ndarray) -> float:
    """PSI from per-bin counts (the last bin: missing values); empty bins get EPSILON."""
    e_n, a_n = expected_counts.sum(), actual_counts.sum()
    if not e_n or not a_n:
        return float("nan")
    pe = np.maximum(expected_counts / e_n, EPSILON)
    pa = np.maximum(actual_counts / a_n, EPSILON)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def population_stability_index(expected: Any, actual: Any, bins: int = 10) -> float:
    """PSI of `actual` against `expected`: the sum over bins of (a - e) * ln(a / e).

    Bins are quantiles of the expected sample (equal edges merged, both ends open); NaN is a bin of
    its own, so a feature that stops arriving shows as drift. Empty bins get EPSILON. NaN when
    either sample is empty.
    """
    e, a = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    edges = _edges(e, bins)

    def counts(x: np.ndarray) -> np.ndarray:
        nan = np.isnan(x)
        bins_of = np.searchsorted(edges, x[~nan], side="right")
        return np.r_[np.bincount(bins_of, minlength=len(edges) + 1), nan.sum()]

    return _psi(counts(e), counts(a))


def _bin_counts_sql(column: str, edges: np.ndarray) -> str:
    """Aggregates giving, for `column`, the rows at or above each edge, the present rows and all
    rows: per-bin counts are their differences (the bins of `np.searchsorted(edges, side='right')`)."""
    x = f"CAST({quoted(column)} AS DOUBLE)"
    present = _present(column)
    at_or_above = [f"count(*) FILTER (WHERE {present} AND {x} >= '{float(e)!r}'::DOUBLE)" for e in edges]
    return ", ".join([*at_or_above, f"count(*) FILTER (WHERE {present})", "count(*)"])


def _bins(values: tuple, edges: np.ndarray) -> np.ndarray:
    """Per-bin counts (missing last) from `_bin_counts_sql`'s aggregates."""
    k = len(edges)
    ge, present, total = np.array(values[:k], dtype=float), float(values[k]), float(values[k + 1])
    bounds = np.r_[present, ge, 0.0]
    return np.r_[bounds[:-1] - bounds[1:], total - present]


def feature_drift(training: Table, served: Table, features: list[str], bins: int = 10) -> pd.DataFrame:
    """PSI and means of each feature as the model was served it (rows it scored) against training.

    A feature the log does not carry gets a NaN PSI and served mean. One scan of each side counts
    every feature's bins; the edges come from up to EDGE_SAMPLE_ROWS training rows.
    """
    with _relations(training, served) as (train, log):
        total = train.query("t", "SELECT count(*) FROM t").fetchall()[0][0]
        sample = f" USING SAMPLE reservoir({EDGE_SAMPLE_ROWS} ROWS) REPEATABLE (0)"
        sample = sample if total > EDGE_SAMPLE_ROWS else ""
        casts = ", ".join(f"CAST({quoted(f)} AS DOUBLE) AS {quoted(f)}" for f in features)
        drawn = train.query("t", f"SELECT {casts} FROM t{sample}").fetchnumpy() if features else {}
        edges = {f: _edges(np.asarray(drawn[f], dtype=float), bins) for f in features}
        logged = [f for f in features if FEATURE_PREFIX + f in log.columns]

        def scan(table: duckdb.DuckDBPyRelation, names: dict[str, str], where: str = "true") -> dict:
            parts = [_bin_counts_sql(column, edges[f]) for f, column in names.items()]
            means = [f"avg(CAST({quoted(c)} AS DOUBLE)) FILTER (WHERE {_present(c)})" for c in names.values()]
            if not parts:
                return {}
            query = f"SELECT {', '.join([*parts, *means])} FROM t WHERE {where}"
            got = table.query("t", query).fetchall()[0]
            out, at = {}, 0
            for f in names:
                width = len(edges[f]) + 2
                out[f] = _bins(got[at : at + width], edges[f])
                at += width
            return {f: (counts, got[at + j]) for j, (f, counts) in enumerate(out.items())}

        expected = scan(train, {f: f for f in features})
        actual = scan(log, {f: FEATURE_PREFIX + f for f in logged}, _model_scored(log.columns))
    rows = []
    for feature in features:
        e_counts, e_mean = expected[feature]
        a_counts, a_mean = actual.get(feature, (np.zeros(1), None))
        rows.append(
            (
                feature,
                _psi(e_counts, a_counts),
                float("nan") if e_mean is None else float(e_mean),
                float("nan") if a_mean is None else float(a_mean),
            )
        )
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
    served: Table, catalogue_items: int, category_column: str = CATEGORY_COLUMN
) -> dict[str, Any]:
    """How much of the catalogue shoppers were shown, how evenly, and how varied each list was.

    `catalogue_items` is the number of items that could have been served. The Gini coefficient is
    over the whole catalogue (an item never served has zero exposure). Intra-list diversity is
    distinct categories / items of known category per request, None when the log has no category.
    """
    if catalogue_items <= 0:
        raise ValueError(f"catalogue_items={catalogue_items}: expected a positive count")
    item, user = quoted(ITEM_ID), quoted(USER_ID)
    with _relations(served) as (log,):
        exposure = log.query("t", f"SELECT count(*) AS n FROM t GROUP BY {item}").fetchnumpy()["n"]
        per_user = log.query(
            "t", f"SELECT avg(n) FROM (SELECT count(DISTINCT {item}) AS n FROM t GROUP BY {user})"
        ).fetchall()[0][0]
        diversity = None
        if category_column in log.columns:
            c = f"CAST({quoted(category_column)} AS DOUBLE)"
            diversity = log.query(
                "t",
                f"SELECT avg(d) FROM (SELECT count(DISTINCT {c}) / count(*) AS d FROM t "
                f"WHERE {_present(category_column)} GROUP BY {quoted(REQUEST_ID)})",
            ).fetchall()[0][0]
    exposure = np.asarray(exposure, dtype=float)
    unserved = np.zeros(max(catalogue_items - len(exposure), 0))
    report: dict[str, Any] = {
        "served_items": len(exposure),
        "catalogue_items": catalogue_items,
        "coverage": len(exposure) / catalogue_items,
        "exposure_gini": gini(np.r_[exposure, unserved]),
        "mean_distinct_items_per_user": float("nan") if per_user is None else float(per_user),
        "intra_list_diversity": None if diversity is None else float(diversity),
    }
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


def _readout(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    served: duckdb.DuckDBPyRelation,
    events: duckdb.DuckDBPyRelation,
    training: duckdb.DuckDBPyRelation | None,
    catalogue_items: int,
    thresholds: Thresholds | None,
) -> dict[str, Any]:
    thresholds = thresholds or Thresholds.from_settings(settings)
    summary: dict[str, Any] = {
        "rows": served.query("t", "SELECT count(*) FROM t").fetchall()[0][0],
        "message": None,
        "window": None,
        "catalogue_items": catalogue_items,
        "thresholds": asdict(thresholds),
        "ab": None,
        "drift": [],
        "coverage": None,
    }
    drift = pd.DataFrame(columns=DRIFT_COLUMNS)
    if not summary["rows"]:
        summary["message"] = EMPTY_LOG
    else:
        at = f"CAST({quoted(SERVED_AT)} AS TIMESTAMPTZ)"
        first, last = served.query("t", f"SELECT min({at}), max({at}) FROM t").fetchall()[0]
        summary["window"] = [pd.Timestamp(t).tz_convert("UTC").isoformat() for t in (first, last)]
        # The features the log carries and training has; ids are left out, they are not quantities.
        trained = set(training.columns) if training is not None else set()
        logged = [c.removeprefix(FEATURE_PREFIX) for c in served.columns if c.startswith(FEATURE_PREFIX)]
        features = [f for f in logged if f in trained and f not in ID_COLUMNS]
        if features:
            drift = feature_drift(training, served, features)
        summary.update(
            ab=ab_readout(with_outcomes(con, served, events), thresholds.alpha),
            drift=drift.astype(object).where(drift.notna(), None).to_dict("records"),
            coverage=coverage_and_diversity(served, catalogue_items),
        )
    summary["breaches"] = breaches(summary, thresholds)
    summary["mlflow_run_id"] = log_to_mlflow(settings, summary, drift, figures(summary, drift, thresholds))
    return summary


def window_readout(
    settings: Settings,
    served: pd.DataFrame,
    events: pd.DataFrame,
    training: pd.DataFrame,
    catalogue_items: int,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """The daily monitoring stage on in-memory frames: A/B readout, drift and coverage of one window
    of the serving log, checked against `thresholds` (default: the settings') and logged to MLflow;
    returns a JSON-able summary. `file_readout` runs the same over the files.

    `served` is `read_serving_log(...)` for the window, `events` the canonical events from its
    start to LABEL_WINDOW after its end, `training` the training set (feature columns by name).
    Breaches are listed, never raised: the caller decides (`raise_for_breaches`).
    """
    import duckdb

    con = duckdb.connect()
    try:
        train = relation(con, training) if len(training.columns) else None
        return _readout(
            settings, con, relation(con, served), relation(con, events), train, catalogue_items, thresholds
        )
    finally:
        con.close()


def file_readout(
    settings: Settings,
    start: datetime,
    end: datetime,
    catalogue_items: int | None = None,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """The daily monitoring stage over the files: the serving log of [start, end), the accepted
    events and the live event log up to LABEL_WINDOW later, and the training set, read by DuckDB
    within the batch engine's limits (CTR_DUCKDB_*), so memory stays bounded by those limits
    however many rows a day served. `catalogue_items` defaults to the items in those events."""
    from models.data import lake
    from models.data.event_log import EventLog
    from models.features.engine import EngineConfig, connect
    from models.monitoring import tables

    until = pd.Timestamp(end) + LABEL_WINDOW
    lo = pd.Timestamp(start).tz_convert(settings.timezone).normalize()
    event_files = [
        lake.partition_path(settings, lake.ACCEPTED, day)
        for day in lake.partitions(settings, lake.ACCEPTED)
        if lo <= day < until
    ] + EventLog(settings.paths.event_log).files(start, until.to_pydatetime())
    with connect(EngineConfig.from_settings(settings)) as con:
        served = tables.serving_log(con, settings.paths.serving_log, start, end)
        events = tables.parquet_events(con, event_files)
        if catalogue_items is None:
            query = f"SELECT count(DISTINCT {quoted(ITEM_ID)}) FROM t"
            items = events.query("t", query).fetchall()[0][0]
            catalogue_items = items or 1
        training = tables.parquet_table(con, settings.paths.training_set)
        return _readout(settings, con, served, events, training, catalogue_items, thresholds)


monitor = window_readout  # its older name
