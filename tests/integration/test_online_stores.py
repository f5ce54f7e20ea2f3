"""The online store is chosen by configuration only: the same repo on SQLite and on a real Redis."""

from __future__ import annotations

import pandas as pd
import pytest

from feature_repo.contract import USER_FEATURES, USER_TOP_CATEGORIES, USER_TOP_CATEGORY_SHARES, USER_VIEW
from tests.integration.conftest import FakeClock, project_environment

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis"])
def store_settings(request, tmp_path, use_environment):
    extra = {"CTR_ONLINE_STORE": request.param}
    if request.param == "redis":
        extra["CTR_REDIS_CONNECTION"] = request.getfixturevalue("redis_server")
    use_environment(project_environment(tmp_path, **extra))
    from models.settings import get_settings

    return get_settings()


def test_materialized_snapshot_is_read_back_from_the_configured_store(store_settings):
    from models.features.store import apply_repo, open_store, source_path, write_offline

    apply_repo(store_settings)
    store = open_store(store_settings)
    assert store.config.online_store.type == store_settings.online_store
    assert str(store.config.registry.path).startswith(str(store_settings.data_dir))
    t = pd.Timestamp("2017-11-28 16:00", tz="UTC")
    users = pd.DataFrame({"user_id": [7, 7], "event_timestamp": [t - pd.Timedelta(days=1), t]})
    for i, name in enumerate(USER_FEATURES):
        users[name] = [float(i), float(i) + 100.0]
    users[USER_TOP_CATEGORIES] = [[], [300, 700]]
    users[USER_TOP_CATEGORY_SHARES] = [[], [0.75, 0.25]]
    write_offline(users.astype({n: "float32" for n in USER_FEATURES}), source_path(store, USER_VIEW))
    store.materialize(t - pd.Timedelta(days=2), t + pd.Timedelta(hours=1), feature_views=[USER_VIEW])
    refs = [
        f"{USER_VIEW}:{name}" for name in (USER_FEATURES[0], USER_TOP_CATEGORIES, USER_TOP_CATEGORY_SHARES)
    ]
    online = store.get_online_features(features=refs, entity_rows=[{"user_id": 7}, {"user_id": 8}]).to_dict()
    assert online[USER_FEATURES[0]] == [100.0, None]
    assert online[USER_TOP_CATEGORIES] == [[300, 700], None]
    assert online[USER_TOP_CATEGORY_SHARES] == [[0.75, 0.25], None]


def test_an_item_the_store_lacked_is_served_as_soon_as_it_is_written_not_a_ttl_later(store_settings):
    """A reader keeps an item's rows for the item TTL, and an item the store has no row for only for
    the (shorter) unknown-item TTL: a store filled while the service runs is served within it."""
    from feature_repo.contract import INTEGER_FEATURES, ITEM_FEATURES, ITEM_VIEW, MODEL_FEATURE_SERVICE
    from models.features.online_reader import OnlineFeatureReader
    from models.features.store import apply_repo, open_store

    apply_repo(store_settings)
    store = open_store(store_settings)
    service = store.get_feature_service(MODEL_FEATURE_SERVICE)

    def write(item: int, value: float) -> None:
        row = pd.DataFrame({"item_id": [item], "event_timestamp": [pd.Timestamp.now(tz="UTC")]})
        for name in ITEM_FEATURES:
            row[name] = pd.Series([7 if name in INTEGER_FEATURES else value])
        types = {n: "int64" if n in INTEGER_FEATURES else "float32" for n in ITEM_FEATURES}
        store.write_to_online_store(ITEM_VIEW, df=row.astype(types))

    known, late = 101, 202
    write(known, 1.0)
    clock = FakeClock()
    reader = OnlineFeatureReader(store, service, item_cache_ttl_s=30, unknown_item_ttl_s=2, clock=clock)
    assert reader.stored([known, late]) == [known]
    first = reader.read(7, [known, late], 1512273600)
    assert first.unknown_items == [late]

    write(late, 2.0)
    write(known, 3.0)  # a new value of a known item waits for the item TTL
    clock.now += 1.0
    within = reader.read(7, [known, late], 1512273600)
    assert within.unknown_items == [late] and within.cached_items == 2
    clock.now += 1.5
    after = reader.read(7, [known, late], 1512273600)
    assert after.unknown_items == [] and after.cached_items == 1
    assert after.frame[ITEM_FEATURES[0]].tolist() == [1.0, 2.0]
    # Without an unknown-item TTL, a missing item is remembered as long as any other.
    plain = OnlineFeatureReader(store, service, item_cache_ttl_s=30, clock=clock)
    assert plain.unknown_item_ttl_s == 30
