"""Shared fixtures. Integration tests work in a temporary CTR_DATA_DIR so they never touch var/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def feast_yaml_for(data_dir: Path) -> Path:
    """The project's feature_store.yaml with its registry and online store moved under data_dir."""
    text = (ROOT / "feature_repo/feature_store.yaml").read_text()
    target = data_dir / "feature_store.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(text.replace("../var/feast", str(data_dir / "feast")))
    return target


def project_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CTR_DATA_DIR=str(data_dir),
        CTR_FEAST_YAML=str(feast_yaml_for(data_dir)),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    env["AIRFLOW_HOME"] = str(data_dir / "airflow")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def migrate_airflow(env: dict[str, str], timeout: int = 300) -> None:
    """`airflow db migrate` on the environment's own SQLite metadata DB."""
    migrate = subprocess.run(
        ["ctr", "airflow", "db", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]


def run_dag(env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """`airflow db migrate` then `airflow dags test ctr_pipeline`, through the project's CLI."""
    migrate_airflow(env)
    return subprocess.run(
        ["ctr", "airflow", "dags", "test", "ctr_pipeline"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def use_environment(monkeypatch: pytest.MonkeyPatch):
    """Apply a project environment to this test process (for in-process Feast/MLflow reads)."""

    def apply(env: dict[str, str]) -> None:
        for key in ("CTR_DATA_DIR", "CTR_FEAST_YAML", "CTR_RAW_EVENTS"):
            if key in env:
                monkeypatch.setenv(key, env[key])
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    return apply


@pytest.fixture(scope="session")
def dag_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One real Airflow run of ctr_pipeline on the Taobao slice, shared by the integration tests."""
    data_dir = tmp_path_factory.mktemp("pipeline")
    env = project_environment(data_dir)
    result = run_dag(env)
    yield {"env": env, "data_dir": data_dir, "result": result, "output": result.stdout + result.stderr}
