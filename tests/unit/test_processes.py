"""Stopping a server started in its own session reaches every process it started."""

from __future__ import annotations

import socket
import subprocess
import time

import psutil

from models.ops.processes import free_port, stop_process_group


def _server(script: str) -> tuple[subprocess.Popen, psutil.Process]:
    """A shell in its own session that starts a worker (`sleep`) and waits for it."""
    process = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while not (children := psutil.Process(process.pid).children()):
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.02)
    return process, children[0]


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


def test_a_group_that_honours_sigterm_stops_with_its_workers() -> None:
    process, worker = _server("sleep 60 & wait")
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


def test_a_free_port_can_be_listened_on() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
