"""The DuckDB connection the candidate build runs on, bounded so it spills to disk instead of
growing past its memory limit: the same limits as the batch feature job's (CTR_DUCKDB_MEMORY_LIMIT,
CTR_DUCKDB_THREADS, CTR_DUCKDB_TEMP_DIR in the settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from models.settings import Settings


@dataclass(frozen=True)
class DuckDBLimits:
    """How much memory and how many threads a query may use, and where it spills."""

    memory_limit: str
    threads: int
    temp_dir: Path


def duckdb_limits(settings: Settings) -> DuckDBLimits:
    """The settings' limits."""
    return DuckDBLimits(settings.duckdb_memory_limit, settings.duckdb_threads, settings.duckdb_temp_dir)


def connect(limits: DuckDBLimits) -> duckdb.DuckDBPyConnection:
    """An in-memory database under `limits`; results keep the order their ORDER BY gives."""
    limits.temp_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:")
    con.execute("SET memory_limit = ?", [limits.memory_limit])
    con.execute("SET threads = ?", [limits.threads])
    con.execute("SET temp_directory = ?", [str(limits.temp_dir)])
    con.execute("SET preserve_insertion_order = true")
    return con
