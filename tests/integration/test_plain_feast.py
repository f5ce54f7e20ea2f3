"""Feast as Feast users use it, on the pipeline run's stores: the plain `feast` CLI in feature_repo/,
`FeatureStore(repo_path="feature_repo")` and `feast serve`, each in a process of its own with only
the environment the README's set-up gives (the virtualenv on PATH, CTR_DATA_DIR, and
FEAST_FS_YAML_FILE_PATH from `ctr feast-yaml`), give what the project's own reader gives.

The data is a copy of the session's pipeline run (`dag_run`), so that `feast apply` and
`feast materialize-incremental` may write to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest

from feature_repo.contract import (
    EFFECTIVE_YAML_MARKER,
    FEAST_YAML_VARIABLE,
    MODEL_FEATURE_SERVICE,
    RANKER_FEATURE_SERVICE,
    REQUEST_TS,
)
from models.ops.processes import free_port, process_group
from models.settings import FEAST_STORE_VARIABLES
from tests.integration.conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.integration

REPO = ROOT / "feature_repo"
UNKNOWN_ITEM = 9_000_000_001
AT = pd.Timestamp("2017-12-02 12:00", tz="Asia/Shanghai")  # a test day, for the point-in-time join

# What `FeatureStore(repo_path="feature_repo")` answers, run from the project's root as a user would.
SDK = """
import json, sys
import pandas as pd
from feast import FeatureStore

service_name, rows, historical_rows, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
store = FeatureStore(repo_path="feature_repo")
service = store.get_feature_service(service_name)
online = store.get_online_features(features=service, entity_rows=rows).to_dict()
entity_df = pd.read_parquet(historical_rows)
store.get_historical_features(entity_df=entity_df, features=service).to_df().to_parquet(out)
print(json.dumps(online))
"""


def _user_environment(data_dir: Path) -> dict[str, str]:
    """`source .venv/bin/activate` and `export CTR_DATA_DIR=...`: nothing of this test's own."""
    env = {
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "CTR_DATA_DIR": str(data_dir),
    }
    return env


def _run(command: list[str], env: dict[str, str], cwd: Path = REPO, timeout: int = 180):
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def copy(dag_run, tmp_path_factory):
    """The run's data, the user's environment after the set-up, and the rows to ask for."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    # The feature DAG wrote the file Feast's tools are pointed at, for its own data dir.
    written = dag_run["data_dir"] / "feast/feature_store.yaml"
    assert written.read_text().startswith(f"{EFFECTIVE_YAML_MARKER}{dag_run['data_dir']}")
    data_dir = tmp_path_factory.mktemp("plain-feast")
    run_rows = _online_rows(dag_run["data_dir"] / "feast/online.db")
    for part in ("lake", "offline", "feast"):
        shutil.copytree(dag_run["data_dir"] / part, data_dir / part)
    env = _user_environment(data_dir)
    # A copied data dir is applied once where it now is (the registry still names the old place),
    # then the README's set-up for a data dir other than var/:
    #   export FEAST_FS_YAML_FILE_PATH=$(ctr feast-yaml)
    _run(["ctr", "run", "--stage", "apply_features"], env, cwd=ROOT)
    assert _online_rows(data_dir / "feast/online.db") == run_rows
    env[FEAST_YAML_VARIABLE] = _run(["ctr", "feast-yaml"], env, cwd=ROOT).strip()
    assert env[FEAST_YAML_VARIABLE] == str(data_dir / "feast/feature_store.yaml")

    events = pd.read_parquet(data_dir / "lake/accepted")
    user = int(events["user_id"].value_counts().index[0])
    mine = events[events["user_id"] == user]
    seen = mine["item_id"].drop_duplicates().tail(10).astype(int).tolist()
    popular = events["item_id"].value_counts().index[:30].astype(int).tolist()
    items = list(dict.fromkeys([*seen, *popular, UNKNOWN_ITEM]))
    request_ts = int(mine["event_timestamp"].max().timestamp()) + 60
    yield {"data_dir": data_dir, "env": env, "user": user, "items": items, "request_ts": request_ts}
    # Nothing here touched the run's own online store, which the session's other tests read.
    assert _online_rows(dag_run["data_dir"] / "feast/online.db") == run_rows


def _online_rows(path: Path) -> dict[str, int]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in tables}


@pytest.fixture
def project_store(copy, monkeypatch):
    """The project's own view of the same data dir: open_store() with the project's settings."""
    for name in (*FEAST_STORE_VARIABLES, "CTR_FEAST_YAML", FEAST_YAML_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CTR_DATA_DIR", str(copy["data_dir"]))
    from models.features.store import open_store
    from models.settings import get_settings

    settings = get_settings()
    return open_store(settings), settings


def _reader_frame(project_store, copy) -> pd.DataFrame:
    from models.features.online_reader import OnlineFeatureReader

    store, _ = project_store
    service = store.get_feature_service(MODEL_FEATURE_SERVICE)
    return OnlineFeatureReader(store, service, 0).read(copy["user"], copy["items"], copy["request_ts"]).frame


def _same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal values, column by column (Feast orders a view's columns by a set)."""
    assert set(expected.columns) <= set(got.columns), sorted(set(expected.columns) - set(got.columns))
    pd.testing.assert_frame_equal(
        got[list(expected.columns)].reset_index(drop=True), expected.reset_index(drop=True), check_exact=True
    )


