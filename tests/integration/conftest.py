"""Fixtures and helpers of the integration tests: they work in a temporary CTR_DATA_DIR so they never
touch var/, run the DAGs through the project's CLI and start real servers (bentoml serve,
redis-server) as child processes, each stopped afterwards with everything it started."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.ops.processes import free_port, process_group, start_process_group, stop_process_group, wait_ready

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
FEAST_STORE_VARIABLES = ("CTR_ONLINE_STORE", "CTR_REDIS_CONNECTION", "CTR_FEAST_REGISTRY_TTL_S")


def project_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CTR_DATA_DIR=str(data_dir),
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


# The whole Taobao window in one run of the daily feature DAG: the 9 days ending at its end.
WHOLE_WINDOW = ("2017-12-04T00:00:00+08:00", '{"days": 9}')


def run_dag(
    env: dict[str, str],
    dag_id: str = "ctr_features",
    logical_date: str | None = WHOLE_WINDOW[0],
    conf: str | None = WHOLE_WINDOW[1],
    timeout: int = 600,
) -> subprocess.CompletedProcess[str]:
    """`airflow dags test DAG [DATE] [-c CONF]` through the project's CLI (after `db migrate`)."""
    migrate_airflow(env)
    command = ["ctr", "airflow", "dags", "test", dag_id, *([logical_date] if logical_date else [])]
    return subprocess.run(
        [*command, *(["-c", conf] if conf else [])],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class FakeClock:
    """A monotonic clock a test moves by hand (`clock.now += seconds`), for caches' TTLs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def use_environment(monkeypatch: pytest.MonkeyPatch):
    """Apply a project environment to this test process (for in-process Feast/MLflow reads)."""

    def apply(env: dict[str, str]) -> None:
        for key in ("CTR_DATA_DIR", "CTR_FEAST_YAML", "CTR_RAW_EVENTS", *FEAST_STORE_VARIABLES):
            if key in env:
                monkeypatch.setenv(key, env[key])
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    return apply


@pytest.fixture(scope="session")
def dag_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The feature DAG over the whole Taobao slice, then the training DAG: real Airflow runs whose
    data dir (features online, champions registered) the integration tests share."""
    data_dir = tmp_path_factory.mktemp("pipeline")
    env = project_environment(data_dir)
    runs = {"ctr_features": run_dag(env)}
    if runs["ctr_features"].returncode == 0:
        runs["ctr_training"] = run_dag(env, "ctr_training", None, None)
    output = "\n".join(r.stdout + r.stderr for r in runs.values())
    result = subprocess.CompletedProcess(list(runs), max(r.returncode for r in runs.values()), output, "")
    yield {"env": env, "data_dir": data_dir, "result": result, "output": output, "runs": runs}


@contextlib.contextmanager
def bentoml_serve(
    command: list[str], env: dict[str, str], log: Path, timeout: float = 120, ready_path: str = "/readyz"
) -> Iterator[str]:
    """Run `command --port PORT` (a `bentoml serve` through the ctr CLI) until `ready_path` answers
    200 (/livez for a service that is up but expected not to be ready); yields its URL and stops it,
    with its workers, afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process_group(
        [*command, "--port", str(port)],
        env=env,
        cwd=ROOT,
        log=log,
        ready=f"{url}{ready_path}",
        timeout_s=timeout,
        name="bentoml serve",
    ):
        yield url


class RedisProcess:
    """A real redis-server (Debian package; `make test` installs it) on a free loopback port, that a
    test can stop and start again on the same port. `stop()` saves the data first and `start()`
    loads it, as a production Redis with persistence would come back."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail(
                "redis-server is not installed: `make test` installs it, or `apt-get install redis-server`"
            )
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def connection(self) -> str:
        """Feast's connection string, ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def _client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)

    def _answers_ping(self) -> bool:
        client = self._client()
        try:
            return client.ping()
        finally:
            client.close()

    def _arguments(self) -> list[str]:
        """The server's command line: loopback only, no automatic snapshots (stop() saves one)."""
        port = str(self.port)
        return [self.binary, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start(self) -> None:
        self.process = start_process_group(
            self._arguments(),
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(self.process, self._answers_ping, timeout_s=20, name="redis-server", interval_s=0.05)
        except BaseException:
            stop_process_group(self.process, grace_s=10)
            raise

    def stop(self) -> None:
        """Save to dump.rdb in the work dir, then stop the server."""
        import redis

        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(redis.ConnectionError):
            self._client().shutdown(save=True)
        # The save takes several seconds on a busy machine (6-7 s measured under load); killing it
        # sooner would restart the server without its data.
        stop_process_group(self.process, grace_s=60)


@contextlib.contextmanager
def redis_process(workdir: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_copy_of(
    dag_run: dict, tmp_path_factory: pytest.TempPathFactory, name: str, materialize: bool = True, **extra: str
):
    """The DAG run's registry, features and candidates copied to a data dir of their own, with the
    features applied and (unless `materialize` is false: an empty online store) materialized into a
    fresh redis-server that the caller may stop and restart. Yields (data_dir, env, redis)."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    data_dir = tmp_path_factory.mktemp(name)
    for part in ("mlflow", "offline", "lake", "candidates"):
        shutil.copytree(dag_run["data_dir"] / part, data_dir / part)
    with redis_process(tmp_path_factory.mktemp(f"redis-{name}")) as redis:
        env = {
            **dag_run["env"],
            "CTR_DATA_DIR": str(data_dir),
            "CTR_ONLINE_STORE": "redis",
            "CTR_REDIS_CONNECTION": redis.connection,
            **extra,
        }
        stages = [
            "ctr",
            "run",
            "--stage",
            "apply_features",
            *(["--stage", "materialize"] if materialize else []),
        ]
        done = subprocess.run(stages, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield data_dir, env, redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole session; yields its Feast connection string."""
    with redis_process(tmp_path_factory.mktemp("redis")) as server:
        yield server.connection


# --- The reliability report ----------------------------------------------------------------------
# Each reliability scenario adds one row: what load it held, which faults and bad inputs it met, and
# what was lost (requests without an answer, rows that ended neither accepted nor quarantined). The
# rows are printed at the end of the run and, with CTR_RELIABILITY_REPORT=path, written there as JSON.
RELIABILITY_COLUMNS = ("scenario", "load", "faults", "bad_inputs", "requests_lost", "rows_lost", "measured")
_RELIABILITY_ROWS: list[dict] = []


@pytest.fixture(scope="session")
def reliability_report():
    def add(**row) -> None:
        assert set(row) == set(RELIABILITY_COLUMNS), sorted(set(row) ^ set(RELIABILITY_COLUMNS))
        _RELIABILITY_ROWS.append(row)

    return add


def pytest_terminal_summary(terminalreporter) -> None:
    if not _RELIABILITY_ROWS:
        return
    import json

    terminalreporter.section("reliability report")
    terminalreporter.write_line("| " + " | ".join(RELIABILITY_COLUMNS) + " |")
    terminalreporter.write_line("|" + "---|" * len(RELIABILITY_COLUMNS))
    for row in _RELIABILITY_ROWS:
        terminalreporter.write_line("| " + " | ".join(str(row[c]) for c in RELIABILITY_COLUMNS) + " |")
    target = os.environ.get("CTR_RELIABILITY_REPORT")
    if target:
        Path(target).write_text(json.dumps(_RELIABILITY_ROWS, indent=2) + "\n")
