"""The event lake: one Parquet file per stage and local day, `lake/<stage>/date=YYYY-MM-DD/`.

A day is the unit of work of the feature pipeline: a run for a data interval rewrites exactly the
partitions of its days (written whole and renamed into place), so re-running or backfilling a
date range gives the same files and never duplicates a row. Readers see whole partitions only.
A partition is written batch by batch (`PartitionWriter`, one row group each) and read batch by
batch (`iter_partition`), so a day of any size passes through in bounded memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from feature_repo.contract import EVENT_COLUMNS, EVENT_TIMESTAMP
from models.features.store import with_microsecond_stamps, write_offline
from models.settings import Settings

INGESTED = "ingested"
ACCEPTED = "accepted"
_FILE = "events.parquet"


def days_of(start: datetime, end: datetime, timezone: str) -> list[pd.Timestamp]:
    """The local midnights of the days in [start, end): the partitions an interval covers, the days
    of the feature job's grid."""
    from models.features.batch import DayGrid

    return list(DayGrid.covering(pd.Timestamp(start), pd.Timestamp(end), timezone).days)


def partition_name(day: pd.Timestamp) -> str:
    return f"date={day:%Y-%m-%d}"


def partition_path(settings: Settings, stage: str, day: pd.Timestamp) -> Path:
    return settings.lake_dir / stage / partition_name(day) / _FILE


def day_of_rows(events: pd.DataFrame, settings: Settings) -> pd.Series:
    """Each row's partition: the local day of its time. A row whose time is missing or outside the
    configured window goes to the window's first (too early) or last (too late, or no time) day, so
    validation of that day judges it and no input row is left without a partition."""
    days = days_of(settings.window_start, settings.window_end, settings.timezone)
    first, last = days[0], days[-1]
    stamps = events[EVENT_TIMESTAMP]
    local = stamps.dt.tz_convert(settings.timezone).dt.normalize()
    local = local.mask(stamps < pd.Timestamp(settings.window_start), first)
    return local.mask(stamps.isna() | (stamps >= pd.Timestamp(settings.window_end)), last)


def write_partition(frame: pd.DataFrame, settings: Settings, stage: str, day: pd.Timestamp) -> Path:
    return write_offline(frame.reset_index(drop=True), partition_path(settings, stage, day))


class PartitionWriter:
    """A partition written batch by batch, then renamed into place by `commit` (readers see the
    old file or the new one, never half). Timestamps are stored as `write_offline` stores them
    (microseconds); the schema, pandas dtypes included, is the template frame's."""

    def __init__(self, path: Path, template: pd.DataFrame, partial_suffix: str = ".partial") -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.partial, self.rows = path, path.with_suffix(partial_suffix), 0
        self._closed = False
        self._schema = pa.Table.from_pandas(_as_stored(template.head(0)), preserve_index=False).schema
        self._writer: Any = pq.ParquetWriter(self.partial, self._schema)

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa

        if len(frame):
            table = pa.Table.from_pandas(_as_stored(frame), schema=self._schema, preserve_index=False)
            self._writer.write_table(table)
            self.rows += len(frame)

    def close(self) -> None:
        """Finish the partial file without renaming it into place."""
        if not self._closed:
            self._writer.close()
            self._closed = True

    def commit(self) -> Path:
        self.close()
        self.partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Drop what was written; a partition folder left empty goes too, so that no reader takes
        the day for one that has a partition."""
        self.close()
        self.partial.unlink(missing_ok=True)
        _remove_if_empty(self.path.parent)


def partition_writer(
    settings: Settings, stage: str, day: pd.Timestamp, template: pd.DataFrame
) -> PartitionWriter:
    return PartitionWriter(partition_path(settings, stage, day), template)


def _as_stored(frame: pd.DataFrame) -> pd.DataFrame:
    return with_microsecond_stamps(frame.reset_index(drop=True))


def partition_rows(settings: Settings, stage: str, day: pd.Timestamp) -> int:
    """Rows of a partition from its metadata (0 when absent)."""
    import pyarrow.parquet as pq

    path = partition_path(settings, stage, day)
    return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


def iter_partition(
    settings: Settings, stage: str, day: pd.Timestamp, batch_rows: int
) -> Iterator[pd.DataFrame]:
    """A partition's rows in order, `batch_rows` at a time, as `read_events` would give them
    (same dtypes); a missing or empty partition gives one empty batch."""

    path = partition_path(settings, stage, day)
    if not path.exists():
        yield _concat([])
        return
    yield from iter_parquet(path, batch_rows)


def iter_parquet(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    """A Parquet file's rows in order, `batch_rows` at a time (at least one batch, maybe empty)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    pending: list[Any] = []
    held = given = 0
    for batch in file.iter_batches(batch_size=batch_rows):
        pending.append(batch)
        held += batch.num_rows
        while held >= batch_rows:
            table = pa.Table.from_batches(pending, schema=file.schema_arrow)
            yield table.slice(0, batch_rows).to_pandas()
            rest = table.slice(batch_rows)
            pending, held, given = rest.to_batches(), rest.num_rows, given + 1
    if held or not given:
        yield pa.Table.from_batches(pending, schema=file.schema_arrow).to_pandas()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


def remove_partition(settings: Settings, stage: str, day: pd.Timestamp) -> bool:
    path = partition_path(settings, stage, day)
    removed = path.exists()
    if removed:
        path.unlink()
    _remove_if_empty(path.parent)
    return removed


def partitions(settings: Settings, stage: str) -> list[pd.Timestamp]:
    """The days present for a stage, oldest first."""
    folder = settings.lake_dir / stage
    found = [
        pd.Timestamp(p.parent.name.removeprefix("date="), tz=settings.timezone)
        for p in folder.glob(f"date=*/{_FILE}")
    ]
    return sorted(found)


def missing_days(settings: Settings, stage: str, start: datetime, end: datetime) -> list[str]:
    present = set(partitions(settings, stage))
    return [f"{d:%Y-%m-%d}" for d in days_of(start, end, settings.timezone) if d not in present]


def read_events(
    settings: Settings, stage: str = ACCEPTED, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """The stage's events of the partitions whose day overlaps [start, end), whole days."""
    lo = pd.Timestamp(start).tz_convert(settings.timezone).normalize() if start is not None else None
    days = [d for d in partitions(settings, stage) if (lo is None or d >= lo) and (end is None or d < end)]
    return _concat(partition_path(settings, stage, d) for d in days)


def _concat(paths: Iterable[Path]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        empty = {c: pd.Series(dtype="Int64") for c in EVENT_COLUMNS}
        empty[EVENT_TIMESTAMP] = pd.Series(dtype="datetime64[us, UTC]")
        return pd.DataFrame(empty)
    return pd.concat(frames, ignore_index=True)
