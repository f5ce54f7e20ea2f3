"""Batch ingestion: the raw CSV (or the interval's day partitions of a raw-event folder) and the
live event log of an interval as one set of canonical events, each with the lake day it belongs to.

Every line of the CSV is kept (validation judges it): a row belongs to the day of its time, and a
row without a usable time to the window's first or last day. A row of a day partition belongs to
its partition's day, whatever its time: the run of that day reads it and judges it (a time outside
the day is quarantined there), and no other run reads it. An event both in the CSV and in the
log, or logged twice, is kept once.

`ingest_to_lake` does this for data of any size: the raw rows are read `CTR_INGEST_BATCH_ROWS` at
a time and appended to their day's partition, so memory is bounded by a batch, not a day.
`collect_raw_events` gives the same rows in one frame, for data that fits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.contract import CATEGORY_ID, EVENT_COLUMNS, EVENT_TIMESTAMP, ITEM_ID, USER_ID
from models.data import lake
from models.data.event_log import EventLog
from models.data.events import (
    SOURCE_ROW,
    iter_events,
    load_events,
    no_events,
    partition_day,
    raw_event_files,
    repeated_rows,
)
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


@dataclass(frozen=True)
class IngestCounts:
    rows: int  # rows written into the interval's partitions
    per_day: dict[str, int]  # rows per lake day (YYYY-MM-DD), every day of the interval
    event_log_rows: int
    duplicates_dropped: int


def _raw_pieces(settings: Settings, days: list[pd.Timestamp]) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
    """The interval's raw rows as (lake day, rows) pieces of at most CTR_INGEST_BATCH_ROWS rows,
    in the order `_raw_rows` gives them within each day, numbered as it numbers them."""
    chunk = settings.ingest_batch_rows
    if not Path(settings.raw_events).is_dir():
        wanted = set(days)
        for _, events in iter_events(settings.raw_events, settings.user_id_key, chunk):
            day = day_of_rows(events, settings)
            for owner in day.unique():
                if owner in wanted:
                    yield owner, events[(day == owner).to_numpy()]
        return
    by_name = {f"{d:%Y-%m-%d}": d for d in days}
    for file, events in iter_events(settings.raw_events, settings.user_id_key, chunk, days):
        yield by_name[partition_day(file)], events


def ingest_to_lake(settings: Settings, start: datetime, end: datetime) -> IngestCounts:
    """Write the interval's raw rows and logged events (as `collect_raw_events` selects them) into
    the `ingested` partitions of its days, CTR_INGEST_BATCH_ROWS rows at a time. Every partition is
    renamed into place only once all of them are complete: a failure leaves the older ones as they
    were. With logged events, a row repeating an earlier one of its day is dropped (counted)."""
    days = days_of(start, end, settings.timezone)
    template = no_events()
    logged = EventLog(settings.paths.event_log).read(
        max(start, settings.window_start), min(end, settings.window_end)
    )
    writers = {d: lake.partition_writer(settings, lake.INGESTED, d, template) for d in days}
    try:
        for day, rows in _raw_pieces(settings, days):
            writers[day].write(rows)
        duplicates = 0
        if len(logged):
            logged = _as_events(logged, template).astype(template.dtypes.to_dict())
            logged_day = day_of_rows(logged, settings)
            for day, writer in writers.items():
                writer.write(logged[(logged_day == day).to_numpy()])
                duplicates += _drop_repeats(settings, writer, template)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    per_day = {f"{d:%Y-%m-%d}": writers[d].rows for d in days}
    for writer in writers.values():
        writer.commit()
    return IngestCounts(sum(per_day.values()), per_day, len(logged), duplicates)


def _drop_repeats(settings: Settings, writer: lake.PartitionWriter, template: pd.DataFrame) -> int:
    """Rewrite a written, not yet committed partition without the rows repeating an earlier one of
    it (an event both in the raw data and the log, or logged twice); the rows dropped."""
    writer.close()

    def chunks() -> Iterator[pd.DataFrame]:
        return lake.iter_parquet(writer.partial, settings.ingest_batch_rows)

    repeats = repeated_rows(chunks).index.to_numpy()
    if not len(repeats):
        return 0
    kept = lake.PartitionWriter(writer.partial, template, partial_suffix=".kept")
    offset = 0
    for chunk in chunks():
        position = offset + pd.RangeIndex(len(chunk))
        kept.write(chunk[~position.isin(repeats)])
        offset += len(chunk)
    kept.commit()
    writer.rows -= len(repeats)
    return len(repeats)
