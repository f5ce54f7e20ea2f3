"""Batch feature job: daily snapshots of behaviour counts per user and per item.

A snapshot stamped at local midnight D aggregates the complete days before D, so a point-in-time
join never hands a training row an event from its own future. An entity gets a row at the
midnight before its first event (all zeros, which is true then), a row every midnight while it
has activity in its longest window, and one all-zero row when that window empties. So every
event of an entity has a snapshot at or before it, and the offline store and the online store
(which keeps the last row) agree on every entity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo.contract import (
    BEHAVIOR,
    BEHAVIORS,
    CATEGORY_ID,
    CONVERSION_PRIOR_RATE,
    CONVERSION_PRIOR_WEIGHT,
    EVENT_TIMESTAMP,
    INTENT_BEHAVIORS,
    ITEM_FEATURES,
    ITEM_ID,
    PAGE_VIEW,
    USER_FEATURES,
    USER_ID,
    WINDOWS_DAYS,
)

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


def _conversion(intents: np.ndarray, views: np.ndarray) -> np.ndarray:
    return (intents + CONVERSION_PRIOR_RATE * CONVERSION_PRIOR_WEIGHT) / (views + CONVERSION_PRIOR_WEIGHT)


def window_counts(events: pd.DataFrame, key: str, grid: DayGrid) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per entity and snapshot, the count of each behaviour in each window.

    Returns the entity keys and a dict ``"{behavior}_{window}" -> array[entity, snapshot]``,
    snapshot k counting the days before day k.
    """
    day = grid.day_index(events[EVENT_TIMESTAMP])
    inside = day >= 0
    keys, entity = np.unique(events.loc[inside, key].to_numpy(dtype=np.int64), return_inverse=True)
    n_days = len(grid.days)
    counts: dict[str, np.ndarray] = {}
    behaviors = events.loc[inside, BEHAVIOR].to_numpy()
    for behavior in BEHAVIORS:
        mask = behaviors == behavior
        daily = np.zeros((len(keys), n_days), dtype=np.float64)
        np.add.at(daily, (entity[mask], day[inside][mask]), 1.0)
        cumulative = np.concatenate([np.zeros((len(keys), 1)), daily.cumsum(axis=1)], axis=1)
        for window, n in WINDOWS_DAYS.items():
            lagged = np.concatenate([np.zeros((len(keys), n)), cumulative[:, :-n]], axis=1)[:, : n_days + 1]
            counts[f"{behavior}_{window}"] = cumulative - lagged
    return keys, counts


def _rows_to_keep(counts: dict[str, np.ndarray]) -> np.ndarray:
    active = sum(counts[f"{b}_{LONGEST_WINDOW}"] for b in BEHAVIORS) > 0
    none = np.zeros((active.shape[0], 1), bool)
    was_active = np.concatenate([none, active[:, :-1]], axis=1)  # the row where the window empties
    will_be_active = np.concatenate([active[:, 1:], none], axis=1)  # the midnight before first activity
    return active | was_active | will_be_active


def _frame(key: str, keys: np.ndarray, grid: DayGrid, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    keep = _rows_to_keep(columns["_counts"]) if "_counts" in columns else None
    entity_idx, snap_idx = np.nonzero(keep)
    data = {key: keys[entity_idx], EVENT_TIMESTAMP: grid.snapshot_times[snap_idx]}
    for name, values in columns.items():
        if name != "_counts":
            data[name] = values[entity_idx, snap_idx].astype(np.float32)
    return pd.DataFrame(data)


def user_snapshots(events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    keys, counts = window_counts(events, USER_ID, grid)
    columns = {f"user_{name}": values for name, values in counts.items()}
    intents = sum(counts[f"{b}_7d"] for b in INTENT_BEHAVIORS)
    columns["user_conversion_7d"] = _conversion(intents, counts[f"{PAGE_VIEW}_7d"])
    frame = _frame(USER_ID, keys, grid, {**columns, "_counts": counts})
    return frame[[USER_ID, EVENT_TIMESTAMP, *USER_FEATURES]]


def item_snapshots(events: pd.DataFrame, grid: DayGrid) -> pd.DataFrame:
    """Item counts, with the item's category counts beside them (items are sparse, categories are not)."""
    keys, counts = window_counts(events, ITEM_ID, grid)
    columns = {f"item_{name}": values for name, values in counts.items()}
    intents = sum(counts[f"{b}_7d"] for b in INTENT_BEHAVIORS)
    columns["item_conversion_7d"] = _conversion(intents, counts[f"{PAGE_VIEW}_7d"])

    categories, category_counts = window_counts(events, CATEGORY_ID, grid)
    # An item's category is an attribute of the item: take the latest one seen.
    item_category = events.sort_values(EVENT_TIMESTAMP).drop_duplicates(ITEM_ID, keep="last")
    item_category = item_category.set_index(ITEM_ID)[CATEGORY_ID]
    row = np.searchsorted(categories, item_category.reindex(keys).to_numpy(dtype=np.int64))
    category_intents = sum(category_counts[f"{b}_7d"] for b in INTENT_BEHAVIORS)
    columns["category_pv_7d"] = category_counts[f"{PAGE_VIEW}_7d"][row]
    columns["category_conversion_7d"] = _conversion(category_intents, category_counts[f"{PAGE_VIEW}_7d"])[row]
    frame = _frame(ITEM_ID, keys, grid, {**columns, "_counts": counts})
    return frame[[ITEM_ID, EVENT_TIMESTAMP, *ITEM_FEATURES]]
