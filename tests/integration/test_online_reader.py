"""OnlineFeatureReader returns Feast's own frame, on the Taobao slice, on SQLite and on Redis.

The data comes from the session's pipeline run (`dag_run`), copied so that these tests may write to
it; the Redis copy materializes the last day (a few seconds), which is all these tests need.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pandas as pd
import pytest

from feature_repo.contract import (
    CATEGORY_ID,
    ITEM_FEATURES,
    ITEM_VIEW,
    MODEL_FEATURE_SERVICE,
    RECENT_VIEW,
    REQUEST_TS,
    USER_VIEW,
)
from tests.integration.conftest import FakeClock, project_environment

pytestmark = pytest.mark.integration

UNKNOWN_USER = 4_000_000_000
UNKNOWN_ITEMS = [9_000_000_001, 9_000_000_002]


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def online(request, dag_run, tmp_path_factory):
    """A Feast store over a copy of the pipeline run's data, with the events that made it."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    data_dir = tmp_path_factory.mktemp(f"reader-{request.param}")
    source = dag_run["data_dir"]
    parts = ("lake", "offline", "feast") if request.param == "sqlite" else ("lake", "offline")
    for part in parts:
        shutil.copytree(source / part, data_dir / part)
    extra = {"CTR_ONLINE_STORE": request.param}
    if request.param == "redis":
        import redis

        extra["CTR_REDIS_CONNECTION"] = request.getfixturevalue("redis_server")
        host, port = extra["CTR_REDIS_CONNECTION"].split(":")
        client = redis.Redis(host=host, port=int(port))
        client.flushall()  # the server is shared by the session
    env = project_environment(data_dir, **extra)
    with pytest.MonkeyPatch.context() as patch:
        for key in ("CTR_DATA_DIR", "CTR_ONLINE_STORE", "CTR_REDIS_CONNECTION"):
            if key in env:
                patch.setenv(key, env[key])
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        from models.features.store import apply_repo, open_store
        from models.settings import get_settings

        settings = get_settings()
        if request.param == "redis":
            apply_repo(settings)
            open_store(settings).materialize(
                settings.window_end - timedelta(days=1),
                settings.window_end,
                feature_views=[USER_VIEW, ITEM_VIEW, RECENT_VIEW],
            )
        store = open_store(settings)
        events = pd.read_parquet(data_dir / "lake/accepted")  # every day partition
        yield {"store": store, "settings": settings, "events": events, "kind": request.param}
    if request.param == "redis":
        client.flushall()
        client.close()


def _service(store):
    return store.get_feature_service(MODEL_FEATURE_SERVICE, allow_cache=True)


def _feast_frame(store, user: int, items: list[int], ts: int) -> pd.DataFrame:
    rows = [{"user_id": user, "item_id": i, REQUEST_TS: ts} for i in items]
    return pd.DataFrame(store.get_online_features(features=_service(store), entity_rows=rows).to_dict())


def _assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    # Feast orders a view's columns by a set (they change with PYTHONHASHSEED): compare by name.
    assert sorted(got.columns) == sorted(expected.columns)
    pd.testing.assert_frame_equal(got, expected[list(got.columns)], check_exact=True)


def _seconds(t: pd.Timestamp) -> int:
    return int(t.timestamp())


def _known_items(events: pd.DataFrame, settings, n: int) -> list[int]:
    """Items viewed on the day before the last one: every store here has their snapshot."""
    day = events[
        (events["event_timestamp"] >= settings.window_end - timedelta(days=2))
        & (events["event_timestamp"] < settings.window_end - timedelta(days=1))
    ]
    return day["item_id"].drop_duplicates().head(n).astype(int).tolist()


