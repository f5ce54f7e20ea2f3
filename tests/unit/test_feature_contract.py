"""The feature contract holds without an integration run: the batch job's columns are the contract's
feature lists, the feature views' schemas and the FeatureServices' features (the repo's definitions
loaded as `feast apply` loads them, without a registry); the on-demand views return what they
declare; the repo loads whatever else is wrong in the library's settings; one hour of day."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from feature_repo import contract as c
from models.features.batch import (
    DayGrid,
    category_snapshots,
    item_snapshots,
    new_item_features,
    recent_activity,
    user_snapshots,
)

REPO = Path(__file__).resolve().parents[2] / "feature_repo"
T0 = pd.Timestamp("2017-11-25", tz=c.SHOP_TIMEZONE)
DAY, HOUR = pd.Timedelta(days=1), pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def repo():
    """The repo's modules, imported as Feast imports them (its files as top-level modules)."""
    sys.path.insert(0, str(REPO))
    try:
        names = ("contract", "entities", "feature_views", "on_demand_views", "feature_services")
        return {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(REPO))


@pytest.fixture(scope="module")
def built():
    """The batch job's four outputs on a small log: two users, three items in two categories."""
    rows = [
        (1, 10, 100, "pv", T0 + 3 * HOUR),
        (1, 10, 100, "cart", T0 + 4 * HOUR),
        (1, 11, 101, "pv", T0 + DAY + 2 * HOUR),
        (2, 10, 100, "pv", T0 + DAY + 5 * HOUR),
        (2, 12, 101, "buy", T0 + 2 * DAY + HOUR),
    ]
    events = pd.DataFrame(rows, columns=list(c.EVENT_COLUMNS))
    events = events.astype({c.USER_ID: "Int64", c.ITEM_ID: "Int64", c.CATEGORY_ID: "Int64"})
    events[c.EVENT_TIMESTAMP] = events[c.EVENT_TIMESTAMP].dt.tz_convert("UTC")
    grid = DayGrid.covering(T0, T0 + 4 * DAY, c.SHOP_TIMEZONE)
    return {
        c.USER_VIEW: user_snapshots(events, grid),
        c.ITEM_VIEW: item_snapshots(events, grid),
        c.CATEGORY_VIEW: category_snapshots(events, grid),
        c.RECENT_VIEW: recent_activity(events),
    }


def _features(frame: pd.DataFrame) -> list[str]:
    """A batch output's feature columns: all but its entity key and its timestamp."""
    return list(frame.columns[2:])


def test_the_batch_job_writes_the_contract_s_columns(built):
    keys = {
        c.USER_VIEW: c.USER_ID,
        c.ITEM_VIEW: c.ITEM_ID,
        c.CATEGORY_VIEW: c.CATEGORY_ID,
        c.RECENT_VIEW: c.USER_ID,
    }
    features = {
        c.USER_VIEW: [*c.USER_FEATURES, *c.USER_LIST_FEATURES],
        c.ITEM_VIEW: c.ITEM_FEATURES,
        c.CATEGORY_VIEW: c.CATEGORY_FEATURES,
        c.RECENT_VIEW: c.RECENT_FEATURES,
    }
    for view, frame in built.items():
        assert len(frame) > 0, view
        assert list(frame.columns) == [keys[view], c.EVENT_TIMESTAMP, *features[view]], view


def test_every_feature_view_declares_the_batch_job_s_columns_and_types(repo, built):
    from feast.type_map import feast_value_type_to_pa

    views = repo["feature_views"]
    entities = {e.name: e for e in vars(repo["entities"]).values() if type(e).__name__ == "Entity"}
    declared = {
        c.USER_VIEW: views.user_behavior_stats,
        c.ITEM_VIEW: views.item_behavior_stats,
        c.CATEGORY_VIEW: views.category_behavior_stats,
        c.RECENT_VIEW: views.user_recent_activity,
    }
    for name, view in declared.items():
        frame = built[name]
        assert view.name == name
        assert view.batch_source.timestamp_field == c.EVENT_TIMESTAMP, name
        assert [entities[e].join_key for e in view.entities] == [frame.columns[0]], name
        written = pa.Schema.from_pandas(frame, preserve_index=False)
        assert [f.name for f in view.features] == _features(frame), name
        for field in view.features:
            wanted = feast_value_type_to_pa(field.dtype.to_value_type())
            assert written.field(field.name).type == wanted, f"{name}.{field.name}"


