"""The embedded profile's SQLite metadata DB is written by the scheduler, the DAG processor, the API
server and a user's `airflow` commands at once: a writer that finds it locked waits for the lock
instead of failing with "database is locked"."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from models.settings import AIRFLOW_SQLITE_BUSY_TIMEOUT_S, airflow_environment, get_settings
from tests.integration.conftest import ROOT, project_environment

# Longer than Python's default busy timeout (5 s), well inside the project's.
HELD_S = 12.0
WRITE = """
import time
from sqlalchemy import text
from airflow import settings
settings.configure_orm()
started = time.monotonic()
with settings.engine.begin() as connection:
    connection.execute(text("CREATE TABLE written_after_the_lock (x INTEGER)"))
print(f"waited {time.monotonic() - started:.1f}")
"""


def test_an_airflow_write_waits_for_a_lock_another_process_holds(tmp_path: Path):
    env = airflow_environment(get_settings(), project_environment(tmp_path))
    database = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    database.parent.mkdir(parents=True)
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITE],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(HELD_S)
        if writer.poll() is not None:
            raise AssertionError(f"the write did not wait for the lock:\n{writer.communicate()[1][-3000:]}")
    finally:
        holder.execute("COMMIT")
        holder.close()
    out, err = writer.communicate(timeout=AIRFLOW_SQLITE_BUSY_TIMEOUT_S)
    assert writer.returncode == 0, err[-3000:]
    tables = sqlite3.connect(database).execute("SELECT name FROM sqlite_master").fetchall()
    assert ("written_after_the_lock",) in tables
