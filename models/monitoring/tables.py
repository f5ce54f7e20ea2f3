"""The monitoring readout's inputs as DuckDB relations: the serving log, the events that follow it
and the training set, read from their Parquet files as queries need them.

A day of the serving log is one row per served item, hundreds of millions of rows at a shop's
traffic (50 requests/s x 100 items is 432 M a day), so the readout never holds it in memory:
every metric is a DuckDB aggregate over these relations, which spill under the configured memory
limit (CTR_DUCKDB_MEMORY_LIMIT). Small in-memory frames (tests, notebooks) become relations of
the same shape.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Union

import pandas as pd

from feature_repo.contract import (
    BEHAVIOR,
    EVENT_TIMESTAMP,
    INTENT_BEHAVIORS,
    ITEM_ID,
    LABEL_WINDOW,
    PAGE_VIEW,
    USER_ID,
)
from models.features.sql import literal, quoted
from models.monitoring.serving_log import REQUEST_ID, SERVED_AT

if TYPE_CHECKING:
    import duckdb

Table = Union[pd.DataFrame, "duckdb.DuckDBPyRelation"]
OUTCOME_COLUMNS = (USER_ID, ITEM_ID, BEHAVIOR, EVENT_TIMESTAMP)
# A served row is one (response, position): the ranker gives each response a fresh uuid.
ROW_KEY = (REQUEST_ID, "position")


def relation(con: duckdb.DuckDBPyConnection, table: Table) -> duckdb.DuckDBPyRelation:
    """`table` as a relation of `con`: a frame is read in place; a relation must belong to `con`."""
    if isinstance(table, pd.DataFrame):
        return con.from_df(table)
    return table


def _files_sql(files: list[Path]) -> str:
    return "[" + ", ".join(literal(f) for f in files) + "]"


def serving_log(
    con: duckdb.DuckDBPyConnection, folder: Path, start: datetime | None = None, end: datetime | None = None
) -> duckdb.DuckDBPyRelation:
    """The served rows of `folder` (date=YYYY-MM-DD/part-*.parquet) with start <= served_at < end.

    Only the day folders that can hold such rows are opened; files of model versions with other
    features are unioned by name (a feature a file lacks is NULL)."""
    lo = pd.Timestamp(start).tz_convert("UTC").normalize() - pd.Timedelta(days=1) if start else None
    files = []
    for day_folder in sorted(folder.glob("date=*")):
        day = pd.Timestamp(day_folder.name.removeprefix("date="), tz="UTC")
        if (lo is None or day >= lo) and (end is None or day < pd.Timestamp(end)):
            files += sorted(day_folder.glob("part-*.parquet"))
    if not files:
        from models.monitoring.serving_log import COLUMNS

        return con.from_df(pd.DataFrame(columns=list(COLUMNS)))
    where = []
    if start is not None:
        where.append(f"{quoted(SERVED_AT)} >= {literal(pd.Timestamp(start).isoformat())}::TIMESTAMPTZ")
    if end is not None:
        where.append(f"{quoted(SERVED_AT)} < {literal(pd.Timestamp(end).isoformat())}::TIMESTAMPTZ")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    # pandas writes nanosecond stamps; the readout compares microsecond TIMESTAMPTZ values.
    at = quoted(SERVED_AT)
    rows = (
        f"SELECT * REPLACE (CAST({at} AS TIMESTAMPTZ) AS {at}) "
        f"FROM read_parquet({_files_sql(files)}, union_by_name = true)"
    )
    return con.sql(f"SELECT * FROM ({rows}){clause}")


def parquet_events(con: duckdb.DuckDBPyConnection, files: list[Path]) -> duckdb.DuckDBPyRelation:
    """The behaviour columns the outcome join reads, from event files (lake partitions, event log)."""
    columns = ", ".join(quoted(c) for c in OUTCOME_COLUMNS)
    if not files:
        return con.sql(
            f"SELECT NULL::BIGINT AS {quoted(USER_ID)}, NULL::BIGINT AS {quoted(ITEM_ID)}, "
            f"NULL::VARCHAR AS {quoted(BEHAVIOR)}, NULL::TIMESTAMPTZ AS {quoted(EVENT_TIMESTAMP)} WHERE false"
        )
    return con.sql(f"SELECT {columns} FROM read_parquet({_files_sql(files)}, union_by_name = true)")


def parquet_table(con: duckdb.DuckDBPyConnection, path: Path) -> duckdb.DuckDBPyRelation | None:
    """A Parquet file or a folder of them (any depth) as one relation; None when there is none."""
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            return None
        return con.sql(f"SELECT * FROM read_parquet({_files_sql(files)}, union_by_name = true)")
    if path.exists():
        return con.sql(f"SELECT * FROM read_parquet({literal(path)})")
    return None


def with_outcomes(
    con: duckdb.DuckDBPyConnection,
    served: duckdb.DuckDBPyRelation,
    events: duckdb.DuckDBPyRelation,
    horizon: timedelta = LABEL_WINDOW,
) -> duckdb.DuckDBPyRelation:
    """Each served row with what the shopper did with that item within `horizon` after it was
    served: `clicked` (viewed it) and `converted` (cart, fav or buy, the models' own label).

    The served rows are matched to later events of the same (user, item) and reduced to one flag
    pair per served row (its ROW_KEY) before they are joined back, so the cost is a scan of the log
    plus a hash join against the window's events, whatever the log's size."""
    served.create_view("monitoring_served", replace=True)
    events.create_view("monitoring_events", replace=True)
    intents = ", ".join(literal(b) for b in INTENT_BEHAVIORS)
    u, i, s, ts, b = (quoted(c) for c in (USER_ID, ITEM_ID, SERVED_AT, EVENT_TIMESTAMP, BEHAVIOR))
    micros = int(horizon.total_seconds() * 1_000_000)
    key = ", ".join(quoted(c) for c in ROW_KEY)
    # The matches are few (served items the shopper went on to touch): kept as a table, so each of
    # the readout's queries scans the log once and joins them, rather than redoing the match.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE monitoring_hits AS
        SELECT {", ".join("s." + quoted(c) for c in ROW_KEY)},
               bool_or(e.{b} = {literal(PAGE_VIEW)}) AS clicked,
               bool_or(e.{b} IN ({intents})) AS converted
        FROM monitoring_served s JOIN (
            SELECT CAST({u} AS BIGINT) AS {u}, CAST({i} AS BIGINT) AS {i},
                   CAST({b} AS VARCHAR) AS {b}, CAST({ts} AS TIMESTAMPTZ) AS {ts}
            FROM monitoring_events
        ) e
          ON e.{u} = s.{u} AND e.{i} = s.{i}
         AND e.{ts} >= CAST(s.{s} AS TIMESTAMPTZ)
         AND e.{ts} < CAST(s.{s} AS TIMESTAMPTZ) + to_microseconds({micros})
        GROUP BY ALL
        """
    )
    return con.sql(
        f"""
        SELECT monitoring_served.*,
               coalesce(monitoring_hits.clicked, false) AS clicked,
               coalesce(monitoring_hits.converted, false) AS converted
        FROM monitoring_served LEFT JOIN monitoring_hits USING ({key})
        """
    )
