"""Daily snapshots on a constructed log, in UTC days to keep the arithmetic visible."""

import numpy as np
import pandas as pd
import pytest

from feature_repo.contract import BEHAVIORS, RECENT_EVENTS, RECENT_FEATURES
from models.features.batch import (
    DayGrid,
    category_snapshots,
    item_snapshots,
    merge_recent,
    recent_activity,
    user_snapshots,
)

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


def test_windows_activity_and_recency(grid):
    day, hour = pd.Timedelta(days=1), pd.Timedelta(hours=1)
    events = _events(
        [
            (1, 10, 100, "pv", T0 + 18 * hour),
            (1, 11, 100, "pv", T0 + day + 18 * hour),
            (1, 12, 200, "fav", T0 + 3 * day + 12 * hour),
        ]
    )
    users = user_snapshots(events, grid).set_index("event_timestamp")
    at_day4 = users.loc[T0 + 4 * day]
    assert at_day4[["user_pv_1d", "user_pv_3d", "user_fav_3d", "user_pv_7d"]].tolist() == [0, 1, 1, 2]
    assert at_day4["user_active_days_7d"] == 3
    assert at_day4["user_days_since_last_event"] == pytest.approx(0.5)  # fav at noon the day before
    assert users.loc[T0, "user_days_since_last_event"] == 7.0  # none yet: the cap
    assert users.loc[T0 + 10 * day, "user_days_since_last_event"] == pytest.approx(6.5)


def test_top_categories_and_their_shares(grid):
    hour = pd.Timedelta(hours=1)
    rows = [(1, 10 + i, 300, "pv", T0 + i * hour) for i in range(3)]
    rows += [(1, 20, 100, "pv", T0 + 4 * hour), (1, 21, 200, "cart", T0 + 5 * hour)]
    rows += [(1, 30 + i, 400 + i, "pv", T0 + (6 + i) * hour) for i in range(5)]  # 5 singletons
    users = user_snapshots(_events(rows), grid).set_index("event_timestamp")
    next_day = users.loc[T0 + pd.Timedelta(days=1)]
    # most events first, ties by the lower id; only the top 5 are kept
    assert list(next_day["user_top_categories_7d"]) == [300, 100, 200, 400, 401]
    np.testing.assert_allclose(next_day["user_top_category_shares_7d"], [0.3, 0.1, 0.1, 0.1, 0.1], rtol=1e-6)
    assert list(users.loc[T0, "user_top_categories_7d"]) == []  # before any event


def test_items_carry_their_category_id_and_trend(grid):
    day = pd.Timedelta(days=1)
    rows = [(1, 10, 100, "pv", T0 + pd.Timedelta(hours=1))]
    rows += [
        (u, 10, 100, "pv", T0 + 6 * day + pd.Timedelta(hours=u)) for u in range(2, 6)
    ]  # 4 views on day 6
    items = item_snapshots(_events(rows), grid).set_index("event_timestamp")
    assert items["category_id"].dtype == np.int64 and set(items["category_id"]) == {100}
    # 4 views yesterday against 5/7 a day over the week: rising
    assert items.loc[T0 + 7 * day, "item_trend"] == pytest.approx((4 + 1) / (5 / 7 + 1))
    assert items.loc[T0 + 2 * day, "item_trend"] == pytest.approx(1 / (1 / 7 + 1))  # quiet: falling


def test_category_snapshots_count_every_item_of_the_category(grid):
    events = _events(
        [
            (1, 10, 100, "pv", T0 + pd.Timedelta(hours=1)),
            (2, 11, 100, "buy", T0 + pd.Timedelta(hours=2)),
            (2, 12, 200, "pv", T0 + pd.Timedelta(hours=3)),
        ]
    )
    categories = category_snapshots(events, grid)
    next_day = categories[categories["event_timestamp"] == T0 + pd.Timedelta(days=1)].set_index("category_id")
    assert next_day.loc[100, ["category_pv_1d", "category_buy_1d"]].tolist() == [1, 1]
    assert next_day.loc[200, "category_pv_7d"] == 1


def test_recent_activity_is_stamped_after_each_second_and_keeps_the_last_events():
    second = pd.Timedelta(seconds=1)
    rows = [(1, 10 + i, 100, "pv", T0 + i * 60 * second) for i in range(RECENT_EVENTS + 3)]
    rows += [(1, 99, 900, "cart", T0 + 2 * 60 * second)]  # same second as the third view
    rows += [(2, 50, 500, "pv", T0)]
    rows += [rows[0]]  # delivered twice: counts once
    recent = recent_activity(_events(rows))
    user1 = recent[recent["user_id"] == 1].set_index("event_timestamp")
    assert len(user1) == RECENT_EVENTS + 3  # one row per event second
    assert T0 not in user1.index and T0 + second in user1.index
    third = user1.loc[T0 + 120 * second + second]
    assert sorted(third["recent_items"]) == [10, 11, 12, 99]  # both events of that second
    assert list(third["recent_behaviors"]).count(BEHAVIORS.index("cart")) == 1
    last = user1.iloc[-1]
    assert len(last["recent_items"]) == RECENT_EVENTS and last["recent_items"][-1] == 10 + RECENT_EVENTS + 2
    assert list(recent.loc[recent["user_id"] == 2, "recent_categories"].iloc[0]) == [500]


def test_online_merge_equals_the_offline_state_and_ignores_redeliveries():
    rows = [
        (1, 10 + i, 100 + i % 3, "pv", T0 + pd.Timedelta(minutes=7 * i)) for i in range(RECENT_EVENTS + 5)
    ]
    events = _events(rows)
    offline = recent_activity(events).iloc[-1]
    state = None
    for start in range(0, len(events), 4):  # live, in small out-of-order batches
        batch = events.iloc[start : start + 4].iloc[::-1]
        state = merge_recent(state, batch) or state
    assert {k: list(offline[k]) for k in RECENT_FEATURES} == state
    assert merge_recent(state, events.iloc[-10:]) is None  # redelivered: nothing changes
    assert merge_recent(state, events.iloc[:3]) is None  # older than the kept ones: nothing changes


def test_new_item_defaults_equal_the_jobs_row_for_an_item_before_its_first_event(grid):
    from models.features.batch import new_item_features

    events = _events([(1, 10, 100, "pv", T0 + pd.Timedelta(days=3, hours=5))])
    items = item_snapshots(events, grid).set_index("event_timestamp")
    before = items.loc[T0 + pd.Timedelta(days=3)]  # the midnight before the item's first view
    defaults = new_item_features()
    assert defaults == {name: pytest.approx(float(before[name])) for name in defaults}
    assert defaults["item_conversion_7d"] == pytest.approx(0.03)
