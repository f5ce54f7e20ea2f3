"""Live events in: each batch is appended to the offline event log, then the users' short-term state
is merged and pushed to the online store through the Feast push source.

Duplicate deliveries do not double-count: an event's id is derived from its content
(models.data.events.event_ids); events already in a user's state are neither pushed nor logged again.
An event older than everything a full state keeps ("late") cannot be told from a redelivery of an
evicted one: it is logged, not pushed, and the batch job drops any id it reads twice.

One writer per user at a time: the service runs one worker and serialises batches with a lock.
With CTR_USER_ID_KEY set, user ids are pseudonymised (models/data/privacy.py) before anything is read,
logged or pushed: the event log and the online store hold pseudonyms only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from feature_repo.contract import (
    BEHAVIOR,
    BEHAVIORS,
    EVENT_COLUMNS,
    EVENT_ID,
    EVENT_TIMESTAMP,
    ID_COLUMNS,
    RECENT_EVENT_IDS,
    RECENT_EVENTS,
    RECENT_FEATURES,
    RECENT_PUSH_SOURCE,
    RECENT_STATE_DELAY,
    RECENT_TIMESTAMPS,
    RECENT_VIEW,
    USER_ID,
)
from models.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

INGESTED_AT = "ingested_at"


class StoreCalls(Protocol):
    """What runs the ingestor's store calls: fn(*args), or an exception saying why not."""

    def call(self, fn: Callable[..., Any], *args: Any) -> Any: ...


_LOG_COLUMNS = [*EVENT_COLUMNS, EVENT_ID, INGESTED_AT]


