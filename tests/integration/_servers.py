"""Real servers for the production-profile tests: PostgreSQL from the Debian package, an
`mlflow server` process (optionally behind MLflow's basic-auth app, through infra/mlflow/serve.sh)
and a redis-server with the profile's ACL users (infra/redis/acl.py), each on a free loopback port
in a process group of its own, and stopped afterwards with every process it started
(models.ops.processes).

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the unprivileged
`postgres` account the Debian package creates (else `nobody`), in a data directory owned by it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.ops.processes import free_port, process_group, start_process_group, stop_process_group, wait_ready
from tests.integration.conftest import ROOT, RedisProcess

POSTGRES_USER = "ctr"  # the database role the tests connect as (trust authentication, loopback only)


def postgres_bindir() -> Path:
    """Where initdb and postgres live: on PATH, else Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not candidates:
        pytest.fail(
            "PostgreSQL is not installed: `make test-deps` installs it, or `apt-get install postgresql`"
        )
    newest = max(candidates, key=lambda p: int(re.search(r"/postgresql/(\d+)/", p).group(1)))
    return Path(newest).parent


def _server_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (this user) unless this process is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail("running as root, and neither a 'postgres' nor a 'nobody' account exists for PostgreSQL")


class PostgresProcess:
    """initdb into a fresh directory, then `postgres` on 127.0.0.1:<free port> (no TCP elsewhere,
    its Unix socket inside the data directory). Durability is off: these databases are throwaway."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.account = _server_account()
        # Not under pytest's tmp dir: that is private to this user, and the server may run as another.
        self.root = Path(tempfile.mkdtemp(prefix="ctr-postgres-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        if self.account is not None:
            os.chown(self.root, self.account.pw_uid, self.account.pw_gid)

    def _as_server(self) -> dict:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def url(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        init = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                POSTGRES_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            **self._as_server(),
        )
        assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
        if self.account is not None:  # its log, written by the server's account
            self.log.touch()
            os.chown(self.log, self.account.pw_uid, self.account.pw_gid)
        self.process = start_process_group(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            cwd=self.root,
            log=self.log,
            **self._as_server(),
        )
        wait_ready(self.process, self._accepts_connections, timeout_s=60, log=self.log, interval_s=0.2)

    def _accepts_connections(self) -> bool:
        import psycopg2

        psycopg2.connect(self.url("postgres"), connect_timeout=1).close()
        return True

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its libpq URL."""
        import psycopg2

        connection = psycopg2.connect(self.url("postgres"))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(self.url(database))
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()
        finally:
            connection.close()

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, close connections), then remove the files."""
        if self.process is not None:
            stop_process_group(self.process, grace_s=30, stop_signal=signal.SIGINT)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_process() -> Iterator[PostgresProcess]:
    server = PostgresProcess()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str,
    artifacts: Path,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    basic_auth: bool = False,
) -> Iterator[str]:
    """`mlflow server` with a database backend store and proxied artifacts (`--serve-artifacts`: clients
    upload and download through the server, which keeps them under `artifacts`); yields its URL.

    With `basic_auth`, the server is started as the production profile starts it, by
    infra/mlflow/serve.sh (`--app-name basic-auth`); `env` then holds what that script needs
    (MLFLOW_AUTH_DATABASE_URI, MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY)."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    launcher = [str(bin_dir / "mlflow"), "server"]
    if basic_auth:
        launcher = ["sh", str(ROOT / "infra/mlflow/serve.sh")]
    command = [
        *launcher,
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # No job runner: it starts seven more processes for MLflow jobs, which the project never submits.
    env = {**(os.environ if env is None else env), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # the script runs `mlflow` from PATH
    url = f"http://127.0.0.1:{port}"
    # A process group of its own: the server's web workers are stopped with it.
    with process_group(
        command, env=env, log=log, ready=f"{url}/health", timeout_s=timeout, name="mlflow server"
    ):
        yield url


class AclRedisProcess(RedisProcess):
    """redis-server with the ACL file the production profile renders (infra/redis/acl.py): no
    client gets in without a user and password. The harness itself (ping, save, shutdown) is
    `ctr-admin`."""

    def __init__(self, workdir: Path, passwords: dict[str, str]) -> None:
        super().__init__(workdir)
        self.passwords = passwords  # CTR_REDIS_*_PASSWORD -> password
        self.aclfile = workdir / "users.acl"
        self.users = _acl_module()["USERS"]

    def connection_for(self, user: str) -> str:
        """Feast's connection string for `user`: ``127.0.0.1:PORT,username=USER,password=...``."""
        password = self.passwords[self.users[user][0]]
        return f"127.0.0.1:{self.port},username={user},password={password}"

    def client(self, user: str | None = None, password: str | None = None):
        """A redis-py client as `user` (None: without credentials)."""
        import redis

        if user is not None and password is None:
            password = self.passwords[self.users[user][0]]
        return redis.Redis(
            host="127.0.0.1", port=self.port, username=user, password=password, socket_connect_timeout=1
        )

    def _client(self):
        return self.client("ctr-admin")

    def _arguments(self) -> list[str]:
        return [*super()._arguments(), "--aclfile", str(self.aclfile)]

    def start(self) -> None:
        descriptor = os.open(self.aclfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(_acl_module()["render"](self.passwords))
        super().start()


def _acl_module() -> dict:
    import runpy

    return runpy.run_path(str(ROOT / "infra/redis/acl.py"))


@contextlib.contextmanager
def acl_redis_process(workdir: Path, passwords: dict[str, str]) -> Iterator[AclRedisProcess]:
    server = AclRedisProcess(workdir, passwords)
    server.start()
    try:
        yield server
    finally:
        server.stop()
