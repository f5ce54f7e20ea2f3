"""Batch ingestion: the raw CSV (or the interval's day partitions of a raw-event folder) and the
live event log of an interval as one set of canonical events, each with the lake day it belongs to.

Every line of the CSV is kept (validation judges it): a row belongs to the day of its time, and a
row without a usable time to the window's first or last day. An event both in the CSV and in the
log, or logged twice, is kept once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from feature_repo.contract import CATEGORY_ID, EVENT_COLUMNS, EVENT_TIMESTAMP, ITEM_ID, USER_ID
from models.data.event_log import EventLog
from models.data.events import SOURCE_ROW, load_events
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


def collect_raw_events(settings: Settings, start: datetime, end: datetime) -> RawEvents:
    """The CSV's rows of the interval's days and the event log's events of the interval. From a
    folder of day partitions only the interval's days are read."""
    days = days_of(start, end, settings.timezone)
    events = load_events(settings.raw_events, days=days)
    day = day_of_rows(events, settings)
    events, day = events[day.isin(days)], day[day.isin(days)]
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