def canonical(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Events as dicts (user_id, item_id, category_id, behavior, event_timestamp) to the canonical
    frame; raises ValueError naming the first bad field."""
    frame = pd.DataFrame(list(events), columns=list(EVENT_COLUMNS))
    for column in ID_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any() or (values < 0).any() or (values % 1 != 0).any():
            raise ValueError(f"{column} must be a non-negative integer")
        frame[column] = values.astype("int64")
    if not frame[BEHAVIOR].isin(BEHAVIORS).all():
        raise ValueError(f"{BEHAVIOR} must be one of {', '.join(BEHAVIORS)}")
    stamps = frame[EVENT_TIMESTAMP]
    if pd.api.types.is_numeric_dtype(stamps):
        frame[EVENT_TIMESTAMP] = pd.to_datetime(stamps, unit="s", utc=True)
    else:
        frame[EVENT_TIMESTAMP] = pd.to_datetime(stamps, utc=True, format="ISO8601")
    return frame


class EventLog:
    """Append-only Parquet files under `root`, partitioned by the events' UTC date (``date=YYYY-MM-DD``).

    Each append writes whole new files and makes them visible with an atomic rename after fsync, so a
    reader never sees half a batch and an acknowledged batch survives a crash.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def append(self, events: pd.DataFrame) -> list[Path]:
        if events.empty:
            return []
        written = []
        stamp = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        frame = events.assign(**{EVENT_TIMESTAMP: events[EVENT_TIMESTAMP].dt.as_unit("us")})
        for day, part in frame.groupby(frame[EVENT_TIMESTAMP].dt.strftime("%Y-%m-%d"), sort=True):
            folder = self.root / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"part-{stamp}.parquet"
            partial = folder / f".{target.name}.partial"
            part[_LOG_COLUMNS].to_parquet(partial, index=False)
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            partial.replace(target)
            directory = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            written.append(target)
        return written

    def files(self, start: datetime | None = None, end: datetime | None = None) -> list[Path]:
        """The files of the partitions that can hold events with start <= time < end."""
        files = []
        for folder in sorted(self.root.glob("date=*")):
            day = pd.Timestamp(folder.name.removeprefix("date="), tz="UTC")
            if (start is not None and day + pd.Timedelta(days=1) <= start) or (
                end is not None and day >= end
            ):
                continue
            files += sorted(folder.glob("part-*.parquet"))
        return files

    def read(self, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        """Logged events with start <= time < end (whole partitions outside are not opened),
        each id once."""
        files = self.files(start, end)
        if not files:
            return pd.DataFrame({c: pd.Series(dtype="int64") for c in _LOG_COLUMNS})
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        inside = pd.Series(True, index=frame.index)
        if start is not None:
            inside &= frame[EVENT_TIMESTAMP] >= start
        if end is not None:
            inside &= frame[EVENT_TIMESTAMP] < end
        return frame[inside].drop_duplicates(EVENT_ID).reset_index(drop=True)


@dataclass(frozen=True)
class IngestResult:
    received: int
    accepted: int  # new events: logged and applied to the online state
    duplicates: int  # already in the user's state, or repeated in the batch: ignored
    late: int  # older than all RECENT_EVENTS events the state keeps: logged only
    users_updated: int
    deferred: int = 0  # logged, and applied to the online state once the store is reachable again
    pending: int = 0  # events of this and earlier batches still waiting for the online store

    def as_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


class PendingEvents:
    """Logged events the online store has not taken yet (it was down): whole Parquet files under
    `root`, oldest first, each removed once applied. They are in the event log already, so the batch
    job has them whatever happens here."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, events: pd.DataFrame) -> None:
        if events.empty:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        partial = target.with_name(f".{target.name}.partial")
        events[[*EVENT_COLUMNS, EVENT_ID]].to_parquet(partial, index=False)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        partial.replace(target)

    def files(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def count(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(f).num_rows for f in self.files())


class Ingestor:
    """Event log + online push for one store; thread-safe.

    When the online store cannot be read or written, a batch is still logged (nothing is lost) and
    kept as pending; pending batches are applied, oldest first, before the next batch and by
    `retry_pending` (the ingest service calls it every CTR_INGEST_RETRY_S) once the store is back.
    """

    def __init__(
        self, settings: Settings, store: FeatureStore | None = None, guard: StoreCalls | None = None
    ) -> None:
        from models.features.store import open_store

        self.store = store or open_store(settings)
        self.guard = guard
        self.log = EventLog(settings.paths.event_log)
        self.pending = PendingEvents(settings.paths.pending_events)
        self.user_id_key = settings.user_id_key
        self.store_error = ""  # why the last store call failed; empty while the store works
        self._lock = threading.Lock()
        self._refs = [f"{RECENT_VIEW}:{name}" for name in RECENT_FEATURES]

    def current_state(self, users: list[int]) -> dict[int, tuple[dict[str, list[int]] | None, int]]:
        """Per user: the stored lists (None for a user not seen yet) and the state's stamp (Unix s)."""
        response = self.store.get_online_features(
            features=self._refs, entity_rows=[{USER_ID: u} for u in users]
        ).to_dict(include_event_timestamps=True)
        states = {}
        for i, user in enumerate(users):
            ids = response[RECENT_EVENT_IDS][i]
            if ids is None:
                states[user] = (None, 0)
            else:
                lists = {name: list(response[name][i] or []) for name in RECENT_FEATURES}
                states[user] = (lists, int(response[f"{RECENT_EVENT_IDS}__ts"][i] or 0))
        return states

    def _plan(self, unique: pd.DataFrame) -> tuple[list[dict], pd.DataFrame, pd.DataFrame]:
        """Read the users' states: the rows to push, the new events and the late ones (each in
        user order, a user's events in batch order)."""
        import numpy as np

        from models.features.batch import merge_recent_columns, recent_columns

        if unique.empty:
            return [], unique, unique
        user_ids = unique[USER_ID].to_numpy(np.int64)
        order = np.argsort(user_ids, kind="stable")
        columns = {name: values[order] for name, values in recent_columns(unique).items()}
        users, starts = np.unique(user_ids[order], return_index=True)
        states = self._call(self.current_state, users.tolist())
        rows, fresh, late = [], [], []
        delay = int(RECENT_STATE_DELAY.total_seconds())
        for user, lo, hi in zip(users.tolist(), starts, [*starts[1:], len(order)], strict=True):
            state, stamped = states[user]
            ids, seconds = columns[RECENT_EVENT_IDS][lo:hi], columns[RECENT_TIMESTAMPS][lo:hi]
            keep = ~np.isin(ids, state[RECENT_EVENT_IDS]) if state else np.ones(hi - lo, dtype=bool)
            if state and len(state[RECENT_EVENT_IDS]) >= RECENT_EVENTS:
                is_late = keep & (seconds < min(state[RECENT_TIMESTAMPS]))
                late.append(order[lo:hi][is_late])
                keep &= ~is_late
            if not keep.any():
                continue
            fresh.append(order[lo:hi][keep])
            merged = merge_recent_columns(state, {name: c[lo:hi][keep] for name, c in columns.items()})
            if merged is None:
                continue
            # Later than the stored stamp, so that every store keeps the newer state.
            stamp = max(max(merged[RECENT_TIMESTAMPS]) + delay, stamped + 1)
            rows.append({USER_ID: user, EVENT_TIMESTAMP: pd.Timestamp(stamp, unit="s", tz="UTC"), **merged})
        new_events = unique.iloc[np.concatenate(fresh)] if fresh else unique.iloc[:0]
        late_events = unique.iloc[np.concatenate(late)] if late else unique.iloc[:0]
        return rows, new_events.reset_index(drop=True), late_events.reset_index(drop=True)

    def _push(self, rows: list[dict]) -> None:
        from models.features.store import push_online

        if rows:
            self._call(push_online, self.store, RECENT_PUSH_SOURCE, pd.DataFrame(rows))

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store call, through the guard when there is one (a deadline, and no retry storm)."""
        return self.guard.call(fn, *args) if self.guard is not None else fn(*args)

    def _store_failed(self, exc: Exception) -> None:
        self.store_error = f"{type(exc).__name__}: {exc}"[:300]
        logger.warning("online store unavailable, events are logged and kept for later: %s", self.store_error)

    def _apply_pending(self) -> bool:
        """Apply pending batches, oldest first; False when the store still fails (they stay)."""
        for path in self.pending.files():
            events = pd.read_parquet(path)
            events[EVENT_TIMESTAMP] = pd.to_datetime(events[EVENT_TIMESTAMP], utc=True)
            try:
                rows, _, _ = self._plan(events)
                self._push(rows)
            except Exception as exc:  # any store client error: refused, reset, timed out
                self._store_failed(exc)
                return False
            path.unlink()
        self.store_error = ""
        return True

    def retry_pending(self) -> int:
        """Apply what waits for the online store, if it is back; returns the events still pending."""
        if not self.pending.files():
            return 0
        try:  # is it back? asked outside the lock, so that new batches are not held up meanwhile
            self._call(self.current_state, [0])
        except Exception as exc:
            self._store_failed(exc)
            return self.pending.count()
        with self._lock:
            self._apply_pending()
            return self.pending.count()

    def ingest(self, events: pd.DataFrame) -> IngestResult:
        """Log and apply canonical events that carry the shop's user ids."""
        from models.data.events import event_ids
        from models.data.privacy import pseudonymise

        events = events.assign(**{USER_ID: pseudonymise(events[USER_ID], self.user_id_key)})
        events = events.assign(**{EVENT_ID: event_ids(events)})
        unique = events.drop_duplicates(EVENT_ID)
        now = pd.Timestamp.now(tz="UTC")
        with self._lock:
            planned = None
            if self._apply_pending():  # older batches first; False: the store still fails
                try:
                    planned = self._plan(unique)
                except Exception as exc:
                    self._store_failed(exc)
            if planned is None:
                # Without the users' states, redeliveries cannot be told apart: log the whole batch
                # (the batch job reads each id once) and apply it when the store is back.
                self.log.append(unique.assign(**{INGESTED_AT: now}))
                self.pending.add(unique)
                return IngestResult(
                    received=len(events),
                    accepted=0,
                    duplicates=len(events) - len(unique),
                    late=0,
                    users_updated=0,
                    deferred=len(unique),
                    pending=self.pending.count(),
                )
            rows, new_events, late_events = planned
            to_log = pd.concat([new_events, late_events], ignore_index=True)
            self.log.append(to_log.assign(**{INGESTED_AT: now}))
            try:
                self._push(rows)
            except Exception as exc:
                self._store_failed(exc)
                self.pending.add(new_events)
                deferred = len(new_events)
            else:
                deferred = 0
            return IngestResult(
                received=len(events),
                accepted=len(new_events) - deferred,
                duplicates=len(events) - len(new_events) - len(late_events),
                late=len(late_events),
                users_updated=0 if deferred else len(rows),
                deferred=deferred,
                pending=self.pending.count(),
            )
