"""The out-of-core batch job (the definitions on DuckDB, over the lake's Parquet partitions) gives
the reference in-memory job's rows on the real Taobao slice, column by column; a day's rerun and
days run out of order leave the same offline sources; the definitions also compile for Spark."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_repo.contract import (
    CATEGORY_ID,
    CATEGORY_VIEW,
    EVENT_TIMESTAMP,
    ITEM_ID,
    ITEM_VIEW,
    RECENT_VIEW,
    USER_ID,
    USER_VIEW,
)
from models.data import lake
from models.features import batch, definitions, engine
from models.settings import get_settings
from tests import reference_batch as reference
from tests.batch_equality import assert_same_rows

KEYS = {USER_VIEW: USER_ID, ITEM_VIEW: ITEM_ID, CATEGORY_VIEW: CATEGORY_ID, RECENT_VIEW: USER_ID}
BUILDS = {
    USER_VIEW: (batch.user_snapshots, reference.user_snapshots),
    ITEM_VIEW: (batch.item_snapshots, reference.item_snapshots),
    CATEGORY_VIEW: (batch.category_snapshots, reference.category_snapshots),
}


@pytest.fixture(scope="module")
def accepted():
    from models.data.events import load_events
    from models.data.validation import validate_events

    s = get_settings()
    events = load_events(s.raw_events)
    return validate_events(events, s.window_start, s.window_end, s.max_bad_row_fraction).accepted


@pytest.fixture
def lake_dir(tmp_path, monkeypatch, accepted):
    """A data dir whose lake holds the slice's accepted events, one partition per day."""
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path / "data"))
    settings = get_settings()
    day = lake.day_of_rows(accepted, settings)
    for d in lake.days_of(settings.window_start, settings.window_end, settings.timezone):
        lake.write_partition(accepted[day == d], settings, lake.ACCEPTED, d)
    return settings


def _files(settings):
    return [lake.partition_path(settings, lake.ACCEPTED, d) for d in lake.partitions(settings, lake.ACCEPTED)]


@pytest.mark.parametrize("view", [USER_VIEW, ITEM_VIEW, CATEGORY_VIEW])
def test_snapshots_equal_the_reference_job_on_the_real_slice(accepted, view):
    s = get_settings()
    grid = batch.DayGrid.covering(s.window_start, s.window_end, s.timezone)
    build, oracle = BUILDS[view]
    new, old = build(accepted, grid), oracle(accepted, grid)
    assert len(old) > 5_000
    assert list(new.columns) == list(old.columns)
    assert_same_rows(new, old, KEYS[view])


def test_recent_activity_equals_the_reference_job_on_the_real_slice(accepted):
    old = pa.Table.from_batches(
        list(reference.recent_activity_batches(accepted)), schema=reference.recent_activity_schema()
    )
    new = batch.recent_activity(accepted)
    assert old.num_rows > 80_000
    assert list(new.columns) == old.column_names
    assert_same_rows(new, old, USER_ID)


def test_the_reference_comparison_notices_a_changed_value(accepted):
    s = get_settings()
    grid = batch.DayGrid.covering(s.window_start, s.window_end, s.timezone)
    old = reference.category_snapshots(accepted, grid)
    changed = old.copy()
    changed.loc[changed.index[len(changed) // 2], "category_trend"] *= 1 + 1e-6
    with pytest.raises(AssertionError):
        assert_same_rows(changed, old, CATEGORY_ID)


def _build(settings, tmp_path, start, end, **options) -> dict[str, int]:
    sources = {view: tmp_path / "offline" / f"{view}.parquet" for view in KEYS}
    rows, _ = batch.build_interval(
        _files(settings), start, end, settings.timezone, sources, engine.EngineConfig(threads=2), **options
    )
    return rows


def test_the_job_over_the_lake_writes_the_reference_rows(lake_dir, accepted, tmp_path):
    s = lake_dir
    days = lake.days_of(s.window_start, s.window_end, s.timezone)
    first, last = days[0], days[-1] + pd.Timedelta(days=1)
    rows = _build(s, tmp_path, first, last)
    for view, (_, oracle) in BUILDS.items():
        old = reference.snapshots_between(oracle, accepted, first, last, s.timezone)
        written = pq.read_table(tmp_path / "offline" / f"{view}.parquet")
        assert rows[view] == written.num_rows == len(old)
        assert_same_rows(written, old, KEYS[view])
    old = reference.recent_activity_between(accepted, first, last)
    written = pq.read_table(tmp_path / "offline" / f"{RECENT_VIEW}.parquet")
    assert rows[RECENT_VIEW] == written.num_rows == old.num_rows > 80_000
    assert_same_rows(written, old, USER_ID)


def test_days_run_newest_first_and_a_rerun_leave_the_sources_of_one_run(lake_dir, tmp_path):
    s = lake_dir
    days = lake.days_of(s.window_start, s.window_end, s.timezone)
    whole = tmp_path / "whole"
    _build(s, whole, days[0], days[-1] + pd.Timedelta(days=1))
    by_day = tmp_path / "by_day"
    for day in [*reversed(days), days[3]]:  # newest first, then one day again
        # the days' user snapshots in hash buckets of users, as at size: the same rows as one run
        _build(s, by_day, day, day + pd.Timedelta(days=1), user_bucket_events=20_000)
    for view, key in KEYS.items():
        expected = pq.read_table(whole / "offline" / f"{view}.parquet")
        got = pq.read_table(by_day / "offline" / f"{view}.parquet")
        assert got.num_rows == expected.num_rows > 1000, view
        assert got.schema.equals(expected.schema), view  # nullability included
        assert_same_rows(got, expected, key)


def test_the_engine_takes_its_limits_from_the_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("CTR_DUCKDB_MEMORY_LIMIT", "1GB")
    monkeypatch.setenv("CTR_DUCKDB_THREADS", "1")
    monkeypatch.setenv("CTR_DUCKDB_MAX_TEMP_SIZE", "2GB")
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    config = engine.EngineConfig.from_settings(get_settings())
    assert config.temp_directory == tmp_path.resolve() / "tmp/duckdb"
    with engine.connect(config) as con:
        limit, threads, temp, spill = con.execute(
            "SELECT current_setting('memory_limit'), current_setting('threads'), "
            "current_setting('temp_directory'), current_setting('max_temp_directory_size')"
        ).fetchone()
    assert (limit, int(threads), temp) == ("953.6 MiB", 1, str(tmp_path.resolve() / "tmp/duckdb"))
    assert spill == "1.8 GiB"
    monkeypatch.setenv("CTR_DUCKDB_THREADS", "two")
    with pytest.raises(ValueError, match="CTR_DUCKDB_THREADS"):
        get_settings()


def test_the_definitions_compile_for_spark(monkeypatch):
    import ibis
    from ibis.config import Config

    class PySparkOptions(Config):
        treat_nan_as_null: bool = False

    # the options the PySpark backend registers when it is imported (compiling alone does not import it)
    monkeypatch.setattr(ibis.options, "pyspark", PySparkOptions())
    s = get_settings()
    grid = batch.DayGrid.covering(s.window_start, s.window_end, s.timezone).definition_grid()
    events = definitions.events_table()
    for expr in (
        definitions.user_snapshots(events, grid),
        definitions.item_snapshots(events, grid),
        definitions.category_snapshots(events, grid),
        definitions.recent_activity(events),
    ):
        spark_sql = ibis.to_sql(expr, dialect="pyspark")
        assert "`events`" in spark_sql and EVENT_TIMESTAMP in spark_sql
