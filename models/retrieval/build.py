"""Building the candidate index (models.retrieval.index) from events: co-visitation, category and
hourly popularity lists, as DuckDB queries that spill to disk (models.retrieval.engine).

Co-visited pairs are produced per event from its next `max_lag` events (window `lead`s, so the
work grows with events x max_lag, never with a user's events squared), summed per (item,
neighbour) and cut to the top `neighbours` per item; no step holds all pairs in memory. From the
lake the lists are written straight to the index's Parquet files; beyond EVENTS_PER_RANGE events
the pairs are summed one range of items at a time, so that what is spilled is one range's pairs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from feature_repo.contract import (
    BEHAVIOR,
    CATEGORY_ID,
    EVENT_TIMESTAMP,
    ITEM_ID,
    SHOP_UTC_OFFSET_S,
    USER_ID,
    shop_hour,
)
from models.data.lake import ACCEPTED, partition_path, partitions
from models.features.engine import EngineConfig
from models.features.sql import literal
from models.retrieval.engine import connect
from models.retrieval.index import (
    _FILES,
    _META,
    _OVERALL,
    HOUR,
    HOURS,
    NEIGHBOUR,
    SCORE,
    CandidateConfig,
    CandidateIndex,
    _utc,
    replace_folder,
)
from models.settings import Settings, get_settings

log = logging.getLogger(__name__)

__all__ = ["build_and_save_index", "build_index", "build_index_to_folder", "shop_hour"]

# The valid events: a view over a relation `source` with the canonical columns plus `_f`, `_r`, the
# file and row each came from, so events of the same user and second keep the order they were read in.
_VALID = """
CREATE OR REPLACE TEMP VIEW valid AS
SELECT
    e.{user}::BIGINT AS u, e.{item}::BIGINT AS i, e.{category}::BIGINT AS c, e.{behavior}::VARCHAR AS b,
    epoch_us(e.{ts}) // 1000000 AS s, e._f AS f, e._r AS r