def test_the_on_demand_views_return_what_they_declare_from_the_job_s_rows(repo, built):
    views = repo["on_demand_views"]
    assert [f.name for f in views.user_item_affinity.features] == c.AFFINITY_FEATURES
    assert [f.name for f in views.realtime_context.features] == c.REALTIME_FEATURES
    users, items = built[c.USER_VIEW], built[c.ITEM_VIEW]
    user, item = users.iloc[-1], items.iloc[-1]
    affinity = views.user_item_affinity.feature_transformation.udf(
        {
            c.USER_TOP_CATEGORIES: [list(user[c.USER_TOP_CATEGORIES])],
            c.USER_TOP_CATEGORY_SHARES: [list(user[c.USER_TOP_CATEGORY_SHARES])],
            c.CATEGORY_ID: [int(item[c.CATEGORY_ID])],
        }
    )
    assert list(affinity) == c.AFFINITY_FEATURES
    state = built[c.RECENT_VIEW].iloc[-1]
    lists = {name: [list(state[name])] for name in c.RECENT_FEATURES}
    now = int(state[c.EVENT_TIMESTAMP].timestamp())
    realtime = views.realtime_context.feature_transformation.udf(
        {
            **lists,
            c.ITEM_ID: [int(item[c.ITEM_ID])],
            c.CATEGORY_ID: [int(item[c.CATEGORY_ID])],
            c.REQUEST_TS: [now],
        }
    )
    assert list(realtime) == c.REALTIME_FEATURES
    assert realtime["request_hour"] == [float(c.shop_hour(now))]


def test_the_feature_services_serve_the_contract_s_lists_which_the_job_and_views_produce(repo, built):
    from models.features.store import feature_names

    services = repo["feature_services"]
    assert services.ctr_ranker.name == c.RANKER_FEATURE_SERVICE
    assert services.ctr_ranker_realtime.name == c.REALTIME_FEATURE_SERVICE == c.MODEL_FEATURE_SERVICE
    assert feature_names(services.ctr_ranker) == c.RANKER_FEATURES
    assert feature_names(services.ctr_ranker_realtime) == c.REALTIME_RANKER_FEATURES == c.MODEL_FEATURES
    produced = {name for frame in built.values() for name in _features(frame)}
    produced |= {*c.AFFINITY_FEATURES, *c.REALTIME_FEATURES}
    assert set(c.MODEL_FEATURES) <= produced
    assert len(set(c.MODEL_FEATURES)) == len(c.MODEL_FEATURES)  # no feature served twice


def test_a_new_item_gets_every_one_of_the_item_view_s_own_features():
    """The ranker's values for an item the store does not know: the item view's features except
    its category and the category's numbers, which stay unknown."""
    own = [f for f in c.ITEM_FEATURES if f != c.CATEGORY_ID and not f.startswith("category_")]
    assert list(new_item_features()) == own


_LOAD_AS_FEAST_DOES = """
import json, sys
from pathlib import Path
from feast.repo_operations import parse_repo

contents = parse_repo(Path.cwd())
print(json.dumps({
    "library": sorted(m for m in sys.modules if m.split(".")[0] in ("models", "services", "dags")),
    "services": sorted(s.name for s in contents.feature_services),
    "paths": {s.name: s.path for s in contents.data_sources if getattr(s, "path", None)},
}))
"""


def test_the_repo_loads_as_feast_apply_loads_it_despite_an_unrelated_bad_setting(tmp_path, monkeypatch):
    from models.settings import get_settings

    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    offline = get_settings().paths.offline
    monkeypatch.setenv("CTR_MODEL_RELOAD_S", "soon")
    with pytest.raises(ValueError):
        get_settings()  # the library's settings fail on it...
    done = subprocess.run(  # ...the feature repo never reads them
        [sys.executable, "-c", _LOAD_AS_FEAST_DOES],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["library"] == []
    assert loaded["services"] == sorted([c.RANKER_FEATURE_SERVICE, c.REALTIME_FEATURE_SERVICE])
    assert loaded["paths"] == {
        f"{name}_source": str(offline / f"{name}.parquet")
        for name in ("user_stats", "item_stats", "category_stats", "user_activity")
    }


# --- The hour of day in the shop's time --------------------------------------------------------


def test_shop_hour_of_seconds_arrays_series_and_aware_timestamps():
    at = pd.Timestamp("2017-11-30 23:30", tz="UTC")  # 07:30 on 1 December in Shanghai
    seconds = int(at.timestamp())
    assert c.shop_hour(seconds) == 7 and isinstance(c.shop_hour(seconds), int)
    assert c.shop_hour(float(seconds)) == 7 and isinstance(c.shop_hour(float(seconds)), int)
    assert c.shop_hour(at) == c.shop_hour(at.to_pydatetime()) == 7
    assert c.shop_hour(at.tz_convert(c.SHOP_TIMEZONE)) == 7
    stamps = pd.date_range("2017-11-25", periods=24 * 9, freq="h", tz="UTC") + pd.Timedelta(minutes=59)
    expected = stamps.tz_convert(c.SHOP_TIMEZONE).hour.to_numpy()
    unix = stamps.as_unit("s").asi8
    assert np.array_equal(c.shop_hour(unix), expected)
    assert c.shop_hour(unix).dtype == np.int64
    assert c.shop_hour(pd.Series(unix)).tolist() == expected.tolist()
    with pytest.raises(ValueError, match="time zone"):
        c.shop_hour(pd.Timestamp("2017-11-30 23:30"))


def test_the_shop_timezone_is_the_settings_default(monkeypatch):
    from models.settings import get_settings

    monkeypatch.delenv("CTR_TIMEZONE", raising=False)
    assert get_settings().timezone == c.SHOP_TIMEZONE
    assert c.SHOP_UTC_OFFSET_S == 8 * 3600
