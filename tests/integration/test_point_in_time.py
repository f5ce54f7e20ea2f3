"""Point-in-time joins through the real Feast repo and FeatureServices, on constructed sources: by
Feast's get_historical_features and by the DuckDB ASOF join planned from the same services."""

from __future__ import annotations

import pandas as pd
import pytest

from feature_repo.contract import (
    CATEGORY_ID,
    CATEGORY_VIEW,
    ITEM_FEATURES,
    ITEM_VIEW,
    RANKER_FEATURE_SERVICE,
    RANKER_FEATURES,
    REALTIME_FEATURE_SERVICE,
    REALTIME_RANKER_FEATURES,
    RECENT_FEATURES,
    RECENT_VIEW,
    REQUEST_TS,
    USER_FEATURES,
    USER_TOP_CATEGORIES,
    USER_TOP_CATEGORY_SHARES,
    USER_VIEW,
)
from tests.integration.conftest import project_environment

pytestmark = pytest.mark.integration

T = pd.Timestamp("2017-11-28 16:00", tz="UTC")  # a snapshot midnight (Beijing)
DAY, HOUR, SECOND = pd.Timedelta(days=1), pd.Timedelta(hours=1), pd.Timedelta(seconds=1)


def _snapshots(key: str, names: list[str], rows: list[tuple]) -> pd.DataFrame:
    """Rows of (key, time, first feature, [more named values]); every other feature is 0."""
    frame = pd.DataFrame({key: [r[0] for r in rows], "event_timestamp": [r[1] for r in rows]})
    for name in names:
        frame[name] = [r[3].get(name, 0.0) if len(r) > 3 else 0.0 for r in rows]
    frame[names[0]] = [r[2] for r in rows]
    return frame.astype({n: "int64" if n == CATEGORY_ID else "float32" for n in names})


def _seconds(t: pd.Timestamp) -> int:
    return int(t.timestamp())


@pytest.fixture
def store(tmp_path, use_environment):
    use_environment(project_environment(tmp_path))
    from models.features.store import apply_repo, open_store, source_path, write_offline
    from models.settings import get_settings

    settings = get_settings()
    assert apply_repo(settings) == sorted([RANKER_FEATURE_SERVICE, REALTIME_FEATURE_SERVICE])
    store = open_store(settings)
    users = _snapshots("user_id", USER_FEATURES, [(7, T - DAY, 5.0), (7, T, 9.0), (7, T + DAY, 99.0)])
    users[USER_TOP_CATEGORIES] = [[300], [300, 700], [700]]
    users[USER_TOP_CATEGORY_SHARES] = [[1.0], [0.6, 0.4], [1.0]]
    item = {CATEGORY_ID: 700}
    items = _snapshots("item_id", ITEM_FEATURES, [(70, T - DAY, 1.0, item), (70, T + DAY, 50.0, item)])
    categories = pd.DataFrame({CATEGORY_ID: [700], "event_timestamp": [T - DAY]})
    for name in store.get_feature_view(CATEGORY_VIEW).features:
        categories[name.name] = pd.Series([1.0], dtype="float32")
    # user 7 viewed item 70 (category 700) at T+2h, then carted item 71 (category 300) at T+3h
    first, second = T + 2 * HOUR, T + 3 * HOUR
    recent = pd.DataFrame(
        {
            "user_id": [7, 7],
            "event_timestamp": [first + SECOND, second + SECOND],
            RECENT_FEATURES[0]: [[1], [1, 2]],
            RECENT_FEATURES[1]: [[_seconds(first)], [_seconds(first), _seconds(second)]],
            RECENT_FEATURES[2]: [[70], [70, 71]],
            RECENT_FEATURES[3]: [[700], [700, 300]],
            RECENT_FEATURES[4]: [[0], [0, 1]],
        }
    )
    for view, frame in (
        (USER_VIEW, users),
        (ITEM_VIEW, items),
        (CATEGORY_VIEW, categories),
        (RECENT_VIEW, recent),
    ):
        write_offline(frame, source_path(store, view))
    return store


@pytest.fixture(params=["feast", "duckdb"])
def join(request, store):
    """join(rows, service): the training set's point-in-time join, one way or the other."""
    from contextlib import ExitStack

    from models.features.engine import EngineConfig
    from models.features.point_in_time import duckdb_join
    from models.features.training_set import join_features

    with ExitStack() as stack:
        joins = {}  # one per service, kept across calls: later calls reuse (or rebuild) its carried rows

        def joined(rows, service):
            via = None
            if request.param == "duckdb":
                if service.name not in joins:
                    config = EngineConfig(memory_limit="1GB", threads=1)
                    joins[service.name] = stack.enter_context(duckdb_join(store, service, config))
                via = joins[service.name]
            return join_features(store, rows, service, via)

        yield joined


