"""The CeleryExecutor profile for real: `ctr airflow-celery` over a real PostgreSQL (metadata DB
and Celery results) and a real redis-server (broker), with a `default` and a `gpu` Celery worker.
The feature and training DAGs are triggered through the REST API; Airflow's own task instances
say which worker ran what. The `gpu` worker is killed in the middle of a training task and comes
back; Airflow's retry trains again and each model is registered once. Then the same training runs
with `airflow dags test` (the embedded path the other tests use) on the same data, and both give
the same models.

To stay lean it runs the production-profile test's four-day window over the same slice, with the
embedded Feast and MLflow stores in the data dir both workers share.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator

import httpx
import psutil
import pytest

from models.ops.celery_workers import DEFAULT_WORKER, GPU_WORKER
from models.ops.processes import free_port, process_group
from models.registry import (
    TAG_FEATURE_SERVICE,
    TAG_FEATURES,
    TAG_FINGERPRINT,
    TAG_KIND,
    TAG_SYNTHETIC,
    TAG_TRAINING,
)
from models.training.fit import (
    TAG_DEVICE,
    TAG_DEVICE_REASON,
    TAG_DEVICE_REQUESTED,
    TAG_WORKER_HOST,
    TAG_WORKER_QUEUE,
)
from tests.integration._servers import postgres_process
from tests.integration.conftest import ROOT, project_environment, redis_process
from tests.integration.test_production_profile import FEATURE_RUN, WINDOW, _shorter_slice

pytestmark = pytest.mark.integration

TRAINING_TASKS = ("train_xgboost", "train_wide_deep")
MODELS = {"xgboost": "ctr-xgboost", "wide_deep": "ctr-wide-deep"}
START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 900
# A task whose worker died is failed (and retried) once it has not heartbeaten this long; Airflow's
# default is 300 s. Long enough for a loaded 2-core machine never to miss a live task's heartbeat.
HEARTBEAT_TIMEOUT_S = 45
KILL_AFTER_S = 3  # how long a training task has been running when its worker is killed


class Airflow:
    """The REST API of the running profile, logged in."""

    def __init__(self, url: str, password: str) -> None:
        token = httpx.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        assert token.status_code == 201, token.text
        self.client = httpx.Client(
            base_url=f"{url}/api/v2",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=30,
        )

    def get(self, path: str, **params) -> dict:
        return self.client.get(path, params=params).raise_for_status().json()

    def run_path(self, dag_id: str, run_id: str) -> str:
        return f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        found = self.get(f"{self.run_path(dag_id, run_id)}/taskInstances", limit=100)["task_instances"]
        return {t["task_id"]: t for t in found}

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict]:
        path = f"{self.run_path(dag_id, run_id)}/taskInstances/{task_id}/tries"
        return self.get(path)["task_instances"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        path = f"{self.run_path(dag_id, run_id)}/taskInstances/{task_id}/logs/{try_number}"
        response = self.client.get(path, headers={"Accept": "application/json"})
        response.raise_for_status()
        content = response.json().get("content") or []
        return "\n".join(
            f"{e.get('level', '')} {e.get('event', '')}" if isinstance(e, dict) else str(e) for e in content
        )

    def trigger(self, dag_id: str, logical_date: str | None = None, conf: dict | None = None) -> str:
        self.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        body = {"logical_date": logical_date, "conf": conf or {}}
        created = self.client.post(f"/dags/{dag_id}/dagRuns", json=body)
        assert created.status_code == 200, created.text
        return created.json()["dag_run_id"]

    def state(self, dag_id: str, run_id: str) -> str:
        return self.get(self.run_path(dag_id, run_id))["state"]


def _wait_for_dags(api: Airflow, dag_ids: tuple[str, ...], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        dags = {d["dag_id"] for d in api.get("/dags", limit=100)["dags"]}
        if set(dag_ids) <= dags:
            return
        assert time.monotonic() < deadline, f"DAGs parsed: {sorted(dags)}"
        time.sleep(2)


def _wait_for_run(api: Airflow, dag_id: str, run_id: str, on_poll=None) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (state := api.state(dag_id, run_id)) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"{dag_id} {run_id} still {state}: {api.tasks(dag_id, run_id)}"
        if on_poll is not None:
            on_poll()
        time.sleep(0.5 if on_poll is not None else 2)
    return state


def _worker_process(launcher: subprocess.Popen, name: str) -> psutil.Process | None:
    """The Celery worker called `name` that the launcher runs now. Celery rewrites its process
    title (and with it the command line and environment the kernel shows), keeping its arguments."""
    for child in psutil.Process(launcher.pid).children():
        with contextlib.suppress(psutil.Error):
            if f"--celery-hostname {name} " in " ".join(child.cmdline()) + " ":
                return child
    return None


def _kill_worker(worker: psutil.Process) -> None:
    """SIGKILL to the worker's process group, and to the task processes it started: Airflow runs
    each task in a process group of its own, which would otherwise outlive the worker, as it does
    not when its machine or container goes."""
    tree = worker.children(recursive=True)
    os.killpg(worker.pid, signal.SIGKILL)
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _model_versions(tracking_uri: str) -> dict[str, list[dict]]:
    """Every version of each registered model: its aliases, tags and its run's tags."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = {}
    for name in MODELS.values():
        versions = []
        for found_version in client.search_model_versions(f"name='{name}'"):
            # The search leaves the aliases out; reading the version gives them.
            version = client.get_model_version(name, found_version.version)
            run = client.get_run(version.run_id)
            versions.append(
                {
                    "version": str(version.version),
                    "aliases": sorted(version.aliases),
                    "tags": dict(version.tags),
                    "run_tags": dict(run.data.tags),
                    "run_auc": run.data.metrics.get("test_auc", run.data.metrics.get("auc")),
                }
            )
        found[name] = versions
    return found


