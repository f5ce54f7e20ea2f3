"""The batch feature job as it was first written, in memory with NumPy [entity x day] arrays: the
reference the out-of-core job (models/features/definitions.py on DuckDB) is checked against, column
by column (tests/unit/test_batch_engine.py), and the "old job" of benchmarks/batch_features.py.

It holds the whole window in memory (10 M events reach a 10.6 GiB peak), so the project no longer
runs it; it is kept unchanged apart from the short-term state's online merge, which lives on in
models/features/batch.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.contract import (
    BEHAVIOR,
    BEHAVIORS,
    CATEGORY_FEATURES,
    CATEGORY_ID,
    CONVERSION_PRIOR_RATE,
    CONVERSION_PRIOR_WEIGHT,
    EVENT_TIMESTAMP,
    INTENT_BEHAVIORS,
    ITEM_FEATURES,
    ITEM_ID,
    PAGE_VIEW,
    RECENCY_CAP_DAYS,
    RECENT_BEHAVIORS,
    RECENT_CATEGORIES,
    RECENT_EVENT_IDS,
    RECENT_EVENTS,
    RECENT_FEATURES,
    RECENT_ITEMS,
    RECENT_STATE_DELAY,
    RECENT_TIMESTAMPS,
    TOP_CATEGORIES,
    TREND_PRIOR,
    USER_FEATURES,
    USER_ID,
    USER_TOP_CATEGORIES,
    USER_TOP_CATEGORY_SHARES,
    WINDOWS_DAYS,
)
from models.data.events import event_ids, unix_seconds

LONGEST_WINDOW = max(WINDOWS_DAYS, key=WINDOWS_DAYS.__getitem__)
_DAY_S = 86_400.0


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


def _conversion(intents: np.ndarray, views: np.ndarray) -> np.ndarray:
    return (intents + CONVERSION_PRIOR_RATE * CONVERSION_PRIOR_WEIGHT) / (views + CONVERSION_PRIOR_WEIGHT)


def _trend(views_1d: np.ndarray, views_7d: np.ndarray) -> np.ndarray:
    return (views_1d + TREND_PRIOR) / (views_7d / WINDOWS_DAYS["7d"] + TREND_PRIOR)


def _windowed(daily: np.ndarray, n: int) -> np.ndarray:
    """[entity, day] totals -> [entity, snapshot] totals over the n days before each snapshot."""
    cumulative = np.concatenate([np.zeros((daily.shape[0], 1)), daily.cumsum(axis=1)], axis=1)
    lagged = np.concatenate([np.zeros((daily.shape[0], n)), cumulative[:, :-n]], axis=1)
    return cumulative - lagged[:, : cumulative.shape[1]]


@dataclass(frozen=True)
class _Entities:
    """The events of a batch indexed by one key: which entity and which day each event is."""

    keys: np.ndarray  # sorted entity keys
    entity: np.ndarray  # per event inside the grid: index into keys
    day: np.ndarray  # per event inside the grid: day index
    behavior: np.ndarray  # per event inside the grid
    seconds: np.ndarray  # per event inside the grid: Unix seconds
    n_days: int

    @classmethod
    def of(cls, events: pd.DataFrame, key: str, grid: DayGrid) -> _Entities:
        day = grid.day_index(events[EVENT_TIMESTAMP])
        inside = day >= 0
        keys, entity = np.unique(events.loc[inside, key].to_numpy(dtype=np.int64), return_inverse=True)
        seconds = unix_seconds(events.loc[inside, EVENT_TIMESTAMP])
        behavior = events.loc[inside, BEHAVIOR].to_numpy()
        return cls(keys, entity, day[inside], behavior, seconds, len(grid.days))

    def daily(self, mask: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros((len(self.keys), self.n_days), dtype=np.float64)
        if mask is None:
            np.add.at(out, (self.entity, self.day), 1.0)
        else:
            np.add.at(out, (self.entity[mask], self.day[mask]), 1.0)
        return out

    def counts(self) -> dict[str, np.ndarray]:
        """``"{behavior}_{window}" -> array[entity, snapshot]``, snapshot k counting the days before day k."""
        out: dict[str, np.ndarray] = {}
        for behavior in BEHAVIORS:
            daily = self.daily(self.behavior == behavior)
            for window, n in WINDOWS_DAYS.items():
                out[f"{behavior}_{window}"] = _windowed(daily, n)
        return out

    def days_since_last_event(self, grid: DayGrid) -> np.ndarray:
        """[entity, snapshot]: days from the entity's last event before the snapshot, capped."""
        last = np.full((len(self.keys), self.n_days), -np.inf)
        np.maximum.at(last, (self.entity, self.day), self.seconds.astype(np.float64))
        never = np.full((len(self.keys), 1), -np.inf)
        before = np.concatenate([never, np.maximum.accumulate(last, axis=1)], axis=1)
        return np.minimum((grid.snapshot_seconds[None, :] - before) / _DAY_S, RECENCY_CAP_DAYS)