def test_a_value_written_after_the_row_time_never_leaks(store, join):
    from models.features.store import feature_names

    rows = pd.DataFrame(
        {
            "user_id": [7, 7, 7],
            "item_id": [70, 70, 70],
            "event_timestamp": [T - HOUR, T + 5 * HOUR, T + DAY + HOUR],
            "label": [0, 1, 0],
        }
    )
    service = store.get_feature_service(RANKER_FEATURE_SERVICE)
    joined = join(rows, service).set_index("event_timestamp")
    first, second, third = rows["event_timestamp"]
    assert joined.loc[first, USER_FEATURES[0]] == 5.0  # the snapshot written an hour later is invisible
    assert joined.loc[second, USER_FEATURES[0]] == 9.0  # the one written before it appears
    assert joined.loc[second, ITEM_FEATURES[0]] == 1.0  # the item's next value is a day later: not yet
    assert joined.loc[third, [USER_FEATURES[0], ITEM_FEATURES[0]]].tolist() == [99.0, 50.0]
    assert joined.loc[first, CATEGORY_ID] == 700
    # affinity to the item's category follows the user's top categories as they were at each row
    assert joined["user_category_share_7d"].round(3).tolist() == [0.0, 0.4, 1.0]
    assert joined["user_category_rank_7d"].tolist() == [6.0, 2.0, 1.0]
    # the contract: the service serves exactly the features the training set carries, in order
    assert feature_names(service) == RANKER_FEATURES
    assert set(RANKER_FEATURES) <= set(joined.columns)


def test_short_term_activity_only_counts_events_before_the_row(store, join):
    from models.features.store import feature_names

    view, cart = T + 2 * HOUR, T + 3 * HOUR
    times = [view - SECOND, view, view + 10 * SECOND, cart, cart + 30 * 60 * SECOND, cart + 2 * HOUR]
    rows = pd.DataFrame(
        {
            "user_id": 7,
            "item_id": 70,
            "event_timestamp": times,
            "label": 0,
            REQUEST_TS: [_seconds(t) for t in times],
        }
    )
    service = store.get_feature_service(REALTIME_FEATURE_SERVICE)
    joined = join(rows, service).set_index("event_timestamp")
    assert feature_names(service) == REALTIME_RANKER_FEATURES
    events_1h = joined["user_events_1h"].tolist()
    # the view itself is not known at its own second, nor the cart at its own
    assert events_1h == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # a window of one hour excludes its start
    assert joined["user_intents_1h"].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert joined["item_seen_recently"].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert joined.loc[view + 10 * SECOND, "user_seconds_since_last_event"] == 10.0
    assert joined.loc[cart + 30 * 60 * SECOND, "user_events_5m"] == 0.0
    assert joined.loc[view, "request_hour"] == 2.0  # 18:00 UTC is 02:00 in Beijing


def _day_chunks(rows: pd.DataFrame):
    """chunks() -> the rows of the days T-1, T (validation) and T+1 (test), as the build gives them."""
    from models.features.training_set import chunk_bounds

    bounds = chunk_bounds([T - DAY, T, T + DAY], T + 2 * DAY, (T, T + DAY))

    def chunks():
        for start, end in bounds:
            ts = rows["event_timestamp"]
            yield start, end, rows[(ts >= start) & (ts < end)]

    return chunks


def _write_days(chunks, join, folder, *, negative_rate: float, chunk_rows: int, complete=None):
    """The chunked build of _day_chunks' days (validation from T, test from T+1)."""
    from models.features.training_set import write_chunks

    return write_chunks(
        chunks(),
        join,
        folder,
        valid_start=T,
        test_start=T + DAY,
        negative_rate=negative_rate,
        seed=0,
        chunk_rows=chunk_rows,
        complete=complete,
    )


