"""Batch feature job: daily snapshots per user, item and category, and the per-event short-term state.

A snapshot stamped at local midnight D aggregates the complete days before D, so a point-in-time
join never hands a training row an event from its own future. An entity gets a row at the
midnight before its first event (all zeros, which is true then), a row every midnight while it
has activity in its longest window, and one all-zero row when that window empties. So every
event of an entity has a snapshot at or before it, and the offline store and the online store
(which keeps the last row) agree on every entity.

The short-term state (``recent_activity``) is the user's last RECENT_EVENTS events after each
event, stamped RECENT_STATE_DELAY after it; the ingest service builds the same state online with
``merge_recent``.

The features are defined once, as Ibis expressions (models/features/definitions.py), and run on
DuckDB (models/features/engine.py): `build_interval` reads the lake's Parquet partitions and
writes the offline sources out of core; the functions over a DataFrame run the same definitions
on events already in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.contract import (
    BEHAVIOR,
    BEHAVIORS,
    CATEGORY_ID,
    CATEGORY_VIEW,
    EVENT_ID,
    EVENT_TIMESTAMP,
    ITEM_ID,
    ITEM_VIEW,
    RECENCY_CAP_DAYS,
    RECENT_BEHAVIORS,
    RECENT_CATEGORIES,
    RECENT_EVENT_IDS,
    RECENT_EVENTS,
    RECENT_FEATURES,
    RECENT_ITEMS,
    RECENT_STATE_DELAY,
    RECENT_TIMESTAMPS,
    RECENT_VIEW,
    USER_ID,
    USER_VIEW,
    WINDOWS_DAYS,
)
from models.data.events import event_ids, unix_seconds

if TYPE_CHECKING:
    import duckdb
    import ibis.expr.types as ir

    from models.features.engine import EngineConfig

LONGEST_WINDOW = max(WINDOWS_DAYS, key=WINDOWS_DAYS.__getitem__)


@dataclass(frozen=True)
class DayGrid:
    """The local days a batch covers; snapshot k is stamped at the start of day k, k = 0..len(days)."""

    days: pd.DatetimeIndex  # local midnights, tz-aware

    @classmethod
    def covering(cls, start: pd.Timestamp, end: pd.Timestamp, timezone: str) -> DayGrid:
        first = pd.Timestamp(start).tz_convert(timezone).normalize()
        last = (pd.Timestamp(end).tz_convert(timezone) - pd.Timedelta(microseconds=1)).normalize()
        return cls(pd.date_range(first, last, freq="D"))

    def day_index(self, timestamps: pd.Series) -> np.ndarray:
        local = timestamps.dt.tz_convert(self.days.tz).dt.normalize()
        return self.days.get_indexer(local)

    @property
    def snapshot_times(self) -> pd.DatetimeIndex:
        return self.days.append(self.days[-1:] + pd.Timedelta(days=1)).tz_convert("UTC")

    @property
    def snapshot_seconds(self) -> np.ndarray:
        return self.snapshot_times.as_unit("s").asi8.astype(np.float64)

    def definition_grid(self):
        """The grid as the definitions take it (Unix seconds of each snapshot)."""
        from models.features.definitions import Grid

        return Grid(tuple(int(s) for s in self.snapshot_times.as_unit("s").asi8))


def new_item_features() -> dict[str, float]:
    """The item view's values for an item with no events yet, by the same formulas as the job: zero
    counts, the prior conversion rate, a flat trend, last event beyond the cap. Its category and the
    category's numbers stay unknown. The ranker gives these to candidates the store does not know."""
    from models.features.definitions import conversion, trend

    values = {f"item_{b}_{w}": 0.0 for w in WINDOWS_DAYS for b in BEHAVIORS}
    values["item_conversion_7d"] = float(conversion(0.0, 0.0))
    values["item_trend"] = float(trend(0.0, 0.0))
    values["item_days_since_last_event"] = RECENCY_CAP_DAYS
    return values


# --- Short-term state ------------------------------------------------------------------------------