FROM source AS e
WHERE e.{user} IS NOT NULL AND e.{item} IS NOT NULL AND e.{category} IS NOT NULL
    AND e.{behavior} IS NOT NULL AND e.{ts} IS NOT NULL AND epoch_us(e.{ts}) * 1000 < {until_ns}"""

# An event weighs its behaviour's weight x the recency decay of its second (table `decay`, computed
# with NumPy's exp2 per distinct second, which libm's pow does not always match to the last bit).
_EVENTS = """
weights(b, bw) AS (SELECT * FROM (VALUES {weights})),
ev AS (SELECT v.u, v.i, v.c, v.s, weights.bw * decay.d AS w, v.f, v.r FROM valid AS v
    JOIN weights USING (b) JOIN decay USING (s))"""

# Each pair counts both ways: a -> b weighs b's event, b -> a weighs a's event. Sums are
# compensated (fsum), so they hardly depend on the order threads add in and equal sums tie
# reproducibly, broken by the smaller id as in every list here.
_DIRECTED = """
seq AS (
    SELECT i, s, w, [{lead_i}] AS ni, [{lead_s}] AS ns, [{lead_w}] AS nw
    FROM ev WINDOW nxt AS (PARTITION BY u ORDER BY s, f, r)
),
pairs AS (SELECT i AS a, s AS sa, w AS wa, unnest(ni) AS b, unnest(ns) AS sb, unnest(nw) AS wb FROM seq),
directed AS (
    SELECT unnest([a, b]) AS src, unnest([b, a]) AS dst, unnest([wb, wa]) AS w
    FROM pairs WHERE b IS NOT NULL AND sb - sa <= $max_gap AND a <> b
)"""
# The top neighbours of every item, from a relation `directed` of (src, dst, w).
_TOP = """
summed AS (SELECT src, dst, fsum(w) AS score FROM directed GROUP BY src, dst)
SELECT src AS {item}, dst AS {neighbour}, score AS {score} FROM summed
QUALIFY row_number() OVER (PARTITION BY src ORDER BY score DESC, dst) <= $neighbours
ORDER BY src, score DESC, dst"""
_NEIGHBOURS = _DIRECTED + ",\n" + _TOP

# Beyond this many events the pairs are summed in ranges of items, one range at a time: every
# event makes up to 2 x max_lag directed pairs, and summing them all at once holds (or spills) one
# row per distinct pair, ~60 GB at 100 M events.
EVENTS_PER_RANGE = 5_000_000

_CATEGORIES = """
summed AS (SELECT c, i, fsum(w) AS score FROM ev GROUP BY c, i)
SELECT c AS {category}, i AS {item}, score AS {score} FROM summed
QUALIFY row_number() OVER (PARTITION BY c ORDER BY score DESC, i) <= $per_category
ORDER BY c, score DESC, i"""

# Per hour of day the top `per_hour` items by hour weight + hour_prior * overall weight / 24; an
# item unseen in an hour scores its prior only, so the overall leaders are the only unseen items
# that can make an hour's list: they join every hour with zero hour weight. Then every item overall.
_POPULAR = """
overall AS (SELECT i, fsum(w) AS o FROM ev GROUP BY i),
leaders AS (SELECT i FROM overall ORDER BY o DESC, i LIMIT $per_hour),
by_hour AS (
    SELECT (s + {offset}) // 3600 % {hours} AS h, i, fsum(w) AS x FROM ev GROUP BY ALL
    UNION ALL SELECT h.range AS h, l.i, 0.0 AS x FROM range({hours}) AS h CROSS JOIN leaders AS l
),
hourly AS (
    SELECT h, i, x + $hour_prior * o / {hours} AS score
    FROM (SELECT h, i, fsum(x) AS x FROM by_hour GROUP BY h, i) JOIN overall USING (i)
    QUALIFY row_number() OVER (PARTITION BY h ORDER BY score DESC, i) <= $per_hour
)
SELECT h::BIGINT AS {hour}, i AS {item}, score AS {score}
FROM (SELECT h, i, score FROM hourly UNION ALL SELECT {overall} AS h, i, o AS score FROM overall)
ORDER BY h = {overall}, h, score DESC, i"""


def _query(body: str, config: CandidateConfig, *, with_events: bool = True, until_ns: int = 0) -> str:
    """One of the list queries, over the events CTE (`until_ns` is for the view of valid events,
    which cannot take parameters); names from the contract."""
    weights = ", ".join(f"({literal(b)}, {float(v)!r}::DOUBLE)" for b, v in config.behavior_weights.items())
    leads = {
        f"lead_{col}": ", ".join(f"lead({col}, {lag}) OVER nxt" for lag in range(1, config.max_lag + 1))
        for col in ("i", "s", "w")
    }
    names = {
        "user": USER_ID,
        "item": ITEM_ID,
        "category": CATEGORY_ID,
        "behavior": BEHAVIOR,
        "ts": EVENT_TIMESTAMP,
        "neighbour": NEIGHBOUR,
        "score": SCORE,
        "hour": HOUR,
        "hours": HOURS,
        "overall": _OVERALL,
        "offset": SHOP_UTC_OFFSET_S,
        "weights": weights,
        "until_ns": until_ns,
        **leads,
    }
    return (("WITH " + _EVENTS + ",\n" + body) if with_events else body).format(**names)


def _parameters(query: str, until: pd.Timestamp, config: CandidateConfig) -> dict[str, Any]:
    """The named parameters `query` uses."""
    every = {
        "max_gap": float(config.max_gap_s),
        "neighbours": config.neighbours,
        "per_category": config.per_category,
        "per_hour": config.per_hour,
        "hour_prior": float(config.hour_prior),
    }
    return {k: v for k, v in every.items() if f"${k}" in query}


_TABLES = {"neighbours": _NEIGHBOURS, "categories": _CATEGORIES, "popular": _POPULAR}
_DTYPES = {
    "neighbours": {ITEM_ID: np.int64, NEIGHBOUR: np.int64, SCORE: np.float64},
    "categories": {CATEGORY_ID: np.int64, ITEM_ID: np.int64, SCORE: np.float64},
    "popular": {HOUR: np.int64, ITEM_ID: np.int64, SCORE: np.float64},
}


def _prepare(con: duckdb.DuckDBPyConnection, until: pd.Timestamp, config: CandidateConfig) -> int:
    """Define the valid events over `source` and register the decay of each of their seconds;
    returns how many events weigh in."""
    con.execute(_query(_VALID, config, with_events=False, until_ns=int(until.value)))
    known = ", ".join(literal(b) for b in config.behavior_weights)
    seconds = con.execute(f"SELECT DISTINCT s FROM valid WHERE b IN ({known})").fetchnumpy()["s"]
    seconds = np.asarray(seconds, dtype=np.int64)
    decay = pd.DataFrame({"s": seconds, "d": np.exp2(-((until.timestamp() - seconds) / config.half_life_s))})
    con.register("decay", decay)
    query = _query("SELECT count(*) FROM ev", config)
    return int(con.execute(query, _parameters(query, until, config)).fetchone()[0])


def build_index(
    events: pd.DataFrame,
    until: datetime | pd.Timestamp,
    *,
    config: CandidateConfig | None = None,
    limits: EngineConfig | None = None,
) -> CandidateIndex:
    """Co-visitation, category and hourly popularity lists from the events strictly before `until`.

    `events` is a canonical event frame (feature_repo/contract.py); rows with nulls or an unknown
    behaviour are skipped. Events of the same user and second keep the frame's order.
    """
    config = config or CandidateConfig()
    until = _utc(until)
    frame = events[[USER_ID, ITEM_ID, CATEGORY_ID, BEHAVIOR, EVENT_TIMESTAMP]].assign(
        _f=0, _r=np.arange(len(events), dtype=np.int64)
    )
    con = connect(limits or EngineConfig.from_settings(get_settings()))
    try:
        con.register("source", frame)
        count = _prepare(con, until, config)
        tables = {}
        for name, body in _TABLES.items():
            query = _query(body, config)
            result = con.execute(query, _parameters(query, until, config)).df()
            tables[name] = result.astype(_DTYPES[name])
    finally:
        con.close()
    meta = {"until": until.isoformat(), "events": count, "config": config.to_json()}
    return CandidateIndex(tables["neighbours"], tables["categories"], tables["popular"], meta)


def _sql_list(files: Sequence[Path]) -> str:
    """A list literal of paths, for statements (views) that take no parameters."""
    return "[" + ", ".join(literal(str(p)) for p in files) + "]"


def build_index_to_folder(
    files: Sequence[Path],
    until: datetime | pd.Timestamp,
    folder: Path,
    *,
    config: CandidateConfig | None = None,
    limits: EngineConfig,
    events_per_range: int = EVENTS_PER_RANGE,
) -> dict[str, Any]:
    """Build from Parquet event files (read in the given order) straight into the index folder
    `folder`, replaced only once every file is written; returns what the index holds (its
    summary). Nothing the size of the pairs or the lists passes through Python. Beyond
    `events_per_range` events the co-visited pairs are summed one range of items at a time."""
    config = config or CandidateConfig()
    until = _utc(until)
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    con = connect(limits)
    try:
        # The file's position in `files`, then the row's in the file: the order read_events gives.
        paths = _sql_list(files)
        con.execute(
            f"CREATE TEMP VIEW source AS SELECT e.*, list_position({paths}, e.filename) AS _f, "
            "e.file_row_number AS _r "
            f"FROM read_parquet({paths}, filename = true, file_row_number = true, union_by_name = true) AS e"
        )
        count = _prepare(con, until, config)
        ranges = max(1, -(-count // events_per_range))
        for name, body in _TABLES.items():
            target = partial / _FILES[name]
            if name == "neighbours" and ranges > 1:
                _neighbours_by_range(con, until, config, ranges, target)
                continue
            query = _query(body, config)
            con.execute(f"COPY ({query}) TO '{target}' (FORMAT parquet)", _parameters(query, until, config))
        summary = con.execute(
            f"SELECT (SELECT count(*) FROM read_parquet($p) WHERE {HOUR} = $o), "
            f"(SELECT count(DISTINCT {ITEM_ID}) FROM read_parquet($n)), "
            "(SELECT count(*) FROM read_parquet($n)), "
            f"(SELECT count(DISTINCT {CATEGORY_ID}) FROM read_parquet($c))",
            {
                "p": str(partial / _FILES["popular"]),
                "n": str(partial / _FILES["neighbours"]),
                "c": str(partial / _FILES["categories"]),
                "o": _OVERALL,
            },
        ).fetchone()
    finally:
        con.close()
    meta = {"until": until.isoformat(), "events": count, "config": config.to_json()}
    (partial / _META).write_text(json.dumps(meta, indent=2))
    replace_folder(partial, folder)
    items, with_neighbours, pairs, categories = (int(v) for v in summary)
    return {
        "until": meta["until"],
        "events": count,
        "items": items,
        "items_with_neighbours": with_neighbours,
        "pairs": pairs,
        "categories": categories,
    }


def _neighbours_by_range(
    con: duckdb.DuckDBPyConnection, until: pd.Timestamp, config: CandidateConfig, ranges: int, target: Path
) -> None:
    """The neighbours table written as the single query writes it, with the pairs summed one range
    of items at a time: the directed pairs are written once to Parquet, split by their source
    item's range (ranges holding about equal numbers of events), then each range is summed and cut
    to its top neighbours, and the ranges' lists are joined in item order. What is held (or
    spilled) at once is one range's distinct pairs, not all of them."""
    bounds = _range_bounds(con, until, config, ranges)
    part = " + ".join(f"(src >= {int(b)})::INTEGER" for b in bounds) or "0"
    work = target.with_name(target.stem + ".ranges")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        directed = _query(_DIRECTED + f"\nSELECT src, dst, w, {part} AS part FROM directed", config)
        con.execute(
            f"COPY ({directed}) TO {literal(str(work / 'pairs'))} (FORMAT parquet, PARTITION_BY (part))",
            _parameters(directed, until, config),
        )
        lists = []
        for k in range(ranges):
            files = sorted((work / "pairs" / f"part={k}").glob("*.parquet"))
            if not files:
                continue
            top = _TOP.format(item=ITEM_ID, neighbour=NEIGHBOUR, score=SCORE)
            query = f"WITH directed AS (SELECT src, dst, w FROM read_parquet({_sql_list(files)})),\n{top}"
            lists.append(work / f"top-{k}.parquet")
            con.execute(
                f"COPY ({query}) TO {literal(str(lists[-1]))} (FORMAT parquet)",
                _parameters(query, until, config),
            )
        columns = f"{ITEM_ID}, {NEIGHBOUR}, {SCORE}"
        empty = (
            f"(SELECT NULL::BIGINT AS {ITEM_ID}, NULL::BIGINT AS {NEIGHBOUR}, "
            f"NULL::DOUBLE AS {SCORE} LIMIT 0)"
        )
        source = f"read_parquet({_sql_list(lists)})" if lists else empty
        # The ranges in order, each in its own order: the whole table's ORDER BY, without a sort.
        con.execute(f"COPY (SELECT {columns} FROM {source}) TO {literal(str(target))} (FORMAT parquet)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _range_bounds(
    con: duckdb.DuckDBPyConnection, until: pd.Timestamp, config: CandidateConfig, ranges: int
) -> list[int]:
    """Item ids cutting the weighed events into `ranges` ranges of about equal numbers of events
    (approximately: any cut gives the same table)."""
    query = _query("SELECT approx_quantile(i, $q::FLOAT[]) FROM ev", config)
    params = {**_parameters(query, until, config), "q": [k / ranges for k in range(1, ranges)]}
    return sorted(set(con.execute(query, params).fetchone()[0]))


