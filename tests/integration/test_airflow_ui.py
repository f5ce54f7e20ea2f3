"""`ctr airflow-ui` as a user meets it: the REST API (JWT login, DAGs, import errors), the React UI in
headless Chromium (Debian packages; `make test-deps`), and the README's `ctr backfill` run through
its scheduler."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from models.ops.processes import free_port, process_group
from tests.integration.conftest import ROOT, project_environment

pytestmark = pytest.mark.integration

# What the UI must list, and the backfill the README's command creates: the first two local days
# (shop time) of a three-day window, so a run of the third day would be a catch-up beside it.
DAG_IDS = ("ctr_features", "ctr_training", "ctr_deployment", "ctr_monitoring")
BACKFILL_DAG_ID = "ctr_features"
WINDOW_DAYS = ("2017-11-25", "2017-11-26", "2017-11-27")
BACKFILL_DAYS = WINDOW_DAYS[:2]
SHOP_OFFSET = "+08:00"  # Asia/Shanghai, the default CTR_TIMEZONE
RUN_TIMEOUT_S = 900  # two feature runs through the scheduler, each task in a fresh process

START_TIMEOUT_S = 240
DAGS_TIMEOUT_S = 120
UI_TIMEOUT_S = 60
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless as root in a sandbox without a network: no setuid sandbox, no GPU, no calls home.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--window-size=1400,900",
)


@dataclass
class AirflowUI:
    url: str
    user: str
    password: str
    log: Path
    airflow_home: Path
    pid: int
    env: dict[str, str]

    def processes(self) -> list[psutil.Process]:
        parent = psutil.Process(self.pid)
        return [parent, *parent.children(recursive=True)]

    def component_log_tail(self, name: str, lines: int = 40) -> str:
        path = self.airflow_home / "logs/components" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _window(data_dir: Path) -> dict[str, str]:
    """The Taobao slice cut to WINDOW_DAYS (plus its rows from before the period, which validation
    quarantines) and a window of just those days."""
    import pandas as pd

    from models.data.events import read_raw_events
    from models.settings import default_raw_events

    first = pd.Timestamp(f"{WINDOW_DAYS[0]}T00:00:00{SHOP_OFFSET}")
    end = pd.Timestamp(f"{WINDOW_DAYS[-1]}T00:00:00{SHOP_OFFSET}") + pd.Timedelta(days=1)
    raw = read_raw_events(default_raw_events())
    seconds = pd.to_numeric(raw["timestamp"], errors="coerce")
    keep = (seconds < end.timestamp()) | seconds.isna()
    path = data_dir / "window.csv"
    raw.loc[keep, raw.columns[1:]].to_csv(path, header=False, index=False)
    return {
        "CTR_RAW_EVENTS": str(path),
        "CTR_WINDOW_START": first.isoformat(),
        "CTR_VALID_START": (first + pd.Timedelta(days=1)).isoformat(),
        "CTR_TEST_START": (first + pd.Timedelta(days=2)).isoformat(),
        "CTR_WINDOW_END": end.isoformat(),
    }


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowUI]:
    """`ctr airflow-ui` on a free port over a temporary data dir, healthy and logged-in-able."""
    data_dir = tmp_path_factory.mktemp("airflow_ui")
    env = project_environment(data_dir, **_window(data_dir))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "airflow-ui.log"

    def healthy() -> bool:
        health = httpx.get(f"{url}/api/v2/monitor/health", timeout=5).json()
        # The command prints its banner (URL, login) once it has seen the same.
        return all(part.get("status") == "healthy" for part in health.values()) and url in log.read_text()

    # SIGTERM to `ctr airflow-ui` stops its components (each in a group of its own); whatever is
    # left of its process tree a minute later is killed.
    with process_group(
        ["ctr", "airflow-ui", "--port", str(port), "--start-timeout", str(START_TIMEOUT_S)],
        env=env,
        cwd=ROOT,
        log=log,
        ready=healthy,
        timeout_s=START_TIMEOUT_S,
        interval_s=1,
        grace_s=60,
        name="ctr airflow-ui",
    ) as process:
        passwords_file = data_dir / "airflow/simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords_file.read_text())["admin"]
        yield AirflowUI(url, "admin", password, log, data_dir / "airflow", process.pid, env)


@pytest.fixture(scope="module")
def api(airflow_ui: AirflowUI) -> Iterator[httpx.Client]:
    """A REST client with a JWT from POST /auth/token."""
    token = httpx.post(
        f"{airflow_ui.url}/auth/token",
        json={"username": airflow_ui.user, "password": airflow_ui.password},
        timeout=30,
    )
    assert token.status_code == 201, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    with httpx.Client(base_url=f"{airflow_ui.url}/api/v2", headers=headers, timeout=30) as client:
        yield client


def _wait_for_dags(api: httpx.Client) -> dict[str, dict]:
    """The DAGs once the DAG processor has parsed every expected one (or the deadline passed)."""
    deadline = time.monotonic() + DAGS_TIMEOUT_S
    while True:
        dags = {
            dag["dag_id"]: dag
            for dag in api.get("/dags", params={"limit": 100}).raise_for_status().json()["dags"]
        }
        if set(DAG_IDS) <= set(dags) or time.monotonic() > deadline:
            return dags
        time.sleep(2)


def test_the_command_prints_the_url_and_the_login(airflow_ui: AirflowUI):
    banner = airflow_ui.log.read_text()
    assert f"Airflow UI: {airflow_ui.url}" in banner
    assert f"log in as 'admin' with password '{airflow_ui.password}'" in banner
    # Whatever it started listens on loopback only: no log server on all interfaces.
    listening = set()
    for process in airflow_ui.processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            listening |= {
                f"{c.laddr.ip}:{c.laddr.port}"
                for c in process.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            }
    assert listening == {airflow_ui.url.removeprefix("http://")}, listening


def test_rest_api_lists_the_project_dags_without_import_errors(api: httpx.Client):
    dags = _wait_for_dags(api)
    errors = api.get("/importErrors").raise_for_status().json()
    assert errors["total_entries"] == 0, json.dumps(errors["import_errors"], indent=2)[:5000]
    assert set(DAG_IDS) <= set(dags), sorted(dags)
    assert not any(dags[dag_id]["is_stale"] for dag_id in DAG_IDS)


def _once_navigated(condition):
    """`condition`, read as "not yet" while the page is navigating: the UI redirects to its login
    page and back, and a query that meets a navigation fails with "aborted by navigation" instead of
    finding nothing. Any other error still fails the wait."""

    def check(driver):
        try:
            return condition(driver)
        except WebDriverException as exc:
            if "aborted by navigation" in (exc.msg or ""):
                return False
            raise

    return check


def test_ui_login_shows_the_project_dags(airflow_ui: AirflowUI, api: httpx.Client, tmp_path: Path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"Chromium is not installed ({', '.join(missing)} missing): `make test-deps` installs it, "
            "or `sudo apt-get install chromium chromium-driver`"
        )
    _wait_for_dags(api)  # the DAG processor has written them before the page asks
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    screenshot, page = tmp_path / "airflow-ui.png", tmp_path / "airflow-ui.html"
    try:
        wait = WebDriverWait(driver, UI_TIMEOUT_S)
        driver.get(f"{airflow_ui.url}/dags")
        # SimpleAuthManager's own login page (a React form), then back to the DAG list.
        login_form = expected_conditions.visibility_of_element_located((By.NAME, "username"))
        username = wait.until(_once_navigated(login_form), "no login form")
        username.send_keys(airflow_ui.user)
        driver.find_element(By.NAME, "password").send_keys(airflow_ui.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: "/auth/login" not in d.current_url, "the login form did not go away")
        for dag_id in DAG_IDS:
            link = (By.XPATH, f"//a[normalize-space()='{dag_id}']")
            visible = expected_conditions.visibility_of_element_located(link)
            wait.until(_once_navigated(visible), f"no link to {dag_id}")
    except Exception as exc:
        driver.save_screenshot(str(screenshot))
        page.write_text(driver.page_source)
        reason = getattr(exc, "msg", None) or repr(exc)  # a WebDriverException's message, no stack
        pytest.fail(f"{reason} at {driver.current_url}\nscreenshot: {screenshot}\npage: {page}")
    finally:
        driver.quit()


def test_ctr_backfill_runs_exactly_the_named_local_days(airflow_ui: AirflowUI, api: httpx.Client):
    """The README's backfill, as a user types it beside `ctr airflow-ui`: on a DAG that is paused,
    as every new one is, it runs the two named local days, and nothing else."""
    dags = _wait_for_dags(api)
    assert dags[BACKFILL_DAG_ID]["is_paused"]
    command = ["ctr", "backfill", *BACKFILL_DAYS, "--wait", "--poll", "5"]
    done = subprocess.run(
        command, env=airflow_ui.env, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    runs = api.get(f"/dags/{BACKFILL_DAG_ID}/dagRuns").raise_for_status().json()["dag_runs"]
    states = {r["dag_run_id"]: (r["run_type"], r["state"]) for r in runs}
    if done.returncode != 0 or sorted(states.values()) != [("backfill", "success")] * len(BACKFILL_DAYS):
        reports = [
            _run_report(api, f"/dags/{BACKFILL_DAG_ID}/dagRuns/{urllib.parse.quote(r, safe='')}", airflow_ui)
            for r, (_, state) in states.items()
            if state != "success"
        ]
        pytest.fail(
            f"`{' '.join(command)}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n"
            f"runs: {states}\n" + "\n".join(reports)
        )
    assert "unpaused" in done.stdout and f"all {len(BACKFILL_DAYS)} day(s) succeeded" in done.stdout
    assert not api.get(f"/dags/{BACKFILL_DAG_ID}").raise_for_status().json()["is_paused"]

    # One run per named day, each covering that local day from midnight to midnight in shop time;
    # no catch-up run of the window's third day beside them.
    intervals = sorted(
        (pd.Timestamp(r["data_interval_start"]), pd.Timestamp(r["data_interval_end"])) for r in runs
    )
    expected = [
        (
            pd.Timestamp(f"{day}T00:00:00{SHOP_OFFSET}"),
            pd.Timestamp(f"{day}T00:00:00{SHOP_OFFSET}") + pd.Timedelta(days=1),
        )
        for day in BACKFILL_DAYS
    ]
    assert intervals == expected
    # Exactly the two days were processed, each whole: its lake partition, its validation report
    # (rows in = accepted + quarantined) and its feature rows, then materialized.
    data_dir = airflow_ui.airflow_home.parent
    assert sorted(p.name for p in (data_dir / "lake/accepted").glob("date=*")) == [
        f"date={day}" for day in BACKFILL_DAYS
    ]
    for day, rows in zip(BACKFILL_DAYS, (8732, 8786), strict=True):
        report = json.loads((data_dir / f"quarantine/date={day}/report.json").read_text())
        assert report["input_rows"] == rows == report["accepted_rows"] + report["quarantined_rows"]


def _log_line(entry: dict | str) -> str:
    """One structured task-log entry as text, with its traceback when it has one."""
    if not isinstance(entry, dict):
        return str(entry)
    line = f"{entry.get('level', '')} {entry.get('event', '')}".strip()
    if entry.get("error_detail"):
        line += "\n" + json.dumps(entry["error_detail"], indent=1)[-4000:]
    return line


def _run_report(api: httpx.Client, run_path: str, airflow_ui: AirflowUI) -> str:
    """Task states, the logs of the tasks that did not succeed, and the scheduler's log tail."""
    tasks = api.get(f"{run_path}/taskInstances").raise_for_status().json()["task_instances"]
    report = [f"{t['task_id']}: {t['state']} (try {t['try_number']})" for t in tasks]
    for task in tasks:
        if task["state"] in ("failed", "up_for_retry", "upstream_failed", "running") and task["try_number"]:
            logs = api.get(
                f"{run_path}/taskInstances/{task['task_id']}/logs/{task['try_number']}",
                headers={"Accept": "application/json"},
            )
            entries = (logs.json().get("content") or []) if logs.is_success else [logs.text]
            report += [f"--- {task['task_id']} log", *map(_log_line, entries[-30:])]
    return "\n".join([*report, "--- scheduler", airflow_ui.component_log_tail("scheduler")])