def test_the_feast_cli_applies_lists_and_materializes_the_project_s_stores(copy, project_store):
    env = copy["env"]
    applied = _run(["feast", "apply"], env)
    assert "Applying changes for project realtime_ctr" in applied
    store, settings = project_store
    views = _run(["feast", "feature-views", "list"], env)
    listed = {line.split()[0] for line in views.splitlines()[1:] if line.strip()}
    registered = {v.name for v in [*store.list_feature_views(), *store.list_on_demand_feature_views()]}
    assert listed == registered and len(listed) == 6
    services = _run(["feast", "feature-services", "list"], env)
    assert {line.split()[0] for line in services.splitlines()[1:] if line.strip()} == {
        MODEL_FEATURE_SERVICE,
        RANKER_FEATURE_SERVICE,
    }
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    _run(["feast", "materialize-incremental", now], env)
    # the apply declared the sources of this data dir, where the project writes them
    for view in store.list_feature_views():
        assert Path(view.batch_source.path).is_relative_to(settings.paths.offline), view.name


def test_feature_store_in_python_gives_the_project_s_online_and_historical_features(copy, project_store):
    from models.features.store import historical_features

    rows = [{"user_id": copy["user"], "item_id": i, REQUEST_TS: copy["request_ts"]} for i in copy["items"]]
    stamps = pd.Series([AT.tz_convert("UTC")] * len(copy["items"]))
    entity_df = pd.DataFrame(
        {
            "user_id": copy["user"],
            "item_id": copy["items"],
            REQUEST_TS: int(AT.timestamp()),
            "event_timestamp": stamps,
        }
    )
    entity_path = copy["data_dir"] / "entity_rows.parquet"
    entity_df.to_parquet(entity_path)
    out = copy["data_dir"] / "historical.parquet"
    answer = _run(
        ["python", "-c", SDK, MODEL_FEATURE_SERVICE, json.dumps(rows), str(entity_path), str(out)],
        copy["env"],
        cwd=ROOT,
    )
    online = pd.DataFrame(json.loads(answer.strip().splitlines()[-1]))
    _same(online, _reader_frame(project_store, copy))

    store, _ = project_store
    ours = historical_features(store, entity_df, store.get_feature_service(MODEL_FEATURE_SERVICE))
    theirs = pd.read_parquet(out)
    keys = ["user_id", "item_id"]
    _same(theirs.sort_values(keys), ours.sort_values(keys))
    assert ours["user_pv_7d"].notna().all() and ours["request_hour"].notna().all()


