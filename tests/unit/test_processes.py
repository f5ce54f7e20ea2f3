"""Starting a server in its own session, waiting until it is ready, and stopping it with every
process it started, whatever happens in between."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from models.ops.processes import (
    ProcessNotReady,
    free_port,
    process_group,
    start_process_group,
    stop_process_group,
    wait_ready,
)

# A leader that exits with 7 on SIGINT (as a program that stops on Ctrl-C) and dies of SIGTERM.
STOPS_ON_CTRL_C = (
    "import signal, sys, time; signal.signal(signal.SIGINT, lambda *_: sys.exit(7)); time.sleep(60)"
)


def _server(script: str) -> tuple[subprocess.Popen, psutil.Process]:
    """A shell in its own session that starts a worker (`sleep`) and waits for it."""
    process = start_process_group(["bash", "-c", script])
    return process, _worker(process)


def _worker(process: subprocess.Popen) -> psutil.Process:
    deadline = time.monotonic() + 10
    while not (children := psutil.Process(process.pid).children()):
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.02)
    return children[0]


def _gone(worker: psutil.Process, within_s: float = 5) -> bool:
    """The worker exited (a zombie counts: whether PID 1 reaps it is not ours to test)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if worker.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_group_that_honours_sigterm_stops_with_its_workers() -> None:
    process, worker = _server("sleep 60 & wait")
    assert os.getpgid(process.pid) == process.pid  # the leader of a group of its own
    started = time.monotonic()
    stop_process_group(process, grace_s=10)
    assert process.returncode == -15  # SIGTERM, not the SIGKILL after the grace period
    assert time.monotonic() - started < 5
    assert _gone(worker)


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    process, worker = _server("trap '' TERM; sleep 60 & wait")
    started = time.monotonic()
    stop_process_group(process, grace_s=0.5)
    assert process.returncode == -9
    assert time.monotonic() - started >= 0.5
    assert _gone(worker)  # killed with its group, not left behind


def test_a_descendant_in_a_group_of_its_own_is_killed_after_the_grace_period() -> None:
    # As an Airflow task process: started by a worker of the group, then in a session of its own.
    process, worker = _server("setsid sleep 60 & wait")
    deadline = time.monotonic() + 10
    while os.getpgid(worker.pid) == process.pid:  # until the forked shell has run setsid
        assert time.monotonic() < deadline, "the worker never left the group"
        time.sleep(0.02)
    started = time.monotonic()
    stop_process_group(process, grace_s=0.5)
    assert process.returncode == -15
    assert _gone(worker)
    assert time.monotonic() - started >= 0.5  # it had the grace period to stop on its own


def test_the_stop_signal_is_a_parameter() -> None:
    process = start_process_group([sys.executable, "-c", STOPS_ON_CTRL_C])
    time.sleep(0.5)  # the handler is installed
    started = time.monotonic()
    stop_process_group(process, grace_s=10, stop_signal=signal.SIGINT)
    assert process.returncode == 7  # it stopped as on Ctrl-C, neither SIGTERM nor SIGKILL
    assert time.monotonic() - started < 5


def test_process_group_yields_once_the_url_answers_and_stops_the_server_after(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = f"sleep 0.5; exec {sys.executable} -m http.server {port} --bind 127.0.0.1"
    with process_group(["bash", "-c", server], cwd=tmp_path, log=tmp_path / "log", ready=url) as process:
        assert _answers(url)
        assert process.poll() is None
    assert process.returncode is not None
    assert not _answers(url)


def test_process_group_waits_for_a_ready_callable(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    script = f"sleep 0.5; touch {flag}; sleep 60 & wait"
    calls = []

    def ready() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("not listening yet")  # counts as not ready, not as a failure
        return flag.exists()

    with process_group(["bash", "-c", script], ready=ready, interval_s=0.05) as process:
        assert flag.exists()
        worker = _worker(process)
    assert process.returncode == -15
    assert _gone(worker)


def test_process_group_stops_the_group_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="the test failed"):  # noqa: SIM117
        with process_group(["bash", "-c", "sleep 60 & wait"], grace_s=10) as process:
            worker = _worker(process)
            raise RuntimeError("the test failed")
    assert process.returncode == -15
    assert _gone(worker)


def test_process_group_kills_a_server_that_ignores_sigterm_after_the_grace_period() -> None:
    started = time.monotonic()
    with process_group(["bash", "-c", "trap '' TERM; sleep 60 & wait"], grace_s=0.5) as process:
        worker = _worker(process)
    assert process.returncode == -9
    assert time.monotonic() - started >= 0.5
    assert _gone(worker)


def test_process_group_passes_the_stop_signal_on() -> None:
    with process_group([sys.executable, "-c", STOPS_ON_CTRL_C], stop_signal=signal.SIGINT) as process:
        time.sleep(0.5)
    assert process.returncode == 7


def test_a_server_that_exits_before_it_is_ready_fails_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with pytest.raises(ProcessNotReady, match=r"(?s)server exited with code 3 before it was ready.*boom"):  # noqa: SIM117
        with process_group(["bash", "-c", "echo boom; exit 3"], log=log, ready=lambda: False, name="server"):
            pytest.fail("the block ran")


def test_a_server_not_ready_in_time_fails_and_is_stopped(tmp_path: Path) -> None:
    process = start_process_group(["bash", "-c", "sleep 60 & wait"], log=tmp_path / "log")
    worker = _worker(process)
    url = f"http://127.0.0.1:{free_port()}/readyz"
    try:
        with pytest.raises(ProcessNotReady, match=r"bash was not ready at .*/readyz within 1 s"):
            wait_ready(process, url, timeout_s=1, log=tmp_path / "log", interval_s=0.1)
    finally:
        stop_process_group(process, grace_s=5)
    assert _gone(worker)


def test_process_group_stops_a_server_that_was_not_ready_in_time(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"echo $$ > {pid_file}; sleep 60 & wait"
    with pytest.raises(ProcessNotReady, match="bash was not ready within 0 s"):  # noqa: SIM117
        with process_group(["bash", "-c", script], ready=lambda: False, timeout_s=0.3, interval_s=0.05):
            pytest.fail("the block ran")
    leader = int(pid_file.read_text())
    assert not psutil.pid_exists(leader) or psutil.Process(leader).status() == psutil.STATUS_ZOMBIE


def test_a_free_port_can_be_listened_on() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