def test_a_training_set_built_in_chunks_equals_one_join_and_samples_no_test_day(store, join, tmp_path):
    """The chunked build (one Feast join per chunk, here per row) gives the one-call join's rows and
    values; a test day keeps every row whatever the negative sampling rate."""
    from models.features.training_set import streamed_split

    service = store.get_feature_service(RANKER_FEATURE_SERVICE)
    rows = pd.DataFrame(
        {
            "user_id": 7,
            "item_id": 70,
            "event_timestamp": [T - HOUR, T + 5 * HOUR, T + 6 * HOUR, T + DAY + HOUR, T + DAY + 2 * HOUR],
            "label": [0, 1, 0, 0, 0],
        }
    )
    whole = join(rows, service)
    chunks = _day_chunks(rows)
    folder = tmp_path / "training_set.parquet"
    # all but certainly every negative dropped where sampling applies
    _write_days(chunks, lambda part: join(part, service), folder, negative_rate=1e-9, chunk_rows=1)
    split = streamed_split(folder, frames=("train", "valid", "test"))
    assert split.train.empty  # the training day's only view is a negative
    assert split.valid["label"].tolist() == [1]  # positives are always kept
    test = split.test.reset_index(drop=True)
    expected = whole[whole["event_timestamp"] >= T + DAY].reset_index(drop=True)
    assert len(test) == 2  # a test day is never sampled
    pd.testing.assert_frame_equal(test[expected.columns], expected, check_dtype=False)
    # at rate 1.0 the chunked set is the one join, row for row
    _write_days(chunks, lambda part: join(part, service), folder, negative_rate=1.0, chunk_rows=1)
    chunked = pd.read_parquet(folder).sort_values("event_timestamp").reset_index(drop=True)
    pd.testing.assert_frame_equal(chunked[whole.columns], whole, check_dtype=False)


def test_the_pipelines_training_set_equals_feasts_join_on_the_real_slice(dag_run, use_environment):
    """The training set the pipeline built on the Taobao slice by DuckDB ASOF joins has, file by
    file, the rows and values Feast's get_historical_features gives for the same labelled views;
    Feast's frame also carries the inputs only the on-demand views read, which the set leaves out."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    use_environment(dag_run["env"])
    from feature_repo.contract import MODEL_FEATURE_SERVICE, RECENT_FEATURES
    from models.features.store import open_store
    from models.features.training_set import join_features
    from models.settings import get_settings

    settings = get_settings()
    assert settings.training_join == "duckdb"
    store = open_store(settings)
    service = store.get_feature_service(MODEL_FEATURE_SERVICE)
    files = sorted(settings.paths.training_set.glob("*.parquet"))
    assert len(files) >= 3  # training, validation and test days
    rows = 0
    for path in files:
        built = pd.read_parquet(path)
        feast = join_features(store, built[["user_id", "item_id", "event_timestamp", "label"]], service)
        hidden = {*RECENT_FEATURES, USER_TOP_CATEGORIES, USER_TOP_CATEGORY_SHARES}
        assert set(feast.columns) - set(built.columns) == hidden
        assert set(built.columns) <= set(feast.columns)
        pd.testing.assert_frame_equal(built, feast[built.columns])
        rows += len(built)
    assert rows > 70_000  # the slice's labelled views


@pytest.mark.parametrize("source_block", [None, 2], ids=["one block", "blocks of 2 source rows"])
def test_a_build_in_two_steps_completes_its_files_with_the_values_of_the_one_join(
    store, tmp_path, monkeypatch, source_block
):
    """The DuckDB join's chunked build joins the list-valued views by their row in the source and
    reads their values, for every file at once, after the chunks are written: the files then hold
    the one join's rows and values, rows before any recent state included, whether the sources
    are read in one block or in many."""
    from models.features import point_in_time
    from models.features.engine import EngineConfig
    from models.features.point_in_time import duckdb_join
    from models.features.training_set import join_features

    if source_block is not None:
        monkeypatch.setattr(point_in_time, "COMPLETION_SOURCE_ROWS", source_block)

    service = store.get_feature_service(REALTIME_FEATURE_SERVICE)
    times = [T - HOUR, T + 2 * HOUR, T + 2 * HOUR + 10 * SECOND, T + 4 * HOUR, T + DAY + HOUR]
    rows = pd.DataFrame(
        {"user_id": 7, "item_id": [70, 70, 71, 70, 71], "event_timestamp": times, "label": [0, 1, 0, 0, 1]}
    )
    chunks = _day_chunks(rows)
    folder = tmp_path / "training_set.parquet"
    with duckdb_join(store, service, EngineConfig(memory_limit="1GB", threads=1)) as via:
        whole = join_features(store, rows, service, via)
        first, complete = via.in_two_steps()
        assert complete is not None, "the recent-activity lists are joined by reference"
        partial = join_features(store, rows, service, first)
        assert not set(RECENT_FEATURES) & set(partial.columns)
        written = _write_days(
            chunks,
            lambda part: join_features(store, part, service, first),
            folder,
            negative_rate=1.0,
            chunk_rows=2,
            complete=complete,
        )
    assert len(list(folder.glob("*.parquet"))) == 4  # [1], [2, 1] of the same day, [1]
    assert sum(c.rows for c in written) == len(rows)
    chunked = pd.read_parquet(folder).sort_values(["event_timestamp", "item_id"]).reset_index(drop=True)
    assert list(chunked.columns) == list(whole.columns)
    assert chunked["item_seen_recently"].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # 71 only in the last state
    expected = whole.sort_values(["event_timestamp", "item_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(chunked, expected, check_dtype=False)
