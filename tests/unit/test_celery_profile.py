"""The CeleryExecutor profile's configuration, without servers (tests/integration/
test_celery_workers.py runs the profile itself)."""

from __future__ import annotations

import socket
import subprocess
import sys

from models.ops.celery_workers import DEFAULT_WORKER, GPU_WORKER, metadata_db_problem, worker_hostname
from models.settings import CELERY_EXECUTOR, WORKER_HOSTNAME_CALLABLE, airflow_environment, get_settings

POSTGRES = "postgresql+psycopg2://ctr:secret@127.0.0.1:5432/airflow"


def test_the_celery_executor_brings_the_profile_defaults_and_set_values_win():
    settings = get_settings()
    env = airflow_environment(
        settings,
        {"AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": POSTGRES},
    )
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{POSTGRES}"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/0"
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == DEFAULT_WORKER.queue
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == WORKER_HOSTNAME_CALLABLE
    mine = airflow_environment(
        settings,
        {"AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR, "AIRFLOW__CELERY__BROKER_URL": "redis://broker:6379/0"},
    )
    assert mine["AIRFLOW__CELERY__BROKER_URL"] == "redis://broker:6379/0"
    assert "AIRFLOW__CELERY__RESULT_BACKEND" not in mine  # no metadata DB named: nothing to derive it from
    # The embedded profile is left as it was.
    local = airflow_environment(settings, {})
    assert not any(key.startswith("AIRFLOW__CELERY__") for key in local)
    assert "AIRFLOW__CORE__HOSTNAME_CALLABLE" not in local


def test_the_hostname_callable_names_the_worker_or_the_machine(monkeypatch):
    import importlib

    module, _, name = WORKER_HOSTNAME_CALLABLE.rpartition(".")
    assert getattr(importlib.import_module(module), name) is worker_hostname  # Airflow imports it so
    monkeypatch.setenv("CTR_WORKER_NAME", "gpu@trainer-1")
    assert worker_hostname() == "gpu@trainer-1"
    monkeypatch.delenv("CTR_WORKER_NAME")
    assert worker_hostname() == socket.getfqdn()


def test_the_workers_commands_and_devices():
    assert DEFAULT_WORKER.airflow_args() == ["celery", "worker", "--queues", "default"]
    assert GPU_WORKER.airflow_args() == ["celery", "worker", "--queues", "gpu", "--concurrency", "1"]
    assert GPU_WORKER.local_args("box")[-3:] == ["--celery-hostname", "gpu@box", "--skip-serve-logs"]
    env = GPU_WORKER.environment({"PATH": "/bin"}, "box")
    assert env["CTR_WORKER_NAME"] == "gpu@box" and env["CTR_DEVICE"] == "cuda"
    assert GPU_WORKER.environment({"CTR_DEVICE": "auto"}, "box")["CTR_DEVICE"] == "auto"  # a set value wins


def test_sqlite_is_refused_for_celery_and_the_command_says_what_to_set(tmp_path):
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://" in metadata_db_problem({})
    assert metadata_db_problem({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////tmp/a.db"})
    assert metadata_db_problem({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": POSTGRES}) is None
    env = {"PATH": "/usr/bin:/bin", "CTR_DATA_DIR": str(tmp_path), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "models.cli", "airflow-celery"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "the CeleryExecutor needs a metadata DB every component and worker reaches" in done.stderr