def _write_item_value(store, item: int, feature: str, value: float) -> None:
    """A new value of one item feature written through Feast, its other features kept."""
    row = pd.DataFrame(
        store.get_online_features(
            features=[f"{ITEM_VIEW}:{f}" for f in ITEM_FEATURES], entity_rows=[{"item_id": item}]
        ).to_dict()
    )
    row[feature] = value
    row["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    floats = {f: "float32" for f in ITEM_FEATURES if f != CATEGORY_ID}
    store.write_to_online_store(ITEM_VIEW, df=row.astype(floats))


def test_the_frame_equals_feast_for_users_items_and_request_times(online):
    from models.features.online_reader import OnlineFeatureReader

    store, events, settings = online["store"], online["events"], online["settings"]
    counts = events["user_id"].value_counts()
    active = int(counts.index[0])
    last = events[events["user_id"] == active]["event_timestamp"].max()
    inactive = int(counts.index[-1])
    seen = events[events["user_id"] == active]["item_id"].tail(5).astype(int).tolist()
    known = _known_items(events, settings, 40)
    # known items, some the active user saw just before the request, unknown ids, and a repeat
    items = [*known[:20], *seen, UNKNOWN_ITEMS[0], *known[20:], UNKNOWN_ITEMS[1], known[0]]
    reader = OnlineFeatureReader(store, _service(store), item_cache_ttl_s=30)
    realtime_seen = 0.0
    for ts in (_seconds(last) + 60, _seconds(settings.window_end) + 365 * 86400):
        for user in (active, inactive, UNKNOWN_USER):
            expected = _feast_frame(store, user, items, ts)
            result = reader.read(user, items, ts)
            _assert_same(result.frame, expected)
            assert result.unknown_items == UNKNOWN_ITEMS
            realtime_seen += float(result.frame["item_seen_recently"].sum())
    assert realtime_seen > 0  # the request-time view saw the active user's last events
    assert reader.read(active, items, ts).cached_items == len(set(items))
    frame = reader.read(active, items, ts).frame
    assert frame.loc[frame["item_id"] == UNKNOWN_ITEMS[0], CATEGORY_ID].isna().all()
    assert frame.loc[frame["item_id"] == known[0], CATEGORY_ID].notna().all()


def test_cached_items_are_reused_within_the_ttl_and_read_again_after_it(online):
    from models.features.online_reader import OnlineFeatureReader

    store, events, settings = online["store"], online["events"], online["settings"]
    item, other = _known_items(events, settings, 60)[-2:]
    ts = _seconds(settings.window_end)
    clock = FakeClock()
    reader = OnlineFeatureReader(store, _service(store), item_cache_ttl_s=30, clock=clock)
    uncached = OnlineFeatureReader(store, _service(store), item_cache_ttl_s=0)
    user = int(events["user_id"].iloc[0])
    feature = ITEM_FEATURES[0]
    before = reader.read(user, [item, other], ts).frame[feature].tolist()

    _write_item_value(store, item, feature, before[0] + 1000.0)  # as a materialization would
    assert _feast_frame(store, user, [item], ts)[feature].tolist() == [before[0] + 1000.0]

    clock.now += 29.0
    within = reader.read(user, [item, other], ts)
    assert within.frame[feature].tolist() == before and within.cached_items == 2
    assert uncached.read(user, [item], ts).frame[feature].tolist() == [before[0] + 1000.0]
    clock.now += 2.0
    after = reader.read(user, [item, other], ts)
    assert after.frame[feature].tolist() == [before[0] + 1000.0, before[1]] and after.cached_items == 0
    _assert_same(after.frame, _feast_frame(store, user, [item, other], ts))

    # Refresh-ahead: warming expired items puts them back, with the store's current values.
    clock.now += 31.0
    assert reader.warm([item, other]) == 2
    warmed = reader.read(user, [item, other], ts)
    assert warmed.cached_items == 2
    _assert_same(warmed.frame, _feast_frame(store, user, [item, other], ts))

    reader.invalidate()
    assert len(reader) == 0
    small = OnlineFeatureReader(store, _service(store), item_cache_ttl_s=30, max_cached_items=1)
    small.read(user, [item, other], ts)
    assert len(small) == 1 and small.read(user, [other], ts).cached_items == 1


def test_a_materialization_recorded_in_the_registry_empties_the_item_cache(online):
    """Item rows are cached for a long TTL; a materialization, written and recorded by another
    process, reaches the reader when its registry cache is refreshed, not a TTL later."""
    from models.features.online_reader import OnlineFeatureReader
    from models.features.store import open_store

    store, events, settings = online["store"], online["events"], online["settings"]
    item, other = _known_items(events, settings, 80)[-2:]
    ts = _seconds(settings.window_end)
    reader = OnlineFeatureReader(store, _service(store), item_cache_ttl_s=3600)
    user = int(events["user_id"].iloc[0])
    feature = ITEM_FEATURES[0]
    before = reader.read(user, [item, other], ts).frame[feature].tolist()

    writer = open_store(settings)  # the materializing process's own store
    _write_item_value(writer, item, feature, before[0] + 500.0)
    stale = reader.read(user, [item, other], ts)
    assert stale.cached_items == 2 and stale.frame[feature].tolist() == before  # written, not recorded

    view = writer.registry.get_feature_view(ITEM_VIEW, writer.project)
    end = settings.window_end + timedelta(days=1)
    writer.registry.apply_materialization(view, writer.project, settings.window_end, end)
    # The reader's registry is not refreshed yet: the cached rows are still served.
    assert reader.read(user, [item, other], ts).cached_items == 2
    store.refresh_registry()  # what Feast does when the registry's cache TTL has passed
    fresh = reader.read(user, [item, other], ts)
    assert fresh.cached_items == 0
    assert fresh.frame[feature].tolist() == [before[0] + 500.0, before[1]]
    assert reader.read(user, [item, other], ts).cached_items == 2  # cached again


def test_a_pushed_event_is_visible_at_the_next_read(online):
    from models.data.event_log import Ingestor, canonical
    from models.features.online_reader import OnlineFeatureReader

    store, events, settings = online["store"], online["events"], online["settings"]
    user = int(events["user_id"].value_counts().index[1])
    last = events[events["user_id"] == user]["event_timestamp"].max()
    own = set(events.loc[events["user_id"] == user, "item_id"])
    fresh = next(i for i in _known_items(events, settings, 200) if i not in own)
    ts = _seconds(last) + 120
    reader = OnlineFeatureReader(store, _service(store), item_cache_ttl_s=30)
    before = reader.read(user, [fresh], ts).frame
    assert before["item_seen_recently"].tolist() == [0.0]

    category = int(events.loc[events["item_id"] == fresh, CATEGORY_ID].iloc[0])
    Ingestor(settings, store).ingest(
        canonical(
            [
                {
                    "user_id": user,
                    "item_id": fresh,
                    "category_id": category,
                    "behavior": "pv",
                    "event_timestamp": last + pd.Timedelta(seconds=60),
                }
            ]
        )
    )
    after = reader.read(user, [fresh], ts)
    assert after.cached_items == 1  # the item row came from the cache, the user's rows did not
    assert after.frame["item_seen_recently"].tolist() == [1.0]
    assert after.frame["user_events_5m"].tolist() == [before["user_events_5m"].iloc[0] + 1]
    _assert_same(after.frame, _feast_frame(store, user, [fresh], ts))


def test_cache_misses_read_through_the_online_store_give_feasts_values(online, monkeypatch):
    """A few hundred items of every day (on Redis only the last day is materialized, so many are
    unknown there) and ids no store knows, read cold: the online_read path returns, value for value
    and type for type, what get_online_features returns, and the request reads the user's rows the
    same way, without calling get_online_features."""
    from models.features.online_reader import OnlineFeatureReader

    store, events, settings = online["store"], online["events"], online["settings"]
    seen = events["item_id"].drop_duplicates().astype(int)
    items = seen.sample(300, random_state=0).tolist()
    unknown = [9_000_000_100 + k for k in range(20)]
    for k, item in enumerate(unknown):
        items.insert(k * 15, item)
    reader = OnlineFeatureReader(store, _service(store), item_cache_ttl_s=30)
    assert reader._reads_online_store  # SQLite and Redis take the online_read path
    plan = reader._plan

    def typed(values):
        return [(type(v).__name__, repr(v)) for v in values]

    expected = store.get_online_features(
        features=plan.item_refs, entity_rows=[{"item_id": i} for i in items]
    ).to_dict()
    block, found = reader._read_items(items)
    for k, name in enumerate(plan.item_features):
        assert typed(block.python(k)) == typed(expected[name]), name
    missing = [
        item for j, item in enumerate(items) if all(expected[n][j] is None for n in plan.item_features)
    ]
    assert [i for i, ok in zip(items, found.tolist(), strict=True) if not ok] == missing
    assert set(unknown) <= set(missing) and len(missing) < len(items)

    # The whole request, cold, against Feast's frame, without a get_online_features call.
    user = int(events["user_id"].iloc[0])
    ts = _seconds(settings.window_end)
    feast_frame = _feast_frame(store, user, items, ts)
    calls = []
    original = store.get_online_features

    def spy(features, entity_rows, **kwargs):
        calls.append(len(entity_rows))
        return original(features=features, entity_rows=entity_rows, **kwargs)

    monkeypatch.setattr(store, "get_online_features", spy)
    result = reader.read(user, items, ts)
    assert calls == [] and result.cached_items == 0
    _assert_same(result.frame, feast_frame)
    assert result.unknown_items == missing

    # Stores read through get_online_features: the same frame.
    fallback = OnlineFeatureReader(store, _service(store), item_cache_ttl_s=30)
    fallback._reads_online_store = False
    calls.clear()
    _assert_same(fallback.read(user, items, ts).frame, feast_frame)
    assert calls == [1, len(items)]