def _rows_to_keep(counts: dict[str, np.ndarray]) -> np.ndarray:
    active = sum(counts[f"{b}_{LONGEST_WINDOW}"] for b in BEHAVIORS) > 0
    none = np.zeros((active.shape[0], 1), bool)
    was_active = np.concatenate([none, active[:, :-1]], axis=1)  # the row where the window empties
    will_be_active = np.concatenate([active[:, 1:], none], axis=1)  # the midnight before first activity
    return active | was_active | will_be_active


def _frame(
    key: str, keys: np.ndarray, grid: DayGrid, keep: np.ndarray, columns: dict[str, np.ndarray]
) -> pd.DataFrame:
    entity_idx, snap_idx = np.nonzero(keep)
    data = {key: keys[entity_idx], EVENT_TIMESTAMP: grid.snapshot_times[snap_idx]}
    for name, values in columns.items():
        dtype = np.int64 if name == CATEGORY_ID else np.float32
        data[name] = values[entity_idx, snap_idx].astype(dtype)
    return pd.DataFrame(data)


def _intents(counts: dict[str, np.ndarray], window: str) -> np.ndarray:
    return sum(counts[f"{b}_{window}"] for b in INTENT_BEHAVIORS)


def _top_categories(
    events: pd.DataFrame, users: _Entities, grid: DayGrid, keep: np.ndarray
) -> tuple[pa.Array, pa.Array]:
    """For each kept (user, snapshot) row, in row order: the user's TOP_CATEGORIES categories by
    events in the last 7 days, most first (ties: lower id first), and their share of those events."""
    day = grid.day_index(events[EVENT_TIMESTAMP])
    inside = day >= 0
    categories, category = np.unique(events.loc[inside, CATEGORY_ID].to_numpy(np.int64), return_inverse=True)
    pair_code = users.entity.astype(np.int64) * len(categories) + category
    pairs, pair = np.unique(pair_code, return_inverse=True)
    daily = np.zeros((len(pairs), users.n_days))
    np.add.at(daily, (pair, users.day), 1.0)
    in_window = _windowed(daily, WINDOWS_DAYS["7d"])
    pair_idx, snap = np.nonzero(in_window)
    count = in_window[pair_idx, snap]
    user, cat = pairs[pair_idx] // len(categories), pairs[pair_idx] % len(categories)
    order = np.lexsort((categories[cat], -count, snap, user))
    user, snap, cat, count = user[order], snap[order], cat[order], count[order]
    group = user * (users.n_days + 1) + snap
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    sizes = np.diff(np.r_[starts, len(group)])
    rank = np.arange(len(group)) - np.repeat(starts, sizes)
    totals = np.repeat(np.add.reduceat(count, starts), sizes) if len(count) else count
    top = rank < TOP_CATEGORIES
    group, values, shares = group[top], categories[cat[top]], (count / totals)[top].astype(np.float32)
    # Offsets into the kept rows, which np.nonzero(keep) orders by user then snapshot, as `group` is.
    row_user, row_snap = np.nonzero(keep)
    row_group = row_user.astype(np.int64) * (users.n_days + 1) + row_snap
    first = np.searchsorted(group, row_group, side="left")
    lengths = np.searchsorted(group, row_group, side="right") - first
    list_offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    index = np.repeat(first - list_offsets[:-1], lengths) + np.arange(list_offsets[-1])
    return (
        pa.ListArray.from_arrays(pa.array(list_offsets), pa.array(values[index], pa.int64())),
        pa.ListArray.from_arrays(pa.array(list_offsets), pa.array(shares[index], pa.float32())),
    )