@pytest.fixture(scope="module")
def celery_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """PostgreSQL, Redis and `ctr airflow-celery`; ctr_features then ctr_training triggered through
    the REST API, the `gpu` worker killed in the middle of a training task; what Airflow recorded
    collected, everything stopped; then the reference training run with `airflow dags test`."""
    root = tmp_path_factory.mktemp("celery")
    (root / "redis").mkdir()
    started = time.monotonic()
    timings: dict[str, float] = {}
    result: dict = {"root": root, "timings": timings}
    with postgres_process() as postgres, redis_process(root / "redis") as redis:
        postgres.create_database("airflow")
        result["expected"] = _shorter_slice(root / "events.csv")
        env = project_environment(
            root / "data",
            CTR_RAW_EVENTS=str(root / "events.csv"),
            **WINDOW,
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres.url("airflow", "psycopg2"),
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{redis.port}/0",
            # Runs come from the REST API only: unpausing the daily feature DAG must not catch up
            # the window one day at a time.
            AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT_S),
        )
        result["env"] = env
        port = free_port()
        log = root / "airflow-celery.log"
        with process_group(
            ["ctr", "airflow-celery", "--port", str(port), "--start-timeout", str(START_TIMEOUT_S)],
            env=env,
            cwd=ROOT,
            log=log,
            ready=lambda: "Airflow UI:" in log.read_text(),
            timeout_s=START_TIMEOUT_S + 30,
            interval_s=1,
            grace_s=60,
            name="ctr airflow-celery",
        ) as launcher:
            timings["start_s"] = time.monotonic() - started
            result["banner"] = log.read_text()
            passwords = root / "data/airflow/simple_auth_manager_passwords.json.generated"
            api = Airflow(f"http://127.0.0.1:{port}", json.loads(passwords.read_text())["admin"])
            _wait_for_dags(api, ("ctr_features", "ctr_training"))

            mark = time.monotonic()
            features = api.trigger("ctr_features", FEATURE_RUN[0], json.loads(FEATURE_RUN[1]))
            result["ctr_features"] = (features, _wait_for_run(api, "ctr_features", features))
            timings["ctr_features_s"] = time.monotonic() - mark

            mark = time.monotonic()
            training = api.trigger("ctr_training")
            killed: dict = {}
            running_since: dict[str, float] = {}
            observed: list[dict] = result.setdefault("observed", [])

            def kill_during_training() -> None:
                if killed:
                    return
                tasks = api.tasks("ctr_training", training)
                observed.append({task_id: tasks[task_id]["state"] for task_id in TRAINING_TASKS})
                for task_id in TRAINING_TASKS:
                    if tasks[task_id]["state"] != "running":
                        continue
                    since = running_since.setdefault(task_id, time.monotonic())
                    worker = _worker_process(launcher, GPU_WORKER.name())
                    if time.monotonic() - since >= KILL_AFTER_S and worker is not None:
                        _kill_worker(worker)
                        killed.update(
                            task_id=task_id, try_number=tasks[task_id]["try_number"], pid=worker.pid
                        )

            state = _wait_for_run(api, "ctr_training", training, on_poll=kill_during_training)
            result["ctr_training"] = (training, state)
            result["killed"] = killed
            timings["ctr_training_s"] = time.monotonic() - mark
            result["tasks"] = {
                dag: api.tasks(dag, result[dag][0]) for dag in ("ctr_features", "ctr_training")
            }
            if killed:
                result["tries"] = api.tries("ctr_training", training, killed["task_id"])
            result["logs"] = {
                task_id: api.log(
                    "ctr_training", training, task_id, result["tasks"]["ctr_training"][task_id]["try_number"]
                )
                for task_id in TRAINING_TASKS
            }
            result["launcher_log"] = log.read_text()
        timings["celery_total_s"] = time.monotonic() - started

    # The same training with `airflow dags test`, on the same data dir, into a registry of its own.
    reference_env = {
        k: v
        for k, v in env.items()
        if not k.startswith(
            ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__", "AIRFLOW__CELERY__", "AIRFLOW__SCHEDULER__")
        )
    }
    reference_env["AIRFLOW_HOME"] = str(root / "reference-airflow")
    reference_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'reference-mlflow.db'}"
    result["celery_versions"] = _model_versions(f"sqlite:///{root / 'data/mlflow/mlflow.db'}")
    mark = time.monotonic()
    for step in (["db", "migrate"], ["dags", "test", "ctr_training"]):
        done = subprocess.run(
            ["ctr", "airflow", *step],
            env=reference_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    timings["reference_training_s"] = time.monotonic() - mark
    result["reference_versions"] = _model_versions(reference_env["MLFLOW_TRACKING_URI"])
    timings["total_s"] = time.monotonic() - started
    print("celery profile, seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print("celery profile, tasks (state, queue, hostname, try):")
    for dag, tasks in result["tasks"].items():
        for task_id, t in tasks.items():
            print(f"  {dag}.{task_id}: {t['state']}, {t['queue']}, {t['hostname']}, try {t['try_number']}")
    for t in result.get("tries", []):
        print(
            f"  killed {t['task_id']} try {t['try_number']}: {t['state']} on {t['hostname']} ({t['queue']})"
        )
    yield result


def _report(celery_run: dict) -> str:
    return (
        json.dumps(
            {
                dag: {t: (v["state"], v["queue"], v["hostname"]) for t, v in tasks.items()}
                for dag, tasks in celery_run.get("tasks", {}).items()
            },
            indent=1,
        )
        + "\n"
        + celery_run.get("launcher_log", "")[-3000:]
    )


def test_both_runs_succeed_and_the_launcher_says_what_it_started(celery_run):
    assert celery_run["ctr_features"][1] == "success", _report(celery_run)
    assert celery_run["ctr_training"][1] == "success", _report(celery_run)
    banner = celery_run["banner"]
    assert "(CeleryExecutor, broker redis://127.0.0.1:" in banner
    for worker in (DEFAULT_WORKER, GPU_WORKER):
        assert f"worker {worker.name()}: queue {worker.queue}" in banner


def test_training_tasks_ran_on_the_gpu_worker_and_everything_else_on_the_default_one(celery_run):
    host = socket.gethostname()
    ran = {
        (dag, task_id): (t["queue"], t["hostname"])
        for dag, tasks in celery_run["tasks"].items()
        for task_id, t in tasks.items()
        if t["state"] == "success"
    }
    training = {key: where for key, where in ran.items() if key[1] in TRAINING_TASKS}
    others = {key: where for key, where in ran.items() if key[1] not in TRAINING_TASKS}
    assert set(training) == {("ctr_training", task) for task in TRAINING_TASKS}, _report(celery_run)
    assert set(training.values()) == {("gpu", f"gpu@{host}")}, training
    assert len(others) >= 10 and set(others.values()) == {("default", f"default@{host}")}, others
    # Nothing else ran: every task succeeded, or was skipped by a short circuit.
    states = {t["state"] for tasks in celery_run["tasks"].values() for t in tasks.values()}
    assert states <= {"success", "skipped"}, _report(celery_run)


def test_a_killed_gpu_worker_is_replaced_and_the_retry_trains_once_more(celery_run):
    killed = celery_run["killed"]
    assert killed, f"no training task was seen running on the gpu worker: {celery_run['observed']}"
    tries = {t["try_number"]: t for t in celery_run["tries"]}
    first, last = tries[killed["try_number"]], tries[max(tries)]
    # The try that was running when its worker died failed (no heartbeat); the next one, on the
    # restarted gpu worker, succeeded.
    assert first["state"] == "failed" and first["hostname"] == f"gpu@{socket.gethostname()}", first
    assert last["try_number"] == killed["try_number"] + 1 and last["state"] == "success", last
    assert last["hostname"] == first["hostname"] and last["queue"] == "gpu"
    assert "worker-gpu exited with -9; starting it again" in celery_run["launcher_log"]
    # One version per model, not one per try.
    assert {
        name: [v["version"] for v in versions] for name, versions in celery_run["celery_versions"].items()
    } == {name: ["1"] for name in MODELS.values()}


def test_each_training_records_its_worker_queue_and_device(celery_run):
    host = f"gpu@{socket.gethostname()}"
    for versions in celery_run["celery_versions"].values():
        (version,) = versions
        for tags in (version["run_tags"], version["tags"]):
            assert tags[TAG_WORKER_HOST] == host and tags[TAG_WORKER_QUEUE] == "gpu", tags
            # No GPU here: the gpu worker (CTR_DEVICE=cuda) trained on the CPU, and says so.
            assert tags[TAG_DEVICE] == "cpu" and tags[TAG_DEVICE_REQUESTED] == "cuda", tags
            assert "no GPU is visible" in tags[TAG_DEVICE_REASON], tags
        assert version["run_tags"][TAG_SYNTHETIC] == "false"  # trained on the real slice
    for task_id, log in celery_run["logs"].items():
        kind = task_id.removeprefix("train_")
        assert (
            f"warning {kind} on worker {host} (queue gpu), device cpu: CTR_DEVICE=cuda but no GPU is visible"
            in log
        ), log[-3000:]


def test_the_models_are_registered_as_the_embedded_run_registers_them(celery_run):
    celery, reference = celery_run["celery_versions"], celery_run["reference_versions"]
    for name in MODELS.values():
        (ours,), (theirs,) = celery[name], reference[name]
        assert ours["version"] == theirs["version"] == "1"
        assert ours["aliases"] == theirs["aliases"], (ours["aliases"], theirs["aliases"])
        for tag in (TAG_KIND, TAG_FEATURE_SERVICE, TAG_FINGERPRINT, TAG_FEATURES, TAG_TRAINING):
            assert ours["tags"].get(tag) == theirs["tags"].get(tag), tag
        # Same rows, seed and device: the same model, to the last digit of its test AUC.
        assert ours["tags"]["test_auc"] == theirs["tags"]["test_auc"], (name, ours["tags"], theirs["tags"])
        assert theirs["tags"][TAG_WORKER_QUEUE] == "default"  # `airflow dags test` runs no queue
