"""Backfills of the daily feature DAG by the shop's local days: `ctr backfill FROM [TO]`.

Airflow names a run of a daily DAG by its logical date, the start of its data interval, and
`airflow backfill create --from-date/--to-date` reads bare dates as UTC midnights. The feature DAG's
days start at local midnight (CTR_TIMEZONE, Asia/Shanghai: 16:00 UTC the day before), so
`--from-date 2017-11-25 --to-date 2017-11-26` covers one run, local day 11-26. Here the days a user
names are local days, each one run whose logical date is that day's local midnight.

The scheduler starts no run of a paused DAG, backfills included, and every new DAG starts paused:
the backfill unpauses the feature DAG when it is paused. Its schedule does not catch up
(`catchup=False`), so unpausing adds no run of another past day beside the backfill's.

This module drives the `airflow` command with the project's environment; it imports no Airflow.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from models.ops.processes import environment_program
from models.settings import Settings, airflow_environment

FEATURES_DAG = "ctr_features"
# How a backfill treats a day that already has a run: "completed" runs it again (every output of a
# day is replaced whole, so this is safe), "failed" only when its run failed, "none" never.
REPROCESS = ("completed", "failed", "none")
AIRFLOW_TIMEOUT_S = 300


class BackfillError(RuntimeError):
    """The backfill cannot be created; the message says why and what to do."""


@dataclass(frozen=True)
class BackfillPlan:
    """The local days to run and the logical date of each one's run (its local midnight)."""

    dag_id: str
    days: tuple[date, ...]
    logical_dates: tuple[datetime, ...]

    @property
    def from_date(self) -> str:
        return self.logical_dates[0].isoformat()

    @property
    def to_date(self) -> str:
        return self.logical_dates[-1].isoformat()


def plan_backfill(first: date, last: date | None, settings: Settings) -> BackfillPlan:
    """The runs that cover the local days `first` .. `last` (inclusive; `last` defaults to `first`),
    which must lie inside the configured window (CTR_WINDOW_START .. CTR_WINDOW_END)."""
    from models.data import lake

    last = last or first
    if last < first:
        raise BackfillError(f"The last day {last} is before the first day {first}")
    window = lake.days_of(settings.window_start, settings.window_end, settings.timezone)
    by_day = {midnight.date(): midnight for midnight in window}
    outside = [str(day) for day in dict.fromkeys((first, last)) if day not in by_day]
    if outside:
        raise BackfillError(
            f"{', '.join(outside)} is outside the window {window[0]:%Y-%m-%d} .. {window[-1]:%Y-%m-%d} "
            f"(local days in {settings.timezone}; CTR_WINDOW_START / CTR_WINDOW_END)"
        )
    chosen = [midnight for day, midnight in by_day.items() if first <= day <= last]
    return BackfillPlan(
        FEATURES_DAG, tuple(m.date() for m in chosen), tuple(m.to_pydatetime() for m in chosen)
    )


class AirflowCommand:
    """`airflow ...` in a child process with the project's environment (AIRFLOW_HOME, the DAGs
    folder, the metadata DB): it reaches the same database as the running scheduler."""

    def __init__(self, settings: Settings, timeout_s: float = AIRFLOW_TIMEOUT_S) -> None:
        self.env = airflow_environment(settings)
        self.timeout_s = timeout_s
        self.program = environment_program("airflow", self.env)
        if self.program is None:
            raise BackfillError("airflow not found; install the environment with `make venv`")

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.program, *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise BackfillError(
                f"`airflow {' '.join(args)}` did not finish within {self.timeout_s:.0f} s: is the "
                "metadata database reachable?"
            ) from None

    def dag_details(self, dag_id: str) -> dict[str, str]:
        """The DAG as Airflow's database knows it (`is_paused`, ...), once its DAG processor has
        parsed it."""
        done = self("dags", "details", dag_id, "--output", "json")
        if done.returncode != 0:
            raise BackfillError(
                f"Airflow does not know the DAG {dag_id} yet: start Airflow with `ctr airflow-ui` (its "
                f"DAG processor reads dags/), wait for the DAG to be listed, then try again.\n"
                f"{_tail(done)}"
            )
        return _json_rows(done.stdout)[0]

    def scheduler_alive(self) -> bool:
        """Whether a scheduler (one or several, on any host) has a recent heartbeat."""
        check = ("jobs", "check", "--job-type", "SchedulerJob", "--allow-multiple", "--limit", "0")
        return self(*check).returncode == 0

    def unpause(self, dag_id: str) -> None:
        done = self("dags", "unpause", dag_id, "--yes")
        if done.returncode != 0:
            raise BackfillError(f"Could not unpause {dag_id}:\n{_tail(done)}")

    def create_backfill(self, plan: BackfillPlan, reprocess: str, max_active_runs: int) -> None:
        done = self(
            "backfill",
            "create",
            "--dag-id",
            plan.dag_id,
            "--from-date",
            plan.from_date,
            "--to-date",
            plan.to_date,
            "--reprocess-behavior",
            reprocess,
            "--max-active-runs",
            str(max_active_runs),
        )
        if done.returncode != 0:
            raise BackfillError(f"airflow backfill create failed:\n{_tail(done)}")

    def runs(self, plan: BackfillPlan) -> dict[date, str]:
        """The state of the newest run of each planned day that has one."""
        import pandas as pd

        done = self(
            "dags",
            "list-runs",
            plan.dag_id,
            "--start-date",
            plan.from_date,
            "--end-date",
            plan.to_date,
            "--output",
            "json",
        )
        if done.returncode != 0:
            raise BackfillError(f"Could not list the runs of {plan.dag_id}:\n{_tail(done)}")
        by_logical = {pd.Timestamp(m): day for m, day in zip(plan.logical_dates, plan.days, strict=True)}
        states: dict[date, str] = {}
        for run in sorted(_json_rows(done.stdout), key=lambda r: r.get("run_after") or ""):
            day = by_logical.get(pd.Timestamp(run["logical_date"])) if run.get("logical_date") else None
            if day is not None:
                states[day] = run["state"]
        return states


def _json_rows(stdout: str) -> list[dict]:
    """The JSON list an `airflow ... --output json` command prints (its last line that is one)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("["):
            return json.loads(line)
    raise BackfillError(f"No JSON in Airflow's output:\n{stdout[-2000:]}")


def _tail(done: subprocess.CompletedProcess[str], chars: int = 2000) -> str:
    return (done.stdout + done.stderr).strip()[-chars:]


FINISHED = ("success", "failed")


def wait_for_runs(
    airflow: AirflowCommand,
    plan: BackfillPlan,
    poll_s: float,
    report: Callable[[dict[date, str]], None],
) -> dict[date, str]:
    """Poll the planned days' runs until each has finished; `report` sees the states whenever they
    change. Returns the final state of each day."""
    shown: dict[date, str] | None = None
    while True:
        states = airflow.runs(plan)
        if states != shown:
            report(states)
            shown = states
        if len(states) == len(plan.days) and all(s in FINISHED for s in states.values()):
            return states
        time.sleep(poll_s)
