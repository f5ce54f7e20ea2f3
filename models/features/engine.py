"""The batch feature job on DuckDB: the definitions of models/features/definitions.py run out of
core over the lake's day-partitioned Parquet files, their results written straight to Parquet.

DuckDB holds at most CTR_DUCKDB_MEMORY_LIMIT and spills to CTR_DUCKDB_TEMP_DIR beyond it, with
CTR_DUCKDB_THREADS threads; no table of the whole window is ever held in Python.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from feature_repo.contract import BEHAVIORS, EVENT_COLUMNS, EVENT_TIMESTAMP
from models.features import definitions
from models.features.sql import literal

if TYPE_CHECKING:
    import duckdb
    import ibis.expr.types as ir

    from models.settings import Settings


@dataclass(frozen=True)
class EngineConfig:
    """How much of the machine a DuckDB run may use."""

    memory_limit: str = "4GB"
    threads: int = os.cpu_count() or 1
    temp_directory: Path | None = None
    max_temp_size: str | None = None  # a run that would spill more fails rather than fill the disk

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            settings.duckdb_memory_limit,
            settings.duckdb_threads,
            settings.duckdb_temp_dir,
            settings.duckdb_max_temp_size,
        )


def _event_id_arrow(
    user: pa.Array, item: pa.Array, category: pa.Array, behavior: pa.Array, timestamp: pa.Array
) -> pa.Array:
    """models.data.events.event_ids of one vector of events (DuckDB calls it vector by vector), read
    from the Arrow columns without building a frame."""
    import numpy as np
    import pyarrow.compute as pc

    from models.data.events import event_ids_of_columns

    codes = pc.fill_null(pc.index_in(behavior, value_set=_BEHAVIORS), -1)
    micros = pc.cast(pc.cast(timestamp, pa.timestamp("us", tz="UTC")), pa.int64())
    seconds = np.floor_divide(micros.to_numpy(zero_copy_only=False), 1_000_000)
    columns = [a.to_numpy(zero_copy_only=False) for a in (user, item, category)]
    ids = event_ids_of_columns(*columns, codes.to_numpy(zero_copy_only=False).astype(np.int64), seconds)
    return pa.array(ids, pa.int64())


_BEHAVIORS = pa.array(BEHAVIORS, pa.string())


@contextlib.contextmanager
def connect(config: EngineConfig | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the configured limits, UTC session time and the event-id function."""
    import duckdb

    config = config or EngineConfig()
    options = {"memory_limit": config.memory_limit, "threads": config.threads}
    if config.temp_directory is not None:
        Path(config.temp_directory).mkdir(parents=True, exist_ok=True)
        options["temp_directory"] = str(config.temp_directory)
    if config.max_temp_size is not None:
        options["max_temp_directory_size"] = config.max_temp_size
    con = duckdb.connect(config=options)
    try:
        # Output row order is not part of any source: letting DuckDB drop it bounds memory.
        con.execute("SET preserve_insertion_order = false")
        # Timestamps are compared and converted in UTC: without the ICU extension DuckDB always
        # does, with it the session's zone must say so.
        with contextlib.suppress(duckdb.Error):
            con.execute("SET TimeZone = 'UTC'")
        con.create_function(
            definitions.EVENT_ID_FUNCTION,
            _event_id_arrow,
            ["BIGINT", "BIGINT", "BIGINT", "VARCHAR", "TIMESTAMPTZ"],
            "BIGINT",
            type="arrow",
            side_effects=False,
        )
        yield con
    finally:
        con.close()


# --- Binding the events -------------------------------------------------------------------------


def _columns_sql(position: str) -> str:
    cols = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
    return f'{cols}, {position} AS "{definitions.EVENT_POSITION}"'


def bind_parquet(
    con: duckdb.DuckDBPyConnection,
    paths: Sequence[Path],
    start: datetime | None = None,
    end: datetime | None = None,
    name: str = definitions.EVENTS_TABLE,
) -> int:
    """Make `name` the events of these Parquet files (in this order) stamped in [start, end): DuckDB
    reads the files as the queries need them. Returns the number of rows in the files."""
    import pyarrow.parquet as pq

    parts, offset = [], 0
    for path in paths:
        rows = pq.ParquetFile(path).metadata.num_rows
        parts.append(
            f"SELECT {_columns_sql(f'file_row_number + {offset}')} "
            f"FROM read_parquet({literal(path)}, file_row_number = true)"
        )
        offset += rows
    if not parts:
        empty = ", ".join(
            f'NULL::{t} AS "{c}"'
            for c, t in zip(
                [*EVENT_COLUMNS, definitions.EVENT_POSITION],
                ["BIGINT", "BIGINT", "BIGINT", "VARCHAR", "TIMESTAMPTZ", "BIGINT"],
                strict=True,
            )
        )
        parts.append(f"SELECT {empty} WHERE false")
    where = _time_filter(start, end)
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM ({" UNION ALL ".join(parts)}){where}')
    return offset


