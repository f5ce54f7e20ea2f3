"""The pipeline's materialization writes exactly what Feast's own `materialize` writes, every view,
entity and value, into SQLite and into a real Redis, from the real Taobao slice's offline sources;
and it records the interval in the registry as Feast does.

The sources come from the pipeline's own stages (ingest → validate → apply_features →
build_features) in a data dir of this module; each comparison copies them into two fresh data dirs
(and, for Redis, two redis-servers): one materialized by Feast, one by the `materialize` stage.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo.contract import ITEM_VIEW, RECENT_VIEW, USER_VIEW
from tests.integration.conftest import ROOT, project_environment, redis_process

pytestmark = pytest.mark.integration

STORE_VARIABLES = ("CTR_DATA_DIR", "CTR_ONLINE_STORE", "CTR_REDIS_CONNECTION", "CTR_MATERIALIZE_BATCH_ROWS")


@pytest.fixture(scope="module")
def offline_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with the real slice's offline sources, built by the pipeline's own stages."""
    data_dir = tmp_path_factory.mktemp("materialize-sources")
    stages = ["ingest", "validate", "apply_features", "build_features"]
    command = ["ctr", "run", *(arg for stage in stages for arg in ("--stage", stage))]
    done = subprocess.run(
        command, env=project_environment(data_dir), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return data_dir


def _settings(monkeypatch: pytest.MonkeyPatch, sources: Path, data_dir: Path, **store: str):
    """Settings for a fresh data dir holding a copy of the sources, the repo applied to it."""
    from models.features.store import apply_repo
    from models.settings import get_settings

    shutil.copytree(sources / "offline", data_dir / "offline")
    for name in STORE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CTR_DATA_DIR", str(data_dir))
    for name, value in store.items():
        monkeypatch.setenv(name, value)
    settings = get_settings()
    apply_repo(settings)
    return settings


def _by_stage(monkeypatch, sources: Path, data_dir: Path, **store: str) -> tuple[str, str]:
    """The pipeline's materialize stage; returns the interval it materialized."""
    from models import pipeline

    done = pipeline.materialize(_settings(monkeypatch, sources, data_dir, **store))
    return done.start, done.end


def _by_feast(monkeypatch, sources: Path, data_dir: Path, interval: tuple[str, str], **store: str) -> None:
    """Feast's own materialize over the same interval."""
    from models.features.store import open_store

    settings = _settings(monkeypatch, sources, data_dir, **store)
    start, end = (pd.Timestamp(t).to_pydatetime() for t in interval)
    open_store(settings).materialize(start_date=start, end_date=end)


def _with_lake(sources: Path, data_dir: Path) -> None:
    """The stage's interval reaches the newest accepted day: each copy links the sources' lake."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "lake").symlink_to(sources / "lake", target_is_directory=True)


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sqlite_rows(data_dir: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(data_dir / "feast" / "online.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: db.execute(f'SELECT * FROM "{t}" ORDER BY entity_key, feature_name').fetchall() for t in tables
        }


def _redis_rows(connection: str) -> dict[bytes, dict[bytes, bytes]]:
    import redis

    host, port = connection.split(":")
    client = redis.Redis(host=host, port=int(port))
    try:
        return {key: client.hgetall(key) for key in client.scan_iter(count=10_000)}
    finally:
        client.close()


def _opened(monkeypatch, data_dir: Path, **store: str):
    """The Feast store of a data dir already applied (its registry and online store as they are)."""
    from models.features.store import open_store
    from models.settings import get_settings

    monkeypatch.setenv("CTR_DATA_DIR", str(data_dir))
    for name, value in store.items():
        monkeypatch.setenv(name, value)
    return open_store(get_settings())


def _intervals(monkeypatch, data_dir: Path, **store: str) -> dict[str, list[tuple]]:
    return {
        v.name: [(i[0].isoformat(), i[1].isoformat()) for i in v.materialization_intervals]
        for v in _opened(monkeypatch, data_dir, **store).list_feature_views()
    }


def _online(monkeypatch, data_dir: Path, users: list[int], items: list[int], **store: str) -> dict:
    from feature_repo.contract import MODEL_FEATURE_SERVICE, REQUEST_TS

    feast = _opened(monkeypatch, data_dir, **store)
    service = feast.get_feature_service(MODEL_FEATURE_SERVICE)
    rows = [{"user_id": u, "item_id": i, REQUEST_TS: 1512273600} for u, i in zip(users, items, strict=True)]
    return feast.get_online_features(features=service, entity_rows=rows).to_dict()


def _some_entities(sources: Path) -> tuple[list[int], list[int]]:
    users = pd.Series(
        pq.read_table(sources / "offline" / "user_stats.parquet", columns=["user_id"])[0].to_numpy()
    )
    items = pd.Series(
        pq.read_table(sources / "offline" / "item_stats.parquet", columns=["item_id"])[0].to_numpy()
    )
    picked_users = sorted(users.unique())[:: max(1, users.nunique() // 40)][:40]
    picked_items = sorted(items.unique())[:: max(1, items.nunique() // 40)][: len(picked_users)]
    return [int(u) for u in picked_users], [int(i) for i in picked_items]


def test_sqlite_holds_exactly_what_feasts_materialize_writes(offline_sources, tmp_path, monkeypatch):
    feast_dir, stage_dir = tmp_path / "feast", tmp_path / "stage"
    for data_dir in (feast_dir, stage_dir):
        _with_lake(offline_sources, data_dir)
    # Small batches: many batches per view, and the last one partial.
    interval = _by_stage(monkeypatch, offline_sources, stage_dir, CTR_MATERIALIZE_BATCH_ROWS="997")
    _by_feast(monkeypatch, offline_sources, feast_dir, interval)

    expected, written = _sqlite_rows(feast_dir), _sqlite_rows(stage_dir)
    assert set(written) == set(expected)
    for table, rows in expected.items():
        assert rows, f"Feast wrote no rows into {table}: the comparison would prove nothing"
        assert written[table] == rows, table
    assert _intervals(monkeypatch, stage_dir) == _intervals(monkeypatch, feast_dir)
    users, items = _some_entities(offline_sources)
    assert _online(monkeypatch, stage_dir, users, items) == _online(monkeypatch, feast_dir, users, items)


def test_redis_holds_exactly_what_feasts_materialize_writes(offline_sources, tmp_path, monkeypatch):
    feast_dir, stage_dir = tmp_path / "feast", tmp_path / "stage"
    for data_dir in (feast_dir, stage_dir):
        _with_lake(offline_sources, data_dir)
    with (
        redis_process(_folder(tmp_path / "redis-feast")) as feast_redis,
        redis_process(_folder(tmp_path / "redis-stage")) as stage_redis,
    ):
        on_feast = {"CTR_ONLINE_STORE": "redis", "CTR_REDIS_CONNECTION": feast_redis.connection}
        on_stage = {"CTR_ONLINE_STORE": "redis", "CTR_REDIS_CONNECTION": stage_redis.connection}
        interval = _by_stage(
            monkeypatch, offline_sources, stage_dir, CTR_MATERIALIZE_BATCH_ROWS="997", **on_stage
        )
        _by_feast(monkeypatch, offline_sources, feast_dir, interval, **on_feast)
        expected, written = _redis_rows(feast_redis.connection), _redis_rows(stage_redis.connection)
        assert len(expected) > 1000
        assert written.keys() == expected.keys()
        assert [k for k in expected if written[k] != expected[k]] == []
        assert _intervals(monkeypatch, stage_dir, **on_stage) == _intervals(
            monkeypatch, feast_dir, **on_feast
        )
        users, items = _some_entities(offline_sources)
        assert _online(monkeypatch, stage_dir, users, items, **on_stage) == _online(
            monkeypatch, feast_dir, users, items, **on_feast
        )


def test_the_stage_reports_rows_per_second_per_view_and_keeps_newer_pushed_rows(
    offline_sources, tmp_path, monkeypatch
):
    """`ctr run --stage materialize` prints each view's rows and rows/s; an entity whose online row
    is newer than the batch (pushed live) keeps it, as with Feast's materialize."""
    _with_lake(offline_sources, tmp_path / "data")
    with redis_process(_folder(tmp_path / "redis")) as redis:
        store_env = {"CTR_ONLINE_STORE": "redis", "CTR_REDIS_CONNECTION": redis.connection}
        settings = _settings(monkeypatch, offline_sources, tmp_path / "data", **store_env)
        from models.features.store import open_store

        users, _ = _some_entities(offline_sources)
        recent = pq.read_table(offline_sources / "offline" / "user_activity.parquet").to_pandas(
            ignore_metadata=True
        )
        pushed_user = int(recent["user_id"].iloc[0])
        row = recent[recent["user_id"] == pushed_user].tail(1).copy()
        row["event_timestamp"] = pd.Timestamp("2030-01-01", tz="UTC")
        row["recent_items"] = [[424242]]
        open_store(settings).write_to_online_store(RECENT_VIEW, df=row.reset_index(drop=True))

        env = project_environment(tmp_path / "data", **store_env, CTR_MATERIALIZE_BATCH_ROWS="5000")
        done = subprocess.run(
            ["ctr", "run", "--stage", "materialize"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        printed = done.stdout + done.stderr
        for view in (USER_VIEW, ITEM_VIEW, RECENT_VIEW):
            assert f"{view}: " in printed and " rows/s" in printed.split(f"{view}: ", 1)[1].splitlines()[0]

        online = (
            open_store(settings)
            .get_online_features(
                features=[f"{RECENT_VIEW}:recent_items"], entity_rows=[{"user_id": pushed_user}]
            )
            .to_dict()
        )
        assert online["recent_items"] == [[424242]]
