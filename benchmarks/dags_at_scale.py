"""The DAGs, unchanged, at size: `airflow dags test ctr_features` over the whole window, then
`ctr_training`, on a SYNTHETIC event log, with configuration only (CTR_RAW_EVENTS pointing at the
`ctr synth` day partitions, Redis as the online store, the window given as the DAG's conf as for
the real slice).

Each DAG run is one `ctr airflow dags test` process, which runs the tasks one after another: each
task's duration comes from the run's own log ("[DAG TEST] starting task_id=..." / "end task") and
its peak RSS from sampling the process tree's RSS (psutil, every 0.25 s) while the task ran.
Prints the table and writes JSON and a RESULTS.md section.

Usage: python benchmarks/dags_at_scale.py [--events 1e7] [--work DIR] [--env CTR_NEGATIVE_SAMPLE_RATE=0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, redis_server, write_results  # noqa: E402
from benchmarks.scale import CTR, _label  # noqa: E402

TITLE = "The DAGs, unchanged, through `airflow dags test` on SYNTHETIC events"
# The whole window in one run of the daily feature DAG, as the integration tests run it.
WINDOW_END, WINDOW_CONF = "2017-12-04T00:00:00+08:00", json.dumps({"days": 9})
STARTED = re.compile(r"^(\S+) .*\[DAG TEST\] starting task_id=(\w+)")
ENDED = re.compile(r"^(\S+) .*\[DAG TEST\] end task task_id=(\w+)")


class TreeRss:
    """The RSS of a process and its descendants, sampled on a thread: (unix time, bytes) pairs."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        self.samples: list[tuple[float, int]] = []
        self._root, self._every, self._done = psutil.Process(pid), every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                tree = [self._root, *self._root.children(recursive=True)]
                total = 0
                for process in tree:
                    with contextlib.suppress(psutil.Error):
                        total += process.memory_info().rss
                self.samples.append((time.time(), total))
            except psutil.Error:
                return
            self._done.wait(self._every)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> float | None:
        """The largest sample between `start` and `end`, in GiB (None for a task too short to sample)."""
        inside = [rss for at, rss in self.samples if start <= at <= end]
        return round(max(inside) / 2**30, 2) if inside else None


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def task_spans(log: str) -> list[tuple[str, float, float]]:
    """(task, start, end) in unix seconds, from a `dags test` log."""
    starts, spans = {}, []
    for line in log.splitlines():
        if found := STARTED.match(line):
            starts[found[2]] = _stamp(found[1])
        elif (found := ENDED.match(line)) and found[2] in starts:
            spans.append((found[2], starts.pop(found[2]), _stamp(found[1])))
    return spans


def run_dag(dag: str, args: list[str], env: dict[str, str], log: Path) -> tuple[list[dict], float, int]:
    """One `dags test`; its tasks' rows, its wall seconds and exit status."""
    began = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(
            [CTR, "airflow", "dags", "test", dag, *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        rss = TreeRss(child.pid)
        code = child.wait()
        rss.stop()
    seconds = time.perf_counter() - began
    rows = [
        {
            "dag": dag,
            "task": task,
            "seconds": round(end - start, 1),
            "peak_rss_gib": rss.peak(start, end),
        }
        for task, start, end in task_spans(log.read_text())
    ]
    rows.append(
        {
            "dag": dag,
            "task": "whole run",
            "seconds": round(seconds, 1),
            "peak_rss_gib": rss.peak(0, 1e12),
        }
    )
    return rows, seconds, code


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=float, default=1e7, help="SYNTHETIC events (ctr synth --seed 0)")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "dags_at_scale", help="work dir")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="more configuration")
    args = parser.parse_args()
    n = int(args.events)
    work = (args.work / f"events-{n}").resolve()
    synth, data, logs = work / "synth", work / "data", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (synth / "SYNTHETIC.json").exists():
        subprocess.run([CTR, "synth", "--events", str(n), "--seed", "0", "--out", str(synth)], check=True)
    extra = dict(item.split("=", 1) for item in args.env)
    rows: list[dict] = []
    with redis_server() as redis:
        env = {
            **os.environ,
            "CTR_DATA_DIR": str(data),
            "AIRFLOW_HOME": str(data / "airflow"),
            "CTR_RAW_EVENTS": str(synth),
            "CTR_ONLINE_STORE": "redis",
            "CTR_REDIS_CONNECTION": redis,
            "CTR_DUCKDB_TEMP_DIR": str(work / "spill"),
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        subprocess.run([CTR, "airflow", "db", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
        for dag, dag_args in (("ctr_features", [WINDOW_END, "-c", WINDOW_CONF]), ("ctr_training", [])):
            dag_rows, seconds, code = run_dag(dag, dag_args, env, logs / f"{dag}.log")
            rows += dag_rows
            print_table(f"SYNTHETIC {_label(n)}: {dag} (exit {code})", dag_rows)
            if code != 0:
                print((logs / f"{dag}.log").read_text()[-4000:], file=sys.stderr)
                break
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    notes = [
        f"SYNTHETIC: {_label(n)} events from `ctr synth --seed 0`; the DAG files and stage functions are "
        "the pipeline's own, configured by environment only: CTR_RAW_EVENTS at the day partitions, "
        "CTR_ONLINE_STORE=redis (a local redis-server 7)"
        + (", " + ", ".join(f"{k}={v}" for k, v in extra.items()) if extra else "")
        + f"; the window as the DAG's conf ({WINDOW_CONF} ending {WINDOW_END}).",
        "Task times from the run's log; peak RSS of the `dags test` process tree sampled every 0.25 s while "
        "the task ran: the whole tree's, `dags test` itself included, so an upper bound on the task's own. "
        f"Load averages (1/5/15 min) at the end: {load}.",
    ]
    print_table(TITLE, rows)
    write_results("dags_at_scale", TITLE, rows, notes)


if __name__ == "__main__":
    main()
