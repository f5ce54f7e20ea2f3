"""The production profile on real servers: the same DAGs and service, switched by environment
variables only, with Airflow's metadata DB, MLflow's backend store and the Feast registry in a real
PostgreSQL, MLflow behind a real `mlflow server` (artifacts proxied through it), and the Feast
online store in a real redis-server. Both are behind credentials, as the profile runs them: Redis
with one ACL user per role (infra/redis/acl.py, no access without one), MLflow behind its
basic-auth app (infra/mlflow/serve.sh) with the pipeline's and the ranker's accounts
(infra/mlflow/create_experiments.py); the pipeline and the service each get their own, and the
promotion records are signed with a CTR_PROMOTION_KEY they share.

To stay cheap it runs a shorter window (train 11-29..30, early stopping 12-01, test 12-02) over the
same slice without the days outside it: the feature DAG for those four days, then training.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import runpy
import secrets
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from feature_repo.contract import MODEL_FEATURE_SERVICE, RANKER_FEATURE_SERVICE
from models.settings import PROJECT_ROOT, default_raw_events
from tests.integration._servers import acl_redis_process, mlflow_server, postgres_process
from tests.integration.conftest import bentoml_serve, project_environment, run_dag

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
REDIS_PASSWORDS = (
    "CTR_REDIS_ADMIN_PASSWORD",
    "CTR_REDIS_RANKER_PASSWORD",
    "CTR_REDIS_FEATURES_PASSWORD",
    "CTR_REDIS_CELERY_PASSWORD",
)
PIPELINE, RANKER = "ctr-pipeline", "ctr-ranker"  # the MLflow accounts


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
    # The secrets of this deployment: generated here, as a cluster's would be, never committed.
    redis_passwords = {name: secrets.token_urlsafe(24) for name in REDIS_PASSWORDS}
    mlflow_passwords = {"admin": secrets.token_urlsafe(24), PIPELINE: secrets.token_urlsafe(24)}
    mlflow_passwords[RANKER] = secrets.token_urlsafe(24)
    promotion_key = secrets.token_hex(32)
    with postgres_process() as postgres, acl_redis_process(root / "redis", redis_passwords) as redis:
        for database in ("airflow", "mlflow", "mlflow_auth", "feast"):
            postgres.create_database(database)
        timings["postgres_and_redis_s"] = time.monotonic() - started
        mark = time.monotonic()
        server_env = {
            **project_environment(root / "mlflow-server"),
            "MLFLOW_AUTH_DATABASE_URI": postgres.url("mlflow_auth", "psycopg2"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_passwords["admin"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_AUTH_CONFIG_PATH": str(root / "mlflow-basic-auth.ini"),
        }
        with mlflow_server(
            postgres.url("mlflow", "psycopg2"),
            root / "mlflow-artifacts",
            root / "mlflow-server.log",
            env=server_env,
            basic_auth=True,
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
                # The pipeline's Redis user (materialize writes) and MLflow account (registers,
                # moves aliases); the service gets its own below.
                CTR_REDIS_CONNECTION=redis.connection_for("ctr-features"),
                AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres.url("airflow", "psycopg2"),
                AIRFLOW__CORE__EXECUTOR="LocalExecutor",
                MLFLOW_TRACKING_USERNAME=PIPELINE,
                MLFLOW_TRACKING_PASSWORD=mlflow_passwords[PIPELINE],
                CTR_PROMOTION_KEY=promotion_key,
            )
            env["MLFLOW_TRACKING_URI"] = tracking  # project_environment drops it
            serving_env = {
                **env,
                "CTR_REDIS_CONNECTION": redis.connection_for("ctr-ranker"),
                "MLFLOW_TRACKING_USERNAME": RANKER,
                "MLFLOW_TRACKING_PASSWORD": mlflow_passwords[RANKER],
            }
            mark = time.monotonic()
            bootstrap = _create_experiments(
                {
                    **env,
                    "MLFLOW_TRACKING_USERNAME": "admin",
                    "MLFLOW_TRACKING_PASSWORD": mlflow_passwords["admin"],
                    "CTR_MLFLOW_PIPELINE_USERNAME": PIPELINE,
                    "CTR_MLFLOW_PIPELINE_PASSWORD": mlflow_passwords[PIPELINE],
                    "CTR_MLFLOW_RANKER_USERNAME": RANKER,
                    "CTR_MLFLOW_RANKER_PASSWORD": mlflow_passwords[RANKER],
                }
            )
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
                "serving_env": serving_env,
                "mlflow_passwords": mlflow_passwords,
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
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "CTR_PROMOTION_KEY",
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
    client = production["redis"].client("ctr-ranker")
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
    # The service with its own credentials: read-only in Redis and in MLflow.
    env = {**production["serving_env"], "CTR_SERVING_LOG": str(production["root"] / "serving_log")}
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


# --- who may do what: Redis users, MLflow accounts, the promotion record ----------------------


def test_redis_refuses_clients_without_credentials_and_the_ranker_cannot_write(production):
    _succeeded(production)
    import redis as redis_py

    server = production["redis"]
    anonymous = server.client()
    with pytest.raises(redis_py.AuthenticationError, match="Authentication required"):  # NOAUTH
        anonymous.get("anything")
    anonymous.close()
    with pytest.raises(redis_py.AuthenticationError, match="invalid username-password pair"):
        server.client("ctr-ranker", "not-the-password-at-all").ping()

    ranker = server.client("ctr-ranker")
    try:
        key = next(ranker.scan_iter(count=100))  # it reads the features ...
        assert ranker.hgetall(key)
        with pytest.raises(redis_py.exceptions.NoPermissionError):  # ... and writes nothing
            ranker.hset(key, "forged", b"1")
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            ranker.delete(key)
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            ranker.flushall()
    finally:
        ranker.close()
    features = server.client("ctr-features")
    try:  # the pipeline's user writes (materialize did), but never wipes the store
        assert features.set("ctr:acl-check", "1") and features.delete("ctr:acl-check") == 1
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            features.flushdb()
    finally:
        features.close()


def _mlflow_as(production, monkeypatch, account: str | None):
    """An MlflowClient on the tracking server as `account` (None: no credentials)."""
    from mlflow import MlflowClient

    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    if account is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", account)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", production["mlflow_passwords"][account])
    return MlflowClient(production["tracking"])


def test_mlflow_lets_the_pipeline_move_aliases_and_the_ranker_only_read(production, monkeypatch):
    _succeeded(production)
    from mlflow.exceptions import MlflowException

    ranker = _mlflow_as(production, monkeypatch, RANKER)
    champion = ranker.get_model_version_by_alias("ctr-xgboost", "champion")
    assert champion.version == "1" and ranker.get_run(champion.run_id).data.metrics["auc"] > 0.5
    for write in (
        lambda: ranker.set_registered_model_alias("ctr-xgboost", "champion", "1"),
        lambda: ranker.set_model_version_tag("ctr-xgboost", "1", "promotion_record", "{}"),
        lambda: ranker.create_model_version("ctr-xgboost", champion.source, champion.run_id),
    ):
        with pytest.raises(MlflowException, match="403"):
            write()
    with pytest.raises(MlflowException, match="401"):
        _mlflow_as(production, monkeypatch, None).get_model_version_by_alias("ctr-xgboost", "champion")

    pipeline = _mlflow_as(production, monkeypatch, PIPELINE)
    pipeline.set_registered_model_alias("ctr-xgboost", "access-check", "1")
    assert pipeline.get_model_version_by_alias("ctr-xgboost", "access-check").version == "1"
    pipeline.delete_registered_model_alias("ctr-xgboost", "access-check")


def _reload(url: str) -> dict:
    response = httpx.post(f"{url}/reload", json={}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _refusals(url: str) -> dict[str, float]:
    """ctr_model_refusals_total per reason, from the service's /metrics."""
    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ctr_model_refusals_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('reason="')[1].split('"')[0]] = float(value)
    return found


