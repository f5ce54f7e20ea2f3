"""User-id pseudonyms: deterministic, keyed, int64-safe, collision-free on the real users, and applied
where ids enter (the raw CSV, the live ingestor)."""

import numpy as np
import pandas as pd
import pytest

from feature_repo.contract import USER_ID
from models.data.privacy import pseudonym, pseudonymise
from models.settings import default_raw_events

KEY = "0123456789abcdef-test-key"
INT64_MAX = np.iinfo(np.int64).max


def test_the_same_id_and_key_give_the_same_pseudonym():
    assert pseudonym(1, KEY) == pseudonym(1, KEY) == pseudonym(np.int64(1), KEY)
    assert pseudonym(1, KEY) != pseudonym(2, KEY)


def test_the_pseudonym_depends_on_the_key_and_is_the_id_without_one():
    assert pseudonym(1, KEY) != pseudonym(1, KEY + "x")
    assert pseudonym(12345, "") == 12345


def test_pseudonyms_fit_int64_and_the_api_schemas():
    values = [pseudonym(u, KEY) for u in range(10_000)]
    assert all(0 <= v <= INT64_MAX for v in values)
    assert np.array(values, dtype=np.int64).min() >= 0  # no overflow on the cast
    assert max(values) > 2**62  # the whole 63-bit range is used, not a small part of it


def test_no_collisions_among_the_real_users_and_the_first_200k_ids():
    users = pd.read_csv(default_raw_events(), header=None, usecols=[0], dtype="int64")[0].unique()
    assert len(users) > 500
    ids = np.union1d(users, np.arange(200_000))
    mapped = pseudonymise(pd.Series(ids), KEY)
    assert mapped.nunique() == len(ids)
    assert not np.isin(mapped, ids).any()  # no pseudonym is also a raw id of the slice


def test_a_column_keeps_its_dtype_nulls_and_invalid_values():
    column = pd.Series([1, None, 1, -5, 7], dtype="Int64")
    mapped = pseudonymise(column, KEY)
    assert mapped.dtype == "Int64"
    assert mapped[0] == mapped[2] == pseudonym(1, KEY) and mapped[4] == pseudonym(7, KEY)
    assert pd.isna(mapped[1]) and mapped[3] == -5  # validation still quarantines these
    assert pseudonymise(column, "") is column


@pytest.fixture
def raw_csv(tmp_path):
    path = tmp_path / "raw.csv"
    path.write_text("1,10,100,pv,1511658000\nx,11,100,pv,1511658001\n2,12,100,buy,1511658002\n")
    return path


def test_the_batch_path_pseudonymises_raw_ids_with_the_configured_key(raw_csv, monkeypatch):
    from models.data.events import load_events

    assert load_events(raw_csv)[USER_ID].tolist()[::2] == [1, 2]
    monkeypatch.setenv("CTR_USER_ID_KEY", KEY)
    events = load_events(raw_csv)
    assert events[USER_ID].tolist()[::2] == [pseudonym(1, KEY), pseudonym(2, KEY)]
    assert pd.isna(events[USER_ID][1]) and events["source_row"].tolist() == [1, 2, 3]
    assert load_events(raw_csv, user_id_key="")[USER_ID].tolist()[::2] == [1, 2]  # the replayer's view


def test_a_short_key_is_refused(monkeypatch):
    from models.settings import get_settings

    monkeypatch.setenv("CTR_USER_ID_KEY", "short")
    with pytest.raises(ValueError, match="CTR_USER_ID_KEY is too short") as error:
        get_settings()
    assert "short'" not in str(error.value)


def test_secrets_are_not_in_the_settings_repr(monkeypatch):
    from models.settings import get_settings

    monkeypatch.setenv("CTR_USER_ID_KEY", KEY)
    monkeypatch.setenv("CTR_API_TOKEN", "a-token-of-sixteen-or-more")
    shown = repr(get_settings())
    assert KEY not in shown and "a-token-of-sixteen-or-more" not in shown


def test_the_live_ingestor_logs_and_pushes_pseudonyms_only(tmp_path, monkeypatch):
    from models.data.event_log import Ingestor, canonical
    from models.settings import get_settings

    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CTR_USER_ID_KEY", KEY)

    from feature_repo.contract import RECENT_EVENT_IDS, RECENT_VIEW
    from models import pipeline

    settings = get_settings()
    pipeline.apply_features(settings)  # a real registry and SQLite online store under tmp_path
    ingestor = Ingestor(settings)
    event = {"item_id": 2, "category_id": 3, "behavior": "pv", "event_timestamp": 1511658000}
    result = ingestor.ingest(canonical([{"user_id": 41, **event}, {"user_id": 42, **event}]))
    assert result.accepted == 2 and result.users_updated == 2
    expected = {pseudonym(41, KEY), pseudonym(42, KEY)}
    assert set(ingestor.log.read()[USER_ID]) == expected
    users = [pseudonym(41, KEY), pseudonym(42, KEY), 41, 42]
    online = ingestor.store.get_online_features(
        features=[f"{RECENT_VIEW}:{RECENT_EVENT_IDS}"], entity_rows=[{USER_ID: u} for u in users]
    ).to_dict()[RECENT_EVENT_IDS]
    assert [ids is not None for ids in online] == [True, True, False, False]  # stored under pseudonyms only
