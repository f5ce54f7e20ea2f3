"""The online store is chosen by configuration only: the same repo on SQLite and on a real Redis."""

from __future__ import annotations

import pandas as pd
import pytest

from feature_repo.contract import USER_FEATURES, USER_TOP_CATEGORIES, USER_TOP_CATEGORY_SHARES, USER_VIEW
from tests.integration.conftest import project_environment

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
