"""The batch feature job on a real local Spark (CTR_ENGINE=spark) gives the local engine's rows on
the real Taobao slice, view by view; a day rebuilt on Spark replaces that day's partition and
nothing else; what a stopped run leaves is cleared; the session takes its settings."""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from feature_repo.contract import (
    CATEGORY_ID,
    CATEGORY_VIEW,
    ITEM_ID,
    ITEM_VIEW,
    RECENT_VIEW,
    USER_ID,
    USER_VIEW,
)
from models import spark as spark_session
from models.data import lake
from models.features import batch, engine, spark_engine
from models.settings import get_settings
from tests.batch_equality import assert_same_rows

pytestmark = pytest.mark.integration

KEYS = {USER_VIEW: USER_ID, ITEM_VIEW: ITEM_ID, CATEGORY_VIEW: CATEGORY_ID, RECENT_VIEW: USER_ID}


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory):
    """A data dir whose lake holds the slice's accepted events, one partition per day, and the
    settings of a Spark engine on local[2]."""
    from models.data.events import load_events
    from models.data.validation import validate_events

    root = tmp_path_factory.mktemp("spark")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CTR_DATA_DIR", str(root / "data"))
        env.setenv("CTR_ENGINE", "spark")
        env.setenv("CTR_SPARK_CONF", "spark.sql.shuffle.partitions=4 spark.driver.memory=2g")
        settings = get_settings()
    events = load_events(settings.raw_events)
    accepted = validate_events(
        events, settings.window_start, settings.window_end, settings.max_bad_row_fraction
    ).accepted
    day = lake.day_of_rows(accepted, settings)
    for d in lake.days_of(settings.window_start, settings.window_end, settings.timezone):
        lake.write_partition(accepted[day == d], settings, lake.ACCEPTED, d)
    return settings


@pytest.fixture(scope="module")
def spark(lake_settings):
    session = spark_session.session(lake_settings)
    yield session
    session.stop()


def _files(settings):
    return [lake.partition_path(settings, lake.ACCEPTED, d) for d in lake.partitions(settings, lake.ACCEPTED)]


def _window(settings) -> tuple[list[pd.Timestamp], pd.Timestamp, pd.Timestamp]:
    days = lake.days_of(settings.window_start, settings.window_end, settings.timezone)
    return days, days[0], days[-1] + pd.Timedelta(days=1)


def _sources(root) -> dict:
    return {view: root / f"{view}.parquet" for view in KEYS}


def _read_dataset(path):
    """A dataset as Spark and Feast's Spark store read it, without its partition column."""
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    return table.drop_columns([spark_engine.PARTITION])


@pytest.fixture(scope="module")
def whole_window(lake_settings, spark, tmp_path_factory):
    """The window built once by each engine: (spark rows, spark sources, local sources)."""
    s = lake_settings
    _, first, last = _window(s)
    root = tmp_path_factory.mktemp("built")
    local, on_spark = _sources(root / "local"), _sources(root / "spark")
    batch.build_interval(_files(s), first, last, s.timezone, local, engine.EngineConfig(threads=2))
    rows, read = spark_engine.build_interval(spark, _files(s), first, last, s.timezone, on_spark)
    assert read == sum(pq.ParquetFile(f).metadata.num_rows for f in _files(s))
    return rows, on_spark, local


@pytest.mark.parametrize("view", list(KEYS))
def test_the_spark_job_writes_the_local_engines_rows_on_the_real_slice(whole_window, view):
    rows, on_spark, local = whole_window
    expected = pq.read_table(local[view])
    got = _read_dataset(on_spark[view])
    assert rows[view] == got.num_rows == expected.num_rows > 5_000
    assert got.column_names == expected.column_names
    # ids, counts and lists exactly; floats to 1e-12 relative (they came out bit for bit equal)
    assert_same_rows(got, expected, KEYS[view])


def test_each_day_is_one_partition_of_the_days_rows(whole_window, lake_settings):
    _, on_spark, _ = whole_window
    days, first, last = _window(lake_settings)
    snapshot_days = {d.strftime("%Y-%m-%d") for d in pd.date_range(first, last, freq="D")}
    folders = {p.name for p in on_spark[USER_VIEW].iterdir() if p.is_dir()}
    assert folders == {f"date={d}" for d in snapshot_days}
    one = pq.read_table(on_spark[USER_VIEW] / f"date={days[3].strftime('%Y-%m-%d')}")
    stamps = set(one["event_timestamp"].to_pylist())
    assert stamps == {days[3].tz_convert("UTC").to_pydatetime()}  # a day holds its midnight's snapshot
    recent = {p.name for p in on_spark[RECENT_VIEW].iterdir() if p.is_dir()}
    assert recent == {f"date={d.strftime('%Y-%m-%d')}" for d in days}


def test_a_day_rebuilt_on_spark_replaces_its_partition_and_nothing_else(
    lake_settings, spark, whole_window, tmp_path
):
    s = lake_settings
    _, on_spark, local = whole_window
    days, first, last = _window(s)
    again = _sources(tmp_path)
    spark_engine.build_interval(spark, _files(s), first, last, s.timezone, again)
    day = days[4]
    # a stopped run's staging rows: the rerun clears them, and readers never see them
    stale = again[USER_VIEW] / spark_engine.STAGING / "date=2017-11-26"
    stale.mkdir(parents=True)
    pq.write_table(pq.read_table(local[USER_VIEW]).slice(0, 10), stale / "part-0.parquet")
    rows, _ = spark_engine.build_interval(
        spark, _files(s), day, day + pd.Timedelta(days=1), s.timezone, again
    )
    assert not (again[USER_VIEW] / spark_engine.STAGING).exists()
    for view, key in KEYS.items():
        assert rows[view] > 0, view
        got = _read_dataset(again[view])
        assert_same_rows(got, pq.read_table(local[view]), key)


def test_a_file_written_by_the_local_engine_is_not_overwritten(lake_settings, spark, whole_window, tmp_path):
    s = lake_settings
    _, _, local = whole_window
    days, _, _ = _window(s)
    target = tmp_path / "user.parquet"
    target.write_bytes(local[USER_VIEW].read_bytes())
    with pytest.raises(ValueError, match="single Parquet file.*another CTR_DATA_DIR"):
        spark_engine.build_interval(
            spark, _files(s), days[0], days[0] + pd.Timedelta(days=1), s.timezone, {USER_VIEW: target}
        )
    assert target.read_bytes() == local[USER_VIEW].read_bytes()


def test_the_session_runs_with_the_settings_spark_conf_over_the_defaults(spark, lake_settings):
    assert lake_settings.engine == "spark"
    assert spark.sparkContext.master == "local[2]"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"  # CTR_SPARK_CONF
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.parquet.outputTimestampType") == "TIMESTAMP_MICROS"


def test_the_features_stage_runs_on_spark_by_configuration_alone(
    lake_settings, spark, whole_window, monkeypatch
):
    """`ctr run --stage build_features` with CTR_ENGINE=spark: the repo's own sources, on Spark."""
    from models import pipeline
    from models.features import store

    monkeypatch.setenv("CTR_DATA_DIR", str(lake_settings.data_dir))  # the repo reads it
    monkeypatch.setenv("CTR_ENGINE", "spark")
    rows, _, _ = whole_window
    store.apply_repo(lake_settings)
    built = pipeline.build_features(lake_settings)
    assert built.rows == rows
    feast = store.open_store(lake_settings)
    for view in KEYS:
        source = store.source_path(feast, view)
        assert source.is_dir() and (source / "date=2017-11-26").is_dir(), view