def recent_columns(events: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-event values the state keeps, in RECENT_FEATURES order (the events' EVENT_ID column
    when they carry one, else the ids computed)."""
    behavior = pd.Categorical(events[BEHAVIOR], categories=list(BEHAVIORS)).codes.astype(np.int64)
    ids = events[EVENT_ID].to_numpy(np.int64) if EVENT_ID in events else event_ids(events)
    return {
        RECENT_EVENT_IDS: ids,
        RECENT_TIMESTAMPS: unix_seconds(events[EVENT_TIMESTAMP]),
        RECENT_ITEMS: events[ITEM_ID].to_numpy(np.int64),
        RECENT_CATEGORIES: events[CATEGORY_ID].to_numpy(np.int64),
        RECENT_BEHAVIORS: behavior,
    }


def merge_recent(state: dict[str, list[int]] | None, events: pd.DataFrame) -> dict[str, list[int]] | None:
    """One user's state after new events: what the online store should hold, or None if unchanged.

    `state` is the stored RECENT_FEATURES lists (None for a user never seen). Events already in it
    (same id) are ignored, so delivering an event twice changes nothing.
    """
    return merge_recent_columns(state, recent_columns(events))


def merge_recent_columns(
    state: dict[str, list[int]] | None, new: dict[str, np.ndarray]
) -> dict[str, list[int]] | None:
    """`merge_recent` of events given as `recent_columns` arrays, so that a caller holding many
    users' events converts them once, not once per user."""
    old = {name: list(state.get(name) or []) for name in RECENT_FEATURES} if state else None
    known = set(old[RECENT_EVENT_IDS]) if old else set()
    fresh, seen = [], set(known)
    for i, event_id in enumerate(new[RECENT_EVENT_IDS].tolist()):
        if event_id not in seen:
            seen.add(event_id)
            fresh.append(i)
    if not fresh:
        return None
    merged = {
        name: np.r_[np.asarray(old[name] if old else [], dtype=np.int64), new[name][fresh]]
        for name in RECENT_FEATURES
    }
    order = np.lexsort((merged[RECENT_EVENT_IDS], merged[RECENT_TIMESTAMPS]))[-RECENT_EVENTS:]
    result = {name: merged[name][order].tolist() for name in RECENT_FEATURES}
    if old and result == old:
        return None
    return result


# What a day's snapshots depend on: the longest window, one day more for the row where a window
# empties, and the next day for the row the midnight before an entity's first activity.
SNAPSHOT_LOOKBACK = pd.Timedelta(days=WINDOWS_DAYS[LONGEST_WINDOW] + 1)
SNAPSHOT_LOOKAHEAD = pd.Timedelta(days=1)
# The short-term state keeps the last RECENT_EVENTS events; events older than this are not carried.
RECENT_LOOKBACK = pd.Timedelta(days=28)
# Users are independent of each other: past this many events read, the user snapshots run per hash
# bucket of users, so that one bucket's (user, category, snapshot) counts fit in memory instead of
# spilling to disk.
USER_BUCKET_EVENTS = 25_000_000


# --- Running the definitions ----------------------------------------------------------------

Build = Callable[["ir.Table", object], "ir.Table"]


def _builds() -> dict[str, Build]:
    from models.features import definitions

    return {
        USER_VIEW: definitions.user_snapshots,
        ITEM_VIEW: definitions.item_snapshots,
        CATEGORY_VIEW: definitions.category_snapshots,
    }


def snapshot_rows(
    view: str, grid: DayGrid, start: pd.Timestamp, end: pd.Timestamp, events: ir.Table | None = None
):
    """The definition of a view's rows stamped in [start, end], over `events` on `grid`."""
    from models.features.definitions import events_table

    events = events_table() if events is None else events
    expr = _builds()[view](events, grid.definition_grid())
    stamp = expr[EVENT_TIMESTAMP]
    return expr.filter(
        (stamp >= pd.Timestamp(start).tz_convert("UTC")) & (stamp <= pd.Timestamp(end).tz_convert("UTC"))
    )


def snapshot_grid(start: pd.Timestamp, end: pd.Timestamp, timezone: str) -> DayGrid:
    """The days whose events the snapshots stamped in [start, end] depend on."""
    return DayGrid.covering(
        pd.Timestamp(start) - SNAPSHOT_LOOKBACK, pd.Timestamp(end) + SNAPSHOT_LOOKAHEAD, timezone
    )


def recent_rows(start: pd.Timestamp, end: pd.Timestamp, events: ir.Table | None = None):
    """The definition of the short-term states after the events of [start, end), from events that
    the engine bounds to [start - RECENT_LOOKBACK, end)."""
    from models.features.definitions import events_table
    from models.features.definitions import recent_activity as definition

    delay = int(RECENT_STATE_DELAY.total_seconds())
    events = events_table() if events is None else events
    lo, hi = (int(pd.Timestamp(t).timestamp()) + delay for t in (start, end))
    return definition(events, lo, hi)


def _to_pandas(table: pa.Table, lists_only: bool = True) -> pd.DataFrame:
    if lists_only:
        return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _run_on_frame(events: pd.DataFrame, expr_of: Callable[[], ir.Table]) -> pa.Table:
    from models.features import engine

    with engine.connect() as con:
        engine.bind_frame(con, events)
        return engine.to_arrow(con, expr_of())


def _snapshots_of_frame(view: str, events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    from models.features.definitions import events_table

    build = _builds()[view]
    table = _run_on_frame(events, lambda: build(events_table(), grid.definition_grid()))
    return _to_pandas(table)


def user_snapshots(events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    return _snapshots_of_frame(USER_VIEW, events, grid)


def item_snapshots(events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    """Item counts, with the item's category and its numbers beside them (items are sparse, categories
    are not)."""
    return _snapshots_of_frame(ITEM_VIEW, events, grid)


def category_snapshots(events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    return _snapshots_of_frame(CATEGORY_VIEW, events, grid)


_VIEW_OF = {user_snapshots: USER_VIEW, item_snapshots: ITEM_VIEW, category_snapshots: CATEGORY_VIEW}


def recent_activity_schema() -> pa.Schema:
    return pa.schema(
        [
            (USER_ID, pa.int64()),
            (EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")),
            *[(name, pa.list_(pa.int64())) for name in RECENT_FEATURES],
        ]
    )


def recent_activity(events: pd.DataFrame) -> pd.DataFrame:
    """The state after every event second of `events`."""
    from models.features.definitions import events_table
    from models.features.definitions import recent_activity as definition

    table = _run_on_frame(events, lambda: definition(events_table()))
    return _to_pandas(table.cast(recent_activity_schema()), lists_only=False)


def snapshots_between(
    build, events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, timezone: str
) -> pd.DataFrame:
    """The rows `build` (user/item/category_snapshots) stamps in [start, end], from the events of
    [start - SNAPSHOT_LOOKBACK, end + SNAPSHOT_LOOKAHEAD): the same rows a build over all events
    gives for those stamps, so the days of a range can be built one by one and in any order."""
    grid = snapshot_grid(start, end, timezone)
    table = _run_on_frame(events, lambda: snapshot_rows(_VIEW_OF[build], grid, start, end))
    return _to_pandas(table)


def recent_activity_between(events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pa.Table:
    """The short-term state after each event of [start, end) (stamped RECENT_STATE_DELAY later),
    from the events of [start - RECENT_LOOKBACK, end)."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    stamps = events[EVENT_TIMESTAMP]
    inside = events[(stamps >= start - RECENT_LOOKBACK) & (stamps < end)]
    return _run_on_frame(inside, lambda: recent_rows(start, end)).cast(recent_activity_schema())


# --- The job over the lake ------------------------------------------------------------------


def build_interval(
    event_files: Sequence[Path],
    start: pd.Timestamp,
    end: pd.Timestamp,
    timezone: str,
    sources: Mapping[str, Path],
    config: EngineConfig | None = None,
    user_bucket_events: int = USER_BUCKET_EVENTS,
) -> tuple[dict[str, int], int]:
    """Write the snapshots stamped in [start, end] and the states after the events of [start, end)
    into the offline sources (view name -> Parquet file), in place of their rows of those stamps.

    `event_files` are the accepted day partitions covering [start - max lookback, end + SNAPSHOT_LOOKAHEAD),
    oldest first. DuckDB reads them itself and streams every result to its file. Returns the rows
    written per view and the events read.
    """
    from models.features import engine

    start, end = pd.Timestamp(start), pd.Timestamp(end)
    rows: dict[str, int] = {}
    with engine.connect(config) as con:
        read = engine.bind_parquet(con, event_files)
        grid = snapshot_grid(start, end, timezone)
        for view in (USER_VIEW, ITEM_VIEW, CATEGORY_VIEW):
            if view in sources:
                parts = [snapshot_rows(view, grid, start, end)]
                if view == USER_VIEW and read > user_bucket_events:
                    parts = _user_buckets(con, view, grid, start, end, -(-read // user_bucket_events))
                rows[view] = engine.upsert_parquet(con, parts, sources[view], start, end, include_end=True)
        if RECENT_VIEW in sources:
            _bind_recent(con, event_files, start, end)
            rows[RECENT_VIEW] = engine.upsert_parquet(
                con,
                recent_rows(start, end, _recent_events()),
                sources[RECENT_VIEW],
                start + RECENT_STATE_DELAY,
                end + RECENT_STATE_DELAY,
                include_end=False,
            )
    return rows, read


_RECENT_EVENTS = "recent_events"


def _user_buckets(
    con: duckdb.DuckDBPyConnection,
    view: str,
    grid: DayGrid,
    start: pd.Timestamp,
    end: pd.Timestamp,
    buckets: int,
) -> list[ir.Table]:
    """The view's rows as one definition per hash bucket of users, each over its own users' events."""
    from models.features import definitions, engine

    parts = []
    for b in range(buckets):
        name = f"{definitions.EVENTS_TABLE}_users_{b}"
        engine.bind_bucket(con, definitions.EVENTS_TABLE, USER_ID, b, buckets, name)
        parts.append(snapshot_rows(view, grid, start, end, definitions.events_table(name)))
    return parts


def _recent_events():
    from models.features.definitions import events_table

    return events_table(_RECENT_EVENTS)


def _bind_recent(
    con: duckdb.DuckDBPyConnection, files: Sequence[Path], start: pd.Timestamp, end: pd.Timestamp
) -> None:
    from models.features import engine

    engine.bind_parquet(con, files, start - RECENT_LOOKBACK, end, name=_RECENT_EVENTS)