def user_snapshots(events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    users = _Entities.of(events, USER_ID, grid)
    counts = users.counts()
    columns = {f"user_{name}": values for name, values in counts.items()}
    columns["user_conversion_7d"] = _conversion(_intents(counts, "7d"), counts[f"{PAGE_VIEW}_7d"])
    columns["user_active_days_7d"] = _windowed((users.daily() > 0).astype(np.float64), WINDOWS_DAYS["7d"])
    columns["user_days_since_last_event"] = users.days_since_last_event(grid)
    keep = _rows_to_keep(counts)
    frame = _frame(USER_ID, users.keys, grid, keep, columns)
    top, shares = _top_categories(events, users, grid, keep)
    frame[USER_TOP_CATEGORIES] = pd.arrays.ArrowExtensionArray(top)
    frame[USER_TOP_CATEGORY_SHARES] = pd.arrays.ArrowExtensionArray(shares)
    return frame[[USER_ID, EVENT_TIMESTAMP, *USER_FEATURES, USER_TOP_CATEGORIES, USER_TOP_CATEGORY_SHARES]]


def _category_columns(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    columns = {f"category_{name}": values for name, values in counts.items()}
    columns["category_conversion_7d"] = _conversion(_intents(counts, "7d"), counts[f"{PAGE_VIEW}_7d"])
    columns["category_trend"] = _trend(counts[f"{PAGE_VIEW}_1d"], counts[f"{PAGE_VIEW}_7d"])
    return columns


def category_snapshots(events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    categories = _Entities.of(events, CATEGORY_ID, grid)
    counts = categories.counts()
    frame = _frame(CATEGORY_ID, categories.keys, grid, _rows_to_keep(counts), _category_columns(counts))
    return frame[[CATEGORY_ID, EVENT_TIMESTAMP, *CATEGORY_FEATURES]]


def _category_at_snapshots(events: pd.DataFrame, items: _Entities, grid: DayGrid) -> np.ndarray:
    """[item, snapshot] -> the item's category as last seen before the snapshot (an attribute of the
    item that can change); before its first event, the first one seen. Nothing after a snapshot is
    used for it except for that row before the first event."""
    ordered = events.iloc[np.argsort(unix_seconds(events[EVENT_TIMESTAMP]), kind="stable")]
    day = grid.day_index(ordered[EVENT_TIMESTAMP])
    inside = day >= 0
    seen = pd.DataFrame(
        {
            "row": np.searchsorted(items.keys, ordered.loc[inside, ITEM_ID].to_numpy(np.int64)),
            "snapshot": day[inside] + 1,  # a day's events count from the snapshot after it
            "category": ordered.loc[inside, CATEGORY_ID].to_numpy(np.int64),
        }
    ).drop_duplicates(["row", "snapshot"], keep="last")
    table = np.full((len(items.keys), len(grid.days) + 1), np.nan)
    table[seen["row"].to_numpy(), seen["snapshot"].to_numpy()] = seen["category"].to_numpy()
    filled = pd.DataFrame(table).ffill(axis=1).bfill(axis=1)
    return filled.to_numpy(np.int64)


def item_snapshots(events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    """Item counts, with the item's category and its numbers beside them (items are sparse, categories
    are not)."""
    items = _Entities.of(events, ITEM_ID, grid)
    counts = items.counts()
    columns = {f"item_{name}": values for name, values in counts.items()}
    columns["item_conversion_7d"] = _conversion(_intents(counts, "7d"), counts[f"{PAGE_VIEW}_7d"])
    columns["item_trend"] = _trend(counts[f"{PAGE_VIEW}_1d"], counts[f"{PAGE_VIEW}_7d"])
    columns["item_days_since_last_event"] = items.days_since_last_event(grid)

    categories = _Entities.of(events, CATEGORY_ID, grid)
    category_columns = _category_columns(categories.counts())
    item_category = _category_at_snapshots(events, items, grid)
    row = np.searchsorted(categories.keys, item_category)
    snapshot = np.broadcast_to(np.arange(item_category.shape[1]), item_category.shape)
    columns[CATEGORY_ID] = item_category
    for name in ("category_pv_7d", "category_conversion_7d", "category_trend"):
        columns[name] = category_columns[name][row, snapshot]
    frame = _frame(ITEM_ID, items.keys, grid, _rows_to_keep(counts), columns)
    return frame[[ITEM_ID, EVENT_TIMESTAMP, *ITEM_FEATURES]]


# --- Short-term state ------------------------------------------------------------------------------


def _recent_columns(events: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-event values the state keeps, in RECENT_FEATURES order."""
    behavior = pd.Categorical(events[BEHAVIOR], categories=list(BEHAVIORS)).codes.astype(np.int64)
    return {
        RECENT_EVENT_IDS: event_ids(events),
        RECENT_TIMESTAMPS: unix_seconds(events[EVENT_TIMESTAMP]),
        RECENT_ITEMS: events[ITEM_ID].to_numpy(np.int64),
        RECENT_CATEGORIES: events[CATEGORY_ID].to_numpy(np.int64),
        RECENT_BEHAVIORS: behavior,
    }


def recent_activity_batches(events: pd.DataFrame, batch_events: int = 1_000_000) -> Iterator[pa.RecordBatch]:
    """The user's state after each event second: the last RECENT_EVENTS events (oldest first),
    stamped RECENT_STATE_DELAY after that second. Duplicate events (same id) count once.

    Yields Arrow record batches of whole users, so the offline source can be written in bounded memory.
    """
    columns = _recent_columns(events)
    users = events[USER_ID].to_numpy(np.int64)
    order = np.lexsort((columns[RECENT_EVENT_IDS], columns[RECENT_TIMESTAMPS], users))
    users, columns = users[order], {k: v[order] for k, v in columns.items()}
    unique = ~pd.Series(columns[RECENT_EVENT_IDS]).duplicated().to_numpy()
    users, columns = users[unique], {k: v[unique] for k, v in columns.items()}
    n = len(users)
    if n == 0:
        return
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    user_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    seconds = columns[RECENT_TIMESTAMPS]
    # the state after the last event of each (user, second)
    last_of_second = np.r_[(np.diff(users) != 0) | (np.diff(seconds) != 0), True]
    delay = int(RECENT_STATE_DELAY.total_seconds())
    cut_points = starts[np.searchsorted(starts, np.arange(0, n, batch_events), side="right") - 1]
    bounds = [*sorted(set(cut_points.tolist())), n]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        rows = lo + np.flatnonzero(last_of_second[lo:hi])
        first = np.maximum(user_start[rows], rows - RECENT_EVENTS + 1)
        lengths = rows - first + 1
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
        index = np.repeat(first - offsets[:-1], lengths) + np.arange(offsets[-1])
        arrays = [
            pa.array(users[rows]),
            pa.array((seconds[rows] + delay) * 1_000_000, pa.timestamp("us", tz="UTC")),
        ]
        arrays += [
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(columns[name][index], pa.int64()))
            for name in RECENT_FEATURES
        ]
        yield pa.RecordBatch.from_arrays(arrays, names=[USER_ID, EVENT_TIMESTAMP, *RECENT_FEATURES])


def recent_activity(events: pd.DataFrame) -> pd.DataFrame:
    batches = list(recent_activity_batches(events))
    schema = recent_activity_schema()
    return pa.Table.from_batches(batches, schema=schema).to_pandas(types_mapper=pd.ArrowDtype)


def recent_activity_schema() -> pa.Schema:
    return pa.schema(
        [
            (USER_ID, pa.int64()),
            (EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")),
            *[(name, pa.list_(pa.int64())) for name in RECENT_FEATURES],
        ]
    )


# --- One data interval at a time ---------------------------------------------------------------------

# What a day's snapshots depend on: the longest window, one day more for the row where a window
# empties, and the next day for the row the midnight before an entity's first activity.
SNAPSHOT_LOOKBACK = pd.Timedelta(days=WINDOWS_DAYS[LONGEST_WINDOW] + 1)
SNAPSHOT_LOOKAHEAD = pd.Timedelta(days=1)
# The short-term state keeps the last RECENT_EVENTS events; events older than this are not carried.
RECENT_LOOKBACK = pd.Timedelta(days=28)


def snapshots_between(
    build, events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, timezone: str
) -> pd.DataFrame:
    """The rows `build` (user/item/category_snapshots) stamps in [start, end], from the events of
    [start - SNAPSHOT_LOOKBACK, end + SNAPSHOT_LOOKAHEAD): the same rows a build over all events
    gives for those stamps, so the days of a range can be built one by one and in any order."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    grid = DayGrid.covering(start - SNAPSHOT_LOOKBACK, end + SNAPSHOT_LOOKAHEAD, timezone)
    stamps = events[EVENT_TIMESTAMP]
    inside = (stamps >= grid.snapshot_times[0]) & (stamps < grid.snapshot_times[-1])
    frame = build(events[inside], grid)
    stamped = frame[EVENT_TIMESTAMP]
    return frame[(stamped >= start) & (stamped <= end)].reset_index(drop=True)


def recent_activity_between(events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pa.Table:
    """The short-term state after each event of [start, end) (stamped RECENT_STATE_DELAY later),
    from the events of [start - RECENT_LOOKBACK, end)."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    stamps = events[EVENT_TIMESTAMP]
    inside = (stamps >= start - RECENT_LOOKBACK) & (stamps < end)
    table = pa.Table.from_batches(
        list(recent_activity_batches(events[inside])), schema=recent_activity_schema()
    )
    stamped = table[EVENT_TIMESTAMP].to_pandas()
    keep = (stamped >= start + RECENT_STATE_DELAY) & (stamped < end + RECENT_STATE_DELAY)
    return table.filter(pa.array(keep.to_numpy()))