def _last_event(con: duckdb.DuckDBPyConnection, files: Sequence[Path]) -> pd.Timestamp | None:
    paths = [str(p) for p in files]
    query = f"SELECT epoch_us(max({EVENT_TIMESTAMP})) FROM read_parquet($paths)"
    (micros,) = con.execute(query, {"paths": paths}).fetchone()
    return None if micros is None else pd.Timestamp(micros, unit="us", tz="UTC")


def build_and_save_index(settings: Settings | None = None) -> dict[str, Any]:
    """Build from the accepted events up to the last one present and save to the candidates folder
    (CTR_CANDIDATES_DIR), where the ranker loads it; returns what the index holds."""
    settings = settings or get_settings()
    started = time.perf_counter()
    files = [partition_path(settings, ACCEPTED, d) for d in partitions(settings, ACCEPTED)]
    limits = EngineConfig.from_settings(settings)
    last = None
    if files:
        con = connect(limits)
        try:
            last = _last_event(con, files)
        finally:
            con.close()
    if last is None:
        raise ValueError("No accepted events to build candidates from")
    until = last + pd.Timedelta(seconds=1)  # the last event included
    summary = {
        **build_index_to_folder(files, until, settings.paths.candidates, limits=limits),
        "path": str(settings.paths.candidates),
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("candidates: %s", json.dumps(summary))
    return summary


# The older names of the two builders.
build_candidates = build_index
build_candidates_stage = build_and_save_index