def test_the_ranker_serves_only_versions_the_gate_promoted(production, production_environment):
    """Whoever can write to MLflow (here: the pipeline's own account) moves `champion` by hand to
    a version the gate rejected, then to versions with a forged and a borrowed record: the running
    service refuses each at reload, counts it, and keeps serving v1; a new one refuses to start."""
    _succeeded(production)
    import pandas as pd

    from feature_repo.contract import LABEL, USER_ID
    from models.evaluation.metrics import ctr_metrics
    from models.evaluation.promotion import log_candidate, promote_if_better
    from models.evaluation.report import run_metrics
    from models.features.training_set import split_by_time
    from models.registry import TAG_PROMOTION_RECORD, client, sign_record
    from models.scoring import load_saved

    settings = production_environment
    tracking = client(settings)
    name = "ctr-xgboost"
    first = tracking.get_model_version(name, "1")

    # The gate rejects the same model trained again: an equal AUC is not promoted. It stays a
    # challenger, admitted as such only (or, should it fail a sanity check on a busy machine, it
    # is admitted as nothing).
    model = load_saved(settings.paths.trained_model_dir("xgboost"))
    split = split_by_time(
        pd.read_parquet(settings.paths.training_set), settings.valid_start, settings.test_start
    )
    y = split.test[LABEL].to_numpy()
    metrics = ctr_metrics(y, model.predict(split.test), split.test[USER_ID].to_numpy())
    fingerprint = first.tags["feature_service_fingerprint"]
    rejected = log_candidate(
        settings, model, split.test, y, run_metrics(metrics), {}, MODEL_FEATURE_SERVICE, fingerprint
    )
    decision = promote_if_better(settings, model, rejected, metrics, split.test, y, fingerprint, 0.5)
    assert not decision["promoted"], decision
    if "sanity checks failed" in decision["reason"]:
        refusal = ("missing", "has no promotion record")
    else:
        assert "<=" in decision["reason"], decision
        refusal = ("alias", "admitted it as 'challenger'")

    # Two copies of v1 (MLflow's copy keeps its tags): one with a forged record (v1's, rewritten for
    # the copy and signed with a guessed key), one with v1's genuine record as it was.
    forged_version = tracking.copy_model_version(f"models:/{name}/1", name).version  # tags and all
    record = json.loads(first.tags[TAG_PROMOTION_RECORD])
    forged = sign_record({**record, "version": str(forged_version)}, b"guessed-key-guessed-key-guessed")
    tracking.set_model_version_tag(name, forged_version, TAG_PROMOTION_RECORD, json.dumps(forged))
    borrowed_version = tracking.copy_model_version(f"models:/{name}/1", name).version

    env = {
        **production["serving_env"],
        "CTR_SERVING_LOG": str(production["root"] / "serving_log_gate"),
        "CTR_MODEL_RELOAD_S": "3600",  # it checks when told to (/reload), as after a deployment
        "CTR_CHALLENGER_SHARE": "0",
    }
    seen = {}
    try:
        with bentoml_serve(["ctr", "serve"], env, production["root"] / "serve-gate.log", timeout=300) as url:
            for version, reason, says in (
                (rejected, *refusal),
                (forged_version, "signature", "not signed with the promotion key"),
                (borrowed_version, "mismatch", f"version '1' != '{borrowed_version}'"),
            ):
                tracking.set_registered_model_alias(name, "champion", str(version))
                answer = _reload(url)
                assert answer["champion"] == "1" and not answer["changed"], answer
                assert says in answer["last_error"], answer
                assert _refusals(url).get(reason) == 1.0, _refusals(url)
                ranked = httpx.post(
                    f"{url}/rank",
                    json={"user_id": 1, "item_ids": [283, 2268318], "context": {"request_ts": AT}},
                    timeout=30,
                )
                assert ranked.status_code == 200 and ranked.json()["model"]["version"] == "1", ranked.text
                seen[reason] = answer["reload_failures"]
            again = _reload(url)  # the same refused version is not fetched, counted or logged again
            assert again["reload_failures"] == seen["mismatch"] and _refusals(url)["mismatch"] == 1.0
        assert "still serving the current version" in (production["root"] / "serve-gate.log").read_text()

        # At load: a new replica does not start on a champion the gate did not promote.
        started = subprocess.run(
            ["ctr", "serve", "--port", "1"],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert started.returncode == 2, started.stderr[-2000:]
        assert f"{name} v{borrowed_version}: its promotion record does not match" in started.stderr
    finally:
        tracking.set_registered_model_alias(name, "champion", "1")
