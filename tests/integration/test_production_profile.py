"""The production profile on real servers: the same DAGs and service, switched by environment
variables only, with Airflow's metadata DB, MLflow's backend store and the Feast registry in a real
PostgreSQL, MLflow behind a real `mlflow server` (artifacts proxied through it), and the Feast
online store in a real redis-server.

To stay cheap it runs a shorter window (train 11-29..30, early stopping 12-01, test 12-02) over the
same slice without the days outside it: the feature DAG for those four days, then training.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import runpy
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from feature_repo.contract import MODEL_FEATURE_SERVICE, RANKER_FEATURE_SERVICE
from models.settings import PROJECT_ROOT, default_raw_events
from tests.integration._servers import mlflow_server, postgres_process
from tests.integration.conftest import bentoml_serve, project_environment, redis_process, run_dag

pytestmark = pytest.mark.integration

WINDOW = {
    "CTR_WINDOW_START": "2017-11-29T00:00:00+08:00",
    "CTR_VALID_START": "2017-12-01T00:00:00+08:00",
    "CTR_TEST_START": "2017-12-02T00:00:00+08:00",
    "CTR_WINDOW_END": "2017-12-03T00:00:00+08:00",
}
FEATURE_RUN = ("2017-12-03T00:00:00+08:00", '{"days": 4}')  # the four days ending at the window's end
PRODUCTION_FEAST_YAML = PROJECT_ROOT / "infra/feast/feature_store.production.yaml"
PERIOD_START = datetime.fromisoformat("2017-11-25T00:00:00+08:00").timestamp()  # the dataset's period
WINDOW_START = datetime.fromisoformat(WINDOW["CTR_WINDOW_START"]).timestamp()
WINDOW_END = datetime.fromisoformat(WINDOW["CTR_WINDOW_END"]).timestamp()
AT = 1512187200  # 2017-12-02 12:00 in Beijing


def _shorter_slice(target: Path) -> dict[str, int]:
    """The raw slice without its rows of 11-25..11-28 and 12-03: only the window's days, and the rows
    before the dataset's period, which validation quarantines as in the whole-window run. Returns the
    counts the pipeline must reproduce."""
    source = default_raw_events()
    opener = gzip.open if source.suffix == ".gz" else open
    kept, before_period, user_1_views = [], 0, 0
    with opener(source, "rt") as lines:
        for line in lines:
            user, _, _, behavior, stamp = line.rstrip("\n").split(",")
            if PERIOD_START <= int(stamp) < WINDOW_START or int(stamp) >= WINDOW_END:
                continue
            kept.append(line)
            before_period += int(stamp) < PERIOD_START
            user_1_views += user == "1" and behavior == "pv" and int(stamp) >= WINDOW_START
    target.write_text("".join(kept))
    return {"input_rows": len(kept), "quarantined_rows": before_period, "user_1_pv": user_1_views}


def _create_experiments(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """infra/mlflow/create_experiments.py in this process, with `env`: no second MLflow import."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        script = runpy.run_path(str(PROJECT_ROOT / "infra/mlflow/create_experiments.py"))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = script["main"]()
    return subprocess.CompletedProcess(["create_experiments.py"], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """Start PostgreSQL, Redis and an MLflow server, run the feature and training DAGs against them,
    keep everything up for the module's tests, then stop it all."""
    root = tmp_path_factory.mktemp("production")
    (root / "redis").mkdir()
    timings: dict[str, float] = {}
    started = time.monotonic()
    with postgres_process() as postgres, redis_process(root / "redis") as redis:
        for database in ("airflow", "mlflow", "feast"):
            postgres.create_database(database)
        timings["postgres_and_redis_s"] = time.monotonic() - started
        mark = time.monotonic()
        with mlflow_server(
            postgres.url("mlflow", "psycopg2"), root / "mlflow-artifacts", root / "mlflow-server.log"
        ) as tracking:
            timings["mlflow_server_s"] = time.monotonic() - mark
            expected = _shorter_slice(root / "events.csv")
            env = project_environment(
                root / "data",
                CTR_RAW_EVENTS=str(root / "events.csv"),
                **WINDOW,
                CTR_FEAST_YAML=str(PRODUCTION_FEAST_YAML),
                CTR_FEAST_SQL_REGISTRY=postgres.url("feast", "psycopg2"),
                CTR_ONLINE_STORE="redis",
                CTR_REDIS_CONNECTION=redis.connection,
                AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres.url("airflow", "psycopg2"),
                AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            )
            env["MLFLOW_TRACKING_URI"] = tracking  # project_environment drops it
            mark = time.monotonic()
            bootstrap = _create_experiments(env)
            timings["create_experiments_s"] = time.monotonic() - mark
            mark = time.monotonic()
            runs = {"ctr_features": run_dag(env, "ctr_features", *FEATURE_RUN)}
            timings["ctr_features_s"] = time.monotonic() - mark
            if runs["ctr_features"].returncode == 0:
                mark = time.monotonic()
                # The metadata DB is migrated already: straight to `airflow dags test`.
                runs["ctr_training"] = subprocess.run(
                    ["ctr", "airflow", "dags", "test", "ctr_training"],
                    env=env,
                    cwd=PROJECT_ROOT,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                timings["ctr_training_s"] = time.monotonic() - mark
            yield {
                "root": root,
                "env": env,
                "postgres": postgres,
                "redis": redis,
                "tracking": tracking,
                "bootstrap": bootstrap,
                "runs": runs,
                "expected": expected,
                "timings": timings,
                "output": "\n".join(r.stdout[-4000:] + r.stderr[-4000:] for r in runs.values()),
            }


@pytest.fixture
def production_environment(production, monkeypatch):
    """This process reads the production stores (SQL registry, Redis, the MLflow server) too."""
    for key in (
        "CTR_DATA_DIR",
        "CTR_RAW_EVENTS",
        "CTR_FEAST_YAML",
        "CTR_FEAST_SQL_REGISTRY",
        "CTR_ONLINE_STORE",
        "CTR_REDIS_CONNECTION",
        "MLFLOW_TRACKING_URI",
        *WINDOW,
    ):
        monkeypatch.setenv(key, production["env"][key])
    from models.settings import get_settings

    return get_settings()


def _succeeded(production) -> None:
    assert production["bootstrap"].returncode == 0, production["bootstrap"].stderr[-2000:]
    assert "ctr_training" in production["runs"], production["output"]
    for dag_id, run in production["runs"].items():
        assert run.returncode == 0 and "state=success" in run.stdout, f"{dag_id}:\n{production['output']}"


def test_the_dags_run_green_with_airflow_state_in_postgres(production):
    _succeeded(production)
    runs = production["postgres"].query("airflow", "SELECT dag_id, state FROM dag_run ORDER BY dag_id")
    assert runs == [("ctr_features", "success"), ("ctr_training", "success")]
    tasks = dict(
        production["postgres"].query(
            "airflow", "SELECT task_id, state FROM task_instance WHERE dag_id = 'ctr_training'"
        )
    )
    assert tasks["train_xgboost"] == tasks["train_wide_deep"] == tasks["register"] == "success"
    # Nothing fell back to the embedded SQLite metadata DB.
    assert not (production["root"] / "data/airflow/airflow.db").exists()
    durations = production["postgres"].query(
        "airflow", "SELECT dag_id || '.' || task_id, duration FROM task_instance ORDER BY start_date"
    )
    timings = {**production["timings"], **{task: seconds for task, seconds in durations if seconds}}
    print("production profile, seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1))


def test_validation_reconciles_and_features_are_online_in_redis(production, production_environment):
    _succeeded(production)
    from models.features.store import open_store
    from models.pipeline import validation_totals

    settings = production_environment
    expected = production["expected"]
    # The window's four days, plus the 35 rows before the dataset's period (quarantined, as in the
    # whole-window run): 38,278 accepted + 35 quarantined = 38,313 input rows.
    assert expected == {"input_rows": 38313, "quarantined_rows": 35, "user_1_pv": 26}
    totals = validation_totals(settings)
    assert totals["days"] == 4 and totals["failed_days"] == []
    assert totals["quarantined_rows"] == expected["quarantined_rows"]
    assert (
        totals["accepted_rows"] + totals["quarantined_rows"] == totals["input_rows"] == expected["input_rows"]
    )

    store = open_store(settings)
    assert type(store.registry).__name__ == "SqlRegistry" and store.config.online_store.type == "redis"
    online = store.get_online_features(
        features=store.get_feature_service(RANKER_FEATURE_SERVICE),
        entity_rows=[{"user_id": 1, "item_id": 283}],
    ).to_dict()
    # user 1 viewed 26 items in the window's four days (48 in the whole window's last seven)
    assert online["user_pv_7d"] == [float(expected["user_1_pv"])]
    assert online["item_pv_7d"][0] is not None

    # The registry is the SQL one in PostgreSQL; no file registry was written.
    services = production["postgres"].query("feast", "SELECT feature_service_name FROM feature_services")
    assert {MODEL_FEATURE_SERVICE, RANKER_FEATURE_SERVICE} <= {name for (name,) in services}
    assert not (settings.data_dir / "feast/registry.db").exists()
    import redis

    client = redis.Redis(host="127.0.0.1", port=production["redis"].port)
    try:
        assert client.dbsize() > 1000  # users, items and categories materialized
    finally:
        client.close()


def test_champions_are_registered_on_the_tracking_server(production, production_environment):
    _succeeded(production)
    from models.registry import client, load_by_alias

    settings = production_environment
    for name, kind in (("ctr-xgboost", "xgboost"), ("ctr-wide-deep", "wide_deep")):
        champion = load_by_alias(settings, name=name)
        assert champion.version == "1" and champion.kind == kind
        assert champion.feature_service == MODEL_FEATURE_SERVICE
    tracking = client(settings)
    experiment = tracking.get_experiment_by_name(settings.experiment)
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    # Artifacts went through the server into its destination; MLflow's state is in PostgreSQL.
    assert list((production["root"] / "mlflow-artifacts").rglob("MLmodel"))
    assert not (settings.data_dir / "mlflow").exists()
    versions = production["postgres"].query(
        "mlflow", "SELECT name, version FROM model_versions ORDER BY name, version"
    )
    assert versions == [("ctr-wide-deep", 1), ("ctr-xgboost", 1)]


def test_the_service_ranks_with_the_champion_from_redis_and_the_tracking_server(production):
    _succeeded(production)
    env = {**production["env"], "CTR_SERVING_LOG": str(production["root"] / "serving_log")}
    with bentoml_serve(["ctr", "serve"], env, production["root"] / "serve.log") as url:
        items = [283, 2268318, 2333346, 4365585]
        response = httpx.post(
            f"{url}/rank",
            json={"user_id": 1, "item_ids": items, "context": {"request_ts": AT}},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        ready = httpx.get(f"{url}/readyz", timeout=5)
    assert sorted(i["item_id"] for i in body["items"]) == sorted(items)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model"] == {
        "name": "ctr-xgboost",
        "version": "1",
        "feature_service": MODEL_FEATURE_SERVICE,
        "variant": "champion",
    }
    assert body["fallback"] is False
    assert ready.status_code == 200
