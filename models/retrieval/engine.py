"""The DuckDB connection the candidate build runs on, bounded so it spills to disk instead of
growing past its memory limit.

Its three limits come from CTR_DUCKDB_MEMORY_LIMIT (default "4GB"), CTR_DUCKDB_THREADS (default:
the machine's cores) and CTR_DUCKDB_TEMP_DIR (default `<CTR_DATA_DIR>/tmp/duckdb`), read here
until the shared settings hold them under the same names and defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb


@dataclass(frozen=True)
class DuckDBLimits:
    """How much memory and how many threads a query may use, and where it spills."""

    memory_limit: str
    threads: int
    temp_dir: Path


def duckdb_limits(data_dir: Path) -> DuckDBLimits:
    """The limits from the environment, with the documented defaults."""
    memory = os.environ.get("CTR_DUCKDB_MEMORY_LIMIT", "").strip() or "4GB"
    threads_raw = os.environ.get("CTR_DUCKDB_THREADS", "").strip()
    try:
        threads = int(threads_raw) if threads_raw else (os.cpu_count() or 1)
    except ValueError:
        raise ValueError(f"CTR_DUCKDB_THREADS={threads_raw!r}: expected a whole number") from None
    if threads < 1:
        raise ValueError(f"CTR_DUCKDB_THREADS={threads}: expected at least 1")
    temp = os.environ.get("CTR_DUCKDB_TEMP_DIR", "").strip()
    return DuckDBLimits(memory, threads, Path(temp) if temp else Path(data_dir) / "tmp" / "duckdb")


def connect(limits: DuckDBLimits) -> duckdb.DuckDBPyConnection:
    """An in-memory database under `limits`; results keep the order their ORDER BY gives."""
    limits.temp_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:")
    con.execute("SET memory_limit = ?", [limits.memory_limit])
    con.execute("SET threads = ?", [limits.threads])
    con.execute("SET temp_directory = ?", [str(limits.temp_dir)])
    con.execute("SET preserve_insertion_order = true")
    return con
