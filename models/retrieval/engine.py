"""The DuckDB connection the candidate build runs on, bounded so it spills to disk instead of
growing past its memory limit: the batch feature job's limits (`EngineConfig`, from
CTR_DUCKDB_MEMORY_LIMIT, CTR_DUCKDB_THREADS, CTR_DUCKDB_TEMP_DIR and CTR_DUCKDB_MAX_TEMP_SIZE in
the settings), with the order the candidate lists need kept."""

from __future__ import annotations

from pathlib import Path

import duckdb

from models.features.engine import EngineConfig


def connect(limits: EngineConfig) -> duckdb.DuckDBPyConnection:
    """An in-memory database under `limits`; results keep the order their ORDER BY gives."""
    con = duckdb.connect(":memory:")
    con.execute("SET memory_limit = ?", [limits.memory_limit])
    con.execute("SET threads = ?", [limits.threads])
    if limits.temp_directory is not None:
        Path(limits.temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute("SET temp_directory = ?", [str(limits.temp_directory)])
    if limits.max_temp_size is not None:
        con.execute("SET max_temp_directory_size = ?", [limits.max_temp_size])
    con.execute("SET preserve_insertion_order = true")
    return con