def test_feast_serve_answers_with_the_on_demand_views_computed(copy, project_store):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = copy["data_dir"] / "feast-serve.log"
    command = ["feast", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with process_group(command, env=copy["env"], cwd=REPO, log=log, ready=f"{url}/health", timeout_s=120):
        n = len(copy["items"])
        body = {
            "feature_service": MODEL_FEATURE_SERVICE,
            "entities": {
                "user_id": [copy["user"]] * n,
                "item_id": copy["items"],
                REQUEST_TS: [copy["request_ts"]] * n,
            },
        }
        response = httpx.post(f"{url}/get-online-features", json=body, timeout=60)
    assert response.status_code == 200, response.text[-2000:]
    answer = response.json()
    names = answer["metadata"]["feature_names"]
    served = pd.DataFrame(
        {name: result["values"] for name, result in zip(names, answer["results"], strict=True)}
    )
    expected = _reader_frame(project_store, copy)
    assert {"request_hour", "user_seconds_since_last_event", "user_category_share_7d"} <= set(served.columns)
    _same(served, expected.drop(columns=[REQUEST_TS], errors="ignore"))
    unknown = served.index[served["item_id"] == UNKNOWN_ITEM][0]
    status = dict(zip(names, (r["statuses"][unknown] for r in answer["results"]), strict=True))
    assert status["item_pv_7d"] == "NOT_FOUND" and status["user_pv_7d"] == "PRESENT"


def test_apply_keeps_the_online_tables_however_the_store_s_path_is_spelled(tmp_path):
    """Feast records the SQLite store's path as the configuration spells it, and on `feast apply`
    drops the tables of a store it finds recorded under another spelling (without creating them
    again). The project's apply and the plain CLI's spell it alike, and the project's apply forgets
    a recorded table of another spelling, or of another data dir, instead of losing it."""
    import sqlite3

    data_dir = tmp_path / "data"
    env = _user_environment(data_dir)
    table = "realtime_ctr_user_behavior_stats"
    spelled = {
        "absolute": str(data_dir / "feast/online.db"),
        "relative to the repo": os.path.relpath(data_dir / "feast/online.db", REPO),
    }
    for name, path in spelled.items():
        yaml_file = tmp_path / f"{name.replace(' ', '_')}.yaml"
        yaml_file.write_text(
            (REPO / "feature_store.yaml").read_text().replace("path: ../var/feast/online.db", f"path: {path}")
        )
        _run(["ctr", "run", "--stage", "apply_features"], {**env, "CTR_FEAST_YAML": str(yaml_file)}, cwd=ROOT)
        with contextlib.closing(sqlite3.connect(data_dir / "feast/online.db")) as db, db:
            if name == "absolute":
                db.execute(f"INSERT INTO {table} (entity_key, feature_name) VALUES (x'01', 'kept')")
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (1,), name
        env[FEAST_YAML_VARIABLE] = _run(
            ["ctr", "feast-yaml"], {**env, "CTR_FEAST_YAML": str(yaml_file)}, cwd=ROOT
        )
        env[FEAST_YAML_VARIABLE] = env[FEAST_YAML_VARIABLE].strip()
        _run(["feast", "apply"], env)  # Feast's own apply of the project's file: nothing to change
        with contextlib.closing(sqlite3.connect(data_dir / "feast/online.db")) as db:
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (1,), name
        env.pop(FEAST_YAML_VARIABLE)

    # A copy of the data dir, applied where it is: the original keeps its tables and rows.
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    _run(["ctr", "run", "--stage", "apply_features"], _user_environment(copy), cwd=ROOT)
    for where in (data_dir, copy):
        assert _online_rows(where / "feast/online.db")[table] == 1, where


def test_applying_an_unchanged_repo_reports_no_change(copy):
    """A materialized store applied again, as a user re-runs the stage: no update is reported, and
    `feast materialize-incremental` still knows how far each view was materialized."""
    out = _run(["ctr", "run", "--stage", "apply_features"], copy["env"], cwd=ROOT)
    assert "No changes to registry" in out, out[-3000:]
    assert "Updated feature view" not in out, out[-3000:]
    intervals = _run(
        [
            "python",
            "-c",
            "from feast import FeatureStore; "
            "print(len(FeatureStore(repo_path='feature_repo').get_feature_view('user_behavior_stats')"
            ".materialization_intervals))",
        ],
        copy["env"],
        cwd=ROOT,
    )
    assert int(intervals.strip().splitlines()[-1]) >= 1
