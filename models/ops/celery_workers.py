"""The CeleryExecutor profile's workers: which queue each consumes, with what concurrency and
device, the command that starts it, and how to tell that it answers.

Two workers, as infra/compose and infra/helm run them: `default` takes every task not sent to
another queue; `gpu` takes the training tasks (queue="gpu" in dags/ctr_training.py) one at a time,
with CTR_DEVICE=cuda, so a GPU worker without a visible GPU trains on the CPU and says so
(models/training/device.py). On one machine (`ctr airflow-celery`) each worker also gets a name of
its own, as Celery node name and as the host Airflow records for its tasks (CTR_WORKER_NAME, read
by `worker_hostname`), and serves no logs: the API server reads them from the shared log folder.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from models.settings import worker_name


@dataclass(frozen=True)
class Worker:
    """One Celery worker of the profile."""

    queue: str
    concurrency: int | None  # None: AIRFLOW__CELERY__WORKER_CONCURRENCY
    device: str  # its CTR_DEVICE

    def airflow_args(self) -> list[str]:
        """`airflow ...` arguments that start it, as the compose file and the Helm values run it."""
        concurrency = ["--concurrency", str(self.concurrency)] if self.concurrency else []
        return ["celery", "worker", "--queues", self.queue, *concurrency]

    def name(self, host: str | None = None) -> str:
        """Its Celery node name on `host` (default: this machine): QUEUE@HOST."""
        return f"{self.queue}@{host or socket.gethostname()}"

    def local_args(self, host: str | None = None) -> list[str]:
        """`airflow_args` for a worker sharing its machine with others: a node name of its own,
        and no log server (it would bind every interface, on the same port for each worker)."""
        return [*self.airflow_args(), "--celery-hostname", self.name(host), "--skip-serve-logs"]

    def environment(self, env: dict[str, str], host: str | None = None) -> dict[str, str]:
        """`env` plus what this worker runs with: its name, and its device unless CTR_DEVICE is set."""
        worker_env = {**env, "CTR_WORKER_NAME": self.name(host)}
        if not worker_env.get("CTR_DEVICE", "").strip():
            worker_env["CTR_DEVICE"] = self.device
        return worker_env


DEFAULT_WORKER = Worker(queue="default", concurrency=None, device="cpu")
GPU_WORKER = Worker(queue="gpu", concurrency=1, device="cuda")
WORKERS = (DEFAULT_WORKER, GPU_WORKER)


def worker_hostname() -> str:
    """Airflow's `[core] hostname_callable` in the Celery profile: the worker's name
    (CTR_WORKER_NAME) in a worker started with one, else the machine's fully qualified name,
    as Airflow's default callable answers."""
    return worker_name() or socket.getfqdn()


def answering_workers(broker_url: str, timeout_s: float = 2.0) -> set[str]:
    """The node names of the Celery workers that answer a ping through the broker now."""
    from celery import Celery

    app = Celery(broker=broker_url)
    try:
        replies = app.control.ping(timeout=timeout_s) or []
    finally:
        app.close()
    return {name for reply in replies for name in reply}


def metadata_db_problem(env: dict[str, str]) -> str | None:
    """Why `env` cannot run the Celery profile's metadata DB, or None: every component and worker
    must reach one server database, which a SQLite file is not."""
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").strip()
    if not url or url.startswith("sqlite"):
        return (
            "the CeleryExecutor needs a metadata DB every component and worker reaches: set "
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://USER:PASSWORD@HOST:5432/airflow"
        )
    return None
