"""Day partitions: the feature pipeline run one day at a time, in any order, gives exactly the
rows of one run over the whole window, and no input row is left without a partition."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from feature_repo.contract import EVENT_TIMESTAMP, USER_ID
from models.data.lake import day_of_rows, days_of
from models.features.batch import (
    DayGrid,
    category_snapshots,
    item_snapshots,
    recent_activity,
    recent_activity_between,
    snapshots_between,
    user_snapshots,
)
from models.settings import get_settings


@pytest.fixture(scope="module")
def accepted():
    from models.data.events import load_events
    from models.data.validation import validate_events

    s = get_settings()
    events = load_events(s.raw_events)
    return validate_events(events, s.window_start, s.window_end, s.max_bad_row_fraction).accepted


def _sorted(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    frame = frame.astype({c: object for c in frame.columns if isinstance(frame[c].dtype, pd.ArrowDtype)})
    return frame.sort_values([key, EVENT_TIMESTAMP]).reset_index(drop=True)


@pytest.mark.parametrize(
    ("build", "key"),
    [(user_snapshots, USER_ID), (item_snapshots, "item_id"), (category_snapshots, "category_id")],
)
def test_day_by_day_snapshots_equal_the_whole_window_in_any_order(accepted, build, key):
    s = get_settings()
    whole = build(accepted, DayGrid.covering(s.window_start, s.window_end, s.timezone))
    days = days_of(s.window_start, s.window_end, s.timezone)
    rows = {}
    # Newest day first: a day's run owns its stamps, so the order does not matter (upsert by stamp).
    for day in reversed(days):
        part = snapshots_between(build, accepted, day, day + pd.Timedelta(days=1), s.timezone)
        for stamp, group in part.groupby(EVENT_TIMESTAMP):
            rows[stamp] = group
    by_day = pd.concat(rows.values(), ignore_index=True)
    assert len(by_day) == len(whole) > 1000
    pd.testing.assert_frame_equal(_sorted(by_day, key), _sorted(whole, key), check_dtype=False)


def test_day_by_day_recent_activity_equals_the_whole_window(accepted):
    s = get_settings()
    whole = recent_activity(accepted)
    days = days_of(s.window_start, s.window_end, s.timezone)
    parts = [recent_activity_between(accepted, d, d + pd.Timedelta(days=1)) for d in days]
    by_day = pa.concat_tables(parts).to_pandas(types_mapper=pd.ArrowDtype)
    assert len(by_day) == len(whole) > 50_000
    pd.testing.assert_frame_equal(_sorted(by_day, USER_ID), _sorted(whole, USER_ID))


def test_every_row_gets_a_day_of_the_window_even_without_a_usable_time():
    s = get_settings()
    days = days_of(s.window_start, s.window_end, s.timezone)
    assert len(days) == 9 and f"{days[0]:%Y-%m-%d}" == "2017-11-25" and f"{days[-1]:%Y-%m-%d}" == "2017-12-03"
    stamps = pd.Series(
        [
            pd.Timestamp("2017-11-26 23:59:59+08:00"),
            pd.Timestamp("2017-11-27 00:00:00+08:00"),
            pd.Timestamp("2001-01-01", tz="UTC"),
            pd.Timestamp("2030-01-01", tz="UTC"),
            pd.NaT,
        ],
        dtype="datetime64[ns, UTC]",
    )
    assigned = day_of_rows(pd.DataFrame({EVENT_TIMESTAMP: stamps}), s)
    assert [f"{d:%Y-%m-%d}" for d in assigned] == [
        "2017-11-26",
        "2017-11-27",
        "2017-11-25",  # too early: judged with the first day
        "2017-12-03",  # too late: judged with the last day
        "2017-12-03",  # no time at all
    ]
