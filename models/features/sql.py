"""Quoting for the SQL the stages hand to DuckDB: names and strings (paths, mostly) that come from
data or settings, so a quote in them can neither break nor change a query."""

from __future__ import annotations

from pathlib import Path


def quoted(name: str) -> str:
    """An identifier: a column, table or view name."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str | Path) -> str:
    """A string literal, e.g. a file path."""
    return "'" + str(text).replace("'", "''") + "'"
