"""Ingestion: raw behaviour logs in, canonical events (feature_repo/contract.py) out.

Nothing is dropped here. Values that do not parse become nulls, which validation quarantines,
and every row keeps its line number in the source file so a quarantined row can be found again.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from feature_repo.contract import BEHAVIOR, EVENT_COLUMNS, EVENT_TIMESTAMP, ID_COLUMNS, RAW_COLUMNS

SOURCE_ROW = "source_row"


def read_raw_events(path: Path | str) -> pd.DataFrame:
    """Read a headerless Taobao UserBehavior CSV (plain or gzip) as strings, one row per line."""
    raw = pd.read_csv(
        path,
        header=None,
        names=list(RAW_COLUMNS),
        dtype=str,
        keep_default_na=False,
        # A line with extra fields is kept with its timestamp blanked, so validation quarantines it.
        on_bad_lines=lambda fields: [*fields[:4], ""],
        engine="python",
    )
    raw.insert(0, SOURCE_ROW, range(1, len(raw) + 1))
    return raw


def to_canonical(raw: pd.DataFrame) -> pd.DataFrame:
    """Parse ids as nullable integers and Unix seconds as UTC timestamps."""
    events = pd.DataFrame({SOURCE_ROW: raw[SOURCE_ROW].astype("int64")})
    for column in ID_COLUMNS:
        events[column] = pd.to_numeric(raw[column].str.strip(), errors="coerce").astype("Int64")
    behavior = raw[BEHAVIOR].astype("string").str.strip().str.lower()
    events[BEHAVIOR] = behavior.mask(behavior == "")
    seconds = pd.to_numeric(raw["timestamp"].str.strip(), errors="coerce")
    events[EVENT_TIMESTAMP] = pd.to_datetime(seconds, unit="s", utc=True, errors="coerce")
    return events[[SOURCE_ROW, *EVENT_COLUMNS]]


def load_events(path: Path | str) -> pd.DataFrame:
    return to_canonical(read_raw_events(path))
