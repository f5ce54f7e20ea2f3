"""Batch ingestion: the raw CSV (or the interval's day partitions of a raw-event folder) and the
live event log of an interval as one set of canonical events, each with the lake day it belongs to.

Every line of the CSV is kept (validation judges it): a row belongs to the day of its time, and a
row without a usable time to the window's first or last day. A row of a day partition belongs to
its partition's day, whatever its time: the run of that day reads it and judges it (a time outside
the day is quarantined there), and no other run reads it. An event both in the CSV and in the
log, or logged twice, is kept once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.contract import CATEGORY_ID, EVENT_COLUMNS, EVENT_TIMESTAMP, ITEM_ID, USER_ID
from models.data.event_log import EventLog
from models.data.events import SOURCE_ROW, load_events, partition_day, raw_event_files
from models.data.lake import day_of_rows, days_of
from models.settings import Settings


@dataclass(frozen=True)
class RawEvents:
    events: pd.DataFrame  # canonical columns plus SOURCE_ROW (negative: a row of the event log)
    day: pd.Series  # the lake day of each row
    days: list[pd.Timestamp]  # every day of the interval, with rows or not
    event_log_rows: int
    duplicates_dropped: int


def _as_events(logged: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """Event-log rows in the CSV reader's dtypes, numbered -1, -2, ... as their source rows."""
    logged = logged[list(EVENT_COLUMNS)].astype({c: "Int64" for c in (USER_ID, ITEM_ID, CATEGORY_ID)})
    logged.insert(0, SOURCE_ROW, -np.arange(1, len(logged) + 1))
    # one timestamp type on both sides, or the concatenation falls back to objects
    logged[EVENT_TIMESTAMP] = pd.to_datetime(logged[EVENT_TIMESTAMP], utc=True).astype(
        like[EVENT_TIMESTAMP].dtype
    )
    return logged


def _raw_rows(settings: Settings, days: list[pd.Timestamp]) -> tuple[pd.DataFrame, pd.Series]:
    """The raw rows of the days and the lake day of each: from a CSV, the day of its time; from a
    folder of day partitions, only the days' files, each row on its partition's day. Lines are
    numbered through the files read, in day order."""
    if not Path(settings.raw_events).is_dir():
        events = load_events(settings.raw_events)
        day = day_of_rows(events, settings)
        return events[day.isin(days)], day[day.isin(days)]
    by_name = {f"{d:%Y-%m-%d}": d for d in days}
    frames, owners = [], []
    for file in raw_event_files(settings.raw_events, days):
        frame = load_events(file)
        frame[SOURCE_ROW] += sum(len(f) for f in frames)
        frames.append(frame)
        owners.append(pd.Series(by_name[partition_day(file)], index=frame.index))
    if not frames:
        empty = load_events(settings.raw_events, days=[])
        return empty, day_of_rows(empty, settings)
    events = pd.concat(frames, ignore_index=True)
    return events, pd.concat(owners, ignore_index=True)


def collect_raw_events(settings: Settings, start: datetime, end: datetime) -> RawEvents:
    """The raw rows of the interval's days (see `_raw_rows`) and the event log's events of the
    interval. From a folder of day partitions only the interval's days are read."""
    days = days_of(start, end, settings.timezone)
    events, day = _raw_rows(settings, days)
    logged = EventLog(settings.paths.event_log).read(
        max(start, settings.window_start), min(end, settings.window_end)
    )
    duplicates = 0
    if len(logged):
        logged = _as_events(logged, events)
        before = len(events) + len(logged)
        events = pd.concat([events, logged], ignore_index=True)
        day = pd.concat([day, day_of_rows(logged, settings)], ignore_index=True)
        first_seen = ~events.duplicated(list(EVENT_COLUMNS), keep="first")
        events, day = events[first_seen], day[first_seen]
        duplicates = before - len(events)
    return RawEvents(events, day, days, len(logged), duplicates)
