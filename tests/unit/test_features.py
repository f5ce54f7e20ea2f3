"""Daily snapshots on a constructed log, in UTC days to keep the arithmetic visible."""

import pandas as pd
import pytest

from models.features import DayGrid, item_snapshots, user_snapshots

T0 = pd.Timestamp("2017-11-25", tz="UTC")


def _events(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "behavior", "event_timestamp"])
    return frame.astype({"user_id": "Int64", "item_id": "Int64", "category_id": "Int64"})


@pytest.fixture
def grid():
    return DayGrid.covering(T0, T0 + pd.Timedelta(days=10), "UTC")


def test_snapshot_counts_only_days_before_it(grid):
    events = _events(
        [
            (1, 10, 100, "pv", T0 + pd.Timedelta(days=1, hours=3)),
            (1, 10, 100, "cart", T0 + pd.Timedelta(days=1, hours=4)),
            (1, 11, 100, "pv", T0 + pd.Timedelta(days=2, hours=1)),
        ]
    )
    users = user_snapshots(events, grid).set_index("event_timestamp")
    day = pd.Timedelta(days=1)
    assert users.loc[T0 + day, "user_pv_7d"] == 0  # midnight before the first event: nothing yet
    assert users.loc[T0 + 2 * day, ["user_pv_1d", "user_cart_1d"]].tolist() == [1, 1]
    assert users.loc[T0 + 3 * day, ["user_pv_1d", "user_pv_7d", "user_cart_7d"]].tolist() == [1, 2, 1]
    assert users.loc[T0 + 4 * day, ["user_pv_1d", "user_pv_7d"]].tolist() == [0, 2]
    # the day-1 events leave the 7-day window at day 9, the day-2 event at day 10: one zero row, then nothing
    assert users.loc[T0 + 9 * day, "user_pv_7d"] == 1
    assert users.loc[T0 + 10 * day, "user_pv_7d"] == 0
    assert users.index.max() == T0 + 10 * day
    assert T0 not in users.index  # no row before the midnight preceding the first event


def test_conversion_is_smoothed_so_new_items_are_neither_zero_nor_one(grid):
    events = _events(
        [(1, 10, 100, "pv", T0 + pd.Timedelta(hours=1)), (1, 10, 100, "buy", T0 + pd.Timedelta(hours=2))]
    )
    items = item_snapshots(events, grid).set_index("event_timestamp")
    rate = items.loc[T0 + pd.Timedelta(days=1), "item_conversion_7d"]
    assert 0.03 < rate < 1.0
    assert items.loc[T0, "item_conversion_7d"] == pytest.approx(0.03)  # the prior, before any event


def test_items_carry_their_category_counts(grid):
    events = _events(
        [
            (1, 10, 100, "pv", T0 + pd.Timedelta(hours=1)),
            (2, 11, 100, "pv", T0 + pd.Timedelta(hours=2)),
            (2, 12, 200, "pv", T0 + pd.Timedelta(hours=3)),
        ]
    )
    items = item_snapshots(events, grid)
    next_day = items[items["event_timestamp"] == T0 + pd.Timedelta(days=1)].set_index("item_id")
    assert next_day.loc[10, "category_pv_7d"] == 2
    assert next_day.loc[12, "category_pv_7d"] == 1