def bind_frame(
    con: duckdb.DuckDBPyConnection, events: pd.DataFrame, name: str = definitions.EVENTS_TABLE
) -> None:
    """Make `name` the events of an in-memory frame (small inputs and tests)."""
    frame = events[list(EVENT_COLUMNS)].astype({c: "int64" for c in EVENT_COLUMNS if c.endswith("_id")})
    frame = frame.assign(
        **{
            EVENT_TIMESTAMP: frame[EVENT_TIMESTAMP].dt.tz_convert("UTC").dt.as_unit("us"),
            definitions.BEHAVIOR: frame[definitions.BEHAVIOR].astype(object),
            definitions.EVENT_POSITION: range(len(frame)),
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    con.register(f"{name}_frame", table)
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM "{name}_frame"')


def _time_filter(start: datetime | None, end: datetime | None) -> str:
    conditions = []
    if start is not None:
        conditions.append(
            f"\"{EVENT_TIMESTAMP}\" >= '{pd.Timestamp(start).tz_convert('UTC').isoformat()}'::TIMESTAMPTZ"
        )
    if end is not None:
        conditions.append(
            f"\"{EVENT_TIMESTAMP}\" < '{pd.Timestamp(end).tz_convert('UTC').isoformat()}'::TIMESTAMPTZ"
        )
    return " WHERE " + " AND ".join(conditions) if conditions else ""


# --- Running a definition ---------------------------------------------------------------------


def sql(con: duckdb.DuckDBPyConnection, expr: ir.Table) -> str:
    """The DuckDB SQL of a definition; the small constant tables it uses are registered on `con`."""
    import ibis
    import ibis.expr.operations as ops

    for table in expr.op().find(ops.InMemoryTable):
        con.register(table.name, table.data.to_pyarrow(table.schema))
    return ibis.to_sql(expr, dialect="duckdb")


def to_arrow(con: duckdb.DuckDBPyConnection, expr: ir.Table) -> pa.Table:
    return con.sql(sql(con, expr)).to_arrow_table()


def _stream_to_parquet(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> int:
    """Write a query's rows to a Parquet file with DuckDB's own parallel writer, as they are
    computed; returns the rows written.

    Every column is written nullable: DuckDB marks a column required when it can prove it has no
    nulls, which depends on how the rows were built (one run, or days upserted one by one), and a
    source must keep one schema whichever way it was built. (List columns are always nullable in
    DuckDB's Parquet files; copying them through a CASE would cost a copy of every list.)"""
    relation = con.sql(query)
    nullable = ", ".join(
        f'"{c}"' if str(t).endswith("[]") else f'CASE WHEN "{c}" IS NOT NULL THEN "{c}" END AS "{c}"'
        for c, t in zip(relation.columns, relation.types, strict=True)
    )
    copy = f"COPY (SELECT {nullable} FROM ({query})) TO {literal(path)} (FORMAT parquet)"
    return con.execute(copy).fetchall()[0][0]


def write_parquet(con: duckdb.DuckDBPyConnection, expr: ir.Table, path: Path) -> int:
    """Stream a definition's rows into a Parquet file (written beside it, then renamed); returns the
    rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    rows = _stream_to_parquet(con, sql(con, expr), partial)
    partial.replace(path)
    return rows


def bind_bucket(
    con: duckdb.DuckDBPyConnection, source: str, key: str, bucket: int, buckets: int, name: str
) -> None:
    """Make `name` the rows of `source` whose `key` hashes into bucket `bucket` of `buckets`."""
    con.execute(
        f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM "{source}" '
        f'WHERE hash("{key}") % {int(buckets)} = {int(bucket)}'
    )


def upsert_parquet(
    con: duckdb.DuckDBPyConnection,
    expr: ir.Table | Sequence[ir.Table],
    path: Path,
    start: datetime,
    end: datetime,
    *,
    include_end: bool,
) -> int:
    """Replace the rows of an offline source stamped in [start, end] (or [start, end)) by the rows of
    `expr`, atomically (written beside it, then renamed); returns the rows of `expr`. The old file
    and the new rows stream through DuckDB, so neither is held in memory.

    Several expressions (disjoint parts of the rows, e.g. buckets of entities) run one after the
    other, each into a file of its own, so only one part's intermediate state is held at a time."""
    partial = path.with_suffix(".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    if isinstance(expr, Sequence) and len(expr) > 1:
        for i, part in enumerate(expr):
            parts.append(path.with_name(f"{path.stem}.part{i}.partial"))
            _stream_to_parquet(con, sql(con, part), parts[-1])
        listed = ", ".join(literal(p) for p in parts)
        query = f"SELECT * FROM read_parquet([{listed}])"
    else:
        query = sql(con, expr[0] if isinstance(expr, Sequence) else expr)
    kept = 0
    if path.exists():
        lo = f"'{pd.Timestamp(start).tz_convert('UTC').isoformat()}'::TIMESTAMPTZ"
        hi = f"'{pd.Timestamp(end).tz_convert('UTC').isoformat()}'::TIMESTAMPTZ"
        after = f'"{EVENT_TIMESTAMP}" > {hi}' if include_end else f'"{EVENT_TIMESTAMP}" >= {hi}'
        outside = f'FROM read_parquet({literal(path)}) WHERE "{EVENT_TIMESTAMP}" < {lo} OR {after}'
        kept = con.execute(f"SELECT count(*) {outside}").fetchall()[0][0]
        query = f"SELECT * {outside} UNION ALL BY NAME ({query})"
    total = _stream_to_parquet(con, query, partial)
    partial.replace(path)
    for part in parts:
        part.unlink()
    return total - kept
