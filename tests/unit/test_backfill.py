"""`ctr backfill` dates: the local days a user names, as the logical dates of the feature DAG's runs."""

from datetime import date

import pandas as pd
import pytest

from models.ops.backfill import BackfillError, plan_backfill
from models.settings import get_settings


def test_named_local_days_are_runs_starting_at_their_local_midnights():
    plan = plan_backfill(date(2017, 11, 25), date(2017, 11, 26), get_settings())
    assert plan.dag_id == "ctr_features"
    assert plan.days == (date(2017, 11, 25), date(2017, 11, 26))
    # Asia/Shanghai: the day 11-25 starts at 16:00 UTC on 11-24 (a bare "2017-11-25" to Airflow is
    # 08:00 local, so its first run would be the day 11-26).
    assert [pd.Timestamp(d).tz_convert("UTC").isoformat() for d in plan.logical_dates] == [
        "2017-11-24T16:00:00+00:00",
        "2017-11-25T16:00:00+00:00",
    ]
    assert (plan.from_date, plan.to_date) == ("2017-11-25T00:00:00+08:00", "2017-11-26T00:00:00+08:00")
    assert plan_backfill(date(2017, 12, 3), None, get_settings()).days == (date(2017, 12, 3),)


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        (date(2017, 11, 24), None, "2017-11-24 is outside the window 2017-11-25 .. 2017-12-03"),
        (date(2017, 12, 1), date(2017, 12, 4), "2017-12-04 is outside the window"),
        (date(2017, 11, 27), date(2017, 11, 26), "before the first day"),
    ],
)
def test_days_outside_the_window_or_reversed_are_refused_by_name(first, last, message):
    with pytest.raises(BackfillError, match=message):
        plan_backfill(first, last, get_settings())
