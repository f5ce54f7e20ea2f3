from pathlib import Path

import pandas as pd

from feature_repo.contract import EVENT_COLUMNS
from models.data.events import SOURCE_ROW, load_events


def test_every_line_is_kept_and_bad_values_become_nulls(tmp_path: Path):
    raw = tmp_path / "events.csv"
    raw.write_text(
        "1,10,100,pv,1511658000\n"
        "abc,11,100,cart,1511658001\n"  # id that is not a number
        "2,12,101,PV ,not-a-time\n"  # behaviour in other case, broken timestamp
        "3,13,102,buy,1511658002,extra\n"  # a field too many
    )
    events = load_events(raw)
    assert list(events.columns) == [SOURCE_ROW, *EVENT_COLUMNS]
    assert events[SOURCE_ROW].tolist() == [1, 2, 3, 4]
    assert pd.isna(events.loc[1, "user_id"])
    assert events.loc[2, "behavior"] == "pv" and pd.isna(events.loc[2, "event_timestamp"])
    assert pd.isna(events.loc[3, "event_timestamp"])
    assert events.loc[0, "event_timestamp"] == pd.Timestamp("2017-11-26 01:00:00", tz="UTC")


def test_gzip_sample_matches_the_shared_file():
    from models.settings import PROJECT_ROOT

    sample = load_events(PROJECT_ROOT / "data/sample/userbehavior_user_slice.csv.gz")
    assert len(sample) == 84287
    assert sample["user_id"].nunique() == 814
