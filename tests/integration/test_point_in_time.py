"""Point-in-time joins through the real Feast repo and FeatureService, on constructed snapshots."""

from __future__ import annotations

import pandas as pd
import pytest

from feature_repo.contract import ITEM_FEATURES, ITEM_VIEW, RANKER_FEATURE_SERVICE, USER_FEATURES, USER_VIEW
from tests.conftest import project_environment

pytestmark = pytest.mark.integration

T = pd.Timestamp("2017-11-28 16:00", tz="UTC")  # a snapshot midnight (Beijing)


def _snapshots(key: str, names: list[str], rows: list[tuple[int, pd.Timestamp, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[key, "event_timestamp", names[0]])
    for name in names[1:]:
        frame[name] = 0.0
    return frame.astype({n: "float32" for n in names})


def test_a_value_written_after_the_row_time_never_leaks(tmp_path, use_environment):
    use_environment(project_environment(tmp_path))
    from models.dataset import join_features
    from models.feature_store import apply_repo, feature_names, open_store, source_path, write_offline
    from models.settings import get_settings

    settings = get_settings()
    assert apply_repo(settings) == [RANKER_FEATURE_SERVICE]
    store = open_store(settings)
    day = pd.Timedelta(days=1)
    users = _snapshots("user_id", USER_FEATURES, [(7, T - day, 5.0), (7, T, 9.0), (7, T + day, 99.0)])
    items = _snapshots("item_id", ITEM_FEATURES, [(70, T - day, 1.0), (70, T + day, 50.0)])
    write_offline(users, source_path(store, USER_VIEW))
    write_offline(items, source_path(store, ITEM_VIEW))

    rows = pd.DataFrame(
        {
            "user_id": [7, 7, 7],
            "item_id": [70, 70, 70],
            "event_timestamp": [
                T - pd.Timedelta(hours=1),
                T + pd.Timedelta(hours=5),
                T + day + pd.Timedelta(hours=1),
            ],
            "label": [0, 1, 0],
        }
    )
    service = store.get_feature_service(RANKER_FEATURE_SERVICE)
    joined = join_features(store, rows, service).set_index("event_timestamp")
    first, second, third = rows["event_timestamp"]
    assert joined.loc[first, USER_FEATURES[0]] == 5.0  # the snapshot written an hour later is invisible
    assert joined.loc[second, USER_FEATURES[0]] == 9.0  # the one written before it appears
    assert joined.loc[second, ITEM_FEATURES[0]] == 1.0  # the item's next value is a day later: not yet
    assert joined.loc[third, [USER_FEATURES[0], ITEM_FEATURES[0]]].tolist() == [99.0, 50.0]
    # the contract: the service serves exactly the features the snapshots carry, in training order
    assert feature_names(service) == USER_FEATURES + ITEM_FEATURES
