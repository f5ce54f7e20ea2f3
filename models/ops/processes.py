"""Servers and other child processes the project starts (`ctr airflow-ui`, the deployment smoke test,
benchmarks, tests): a free loopback port to give one, starting it in a session of its own, waiting
until it is ready, and stopping it with every process it started.

    port = free_port()
    with process_group([..., "--port", str(port)], log=path, ready=f"http://127.0.0.1:{port}/readyz"):
        ...  # the server answers here; leaving the block stops it and its workers, error or not

`process_group` is `start_process_group`, `wait_ready` and `stop_process_group` in one; callers that
start several processes, or restart one, use the three directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

# What says a process is ready: a URL that answers 200 to a GET, or a callable that returns something
# true (an exception it raises counts as "not yet").
Ready = str | Callable[[], object]

LOG_TAIL_CHARS = 3000
_KILL_WAIT_S = 10  # after SIGKILL, how long to wait for the processes to be gone
# Readiness probes go straight to the (loopback) server, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessNotReady(RuntimeError):
    """A process exited before it was ready, or was not ready in time; the message ends with the
    tail of its log."""


def environment_program(name: str, env: dict[str, str]) -> str | None:
    """The path of `name` in this interpreter's environment (the virtualenv's bin/, whether or not
    it is on PATH), else on env's PATH; None when there is none."""
    return shutil.which(name, path=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path | str | None, chars: int = LOG_TAIL_CHARS) -> str:
    """The last `chars` characters of a log file ('' if there is none)."""
    if log is None:
        return ""
    with contextlib.suppress(OSError):
        return Path(log).read_text(errors="replace")[-chars:]
    return ""


def start_process_group(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    log: Path | str | None = None,
    **popen: Any,
) -> subprocess.Popen:
    """Start `command` in a session, and so a process group, of its own: stopping the group
    (`stop_process_group`) reaches every process it starts, and a Ctrl-C meant for this process
    does not reach it. With `log`, its stdout and stderr go to that file (emptied first); else they
    are as the other keyword arguments, passed on to `subprocess.Popen`, say."""
    if log is None:
        return subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True, **popen)
    with Path(log).open("w") as out:
        return subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )


def _answers_200(url: str) -> bool:
    with _DIRECT.open(url, timeout=2) as response:
        return response.status == 200


def _name(process: subprocess.Popen) -> str:
    args = process.args
    first = args.split()[0] if isinstance(args, str) else os.fspath(args[0])
    return Path(first).name


def _with_log(message: str, log: Path | str | None) -> str:
    return f"{message}; its log ({log}):\n{log_tail(log)}" if log is not None else message


def wait_ready(
    process: subprocess.Popen,
    ready: Ready,
    timeout_s: float = 60,
    *,
    log: Path | str | None = None,
    name: str | None = None,
    interval_s: float = 0.5,
) -> float:
    """Check `ready` every `interval_s` until it holds (a URL: it answers 200 to a GET; a callable:
    it returns something true, an exception it raises counts as not yet). Returns the seconds it
    took. Raises ProcessNotReady, with the tail of `log`, if the process exits first or `timeout_s`
    passes; `name` says which process in that message (default: the command's program)."""
    check = (lambda: _answers_200(ready)) if isinstance(ready, str) else ready
    name = name or _name(process)
    started = time.monotonic()
    last_error: Exception | None = None
    while True:
        if process.poll() is not None:
            message = f"{name} exited with code {process.returncode} before it was ready"
            raise ProcessNotReady(_with_log(message, log))
        try:
            if check():
                return time.monotonic() - started
            last_error = None
        except Exception as exc:
            last_error = exc
        if time.monotonic() - started > timeout_s:
            where = f" at {ready}" if isinstance(ready, str) else ""
            why = f" (last check: {last_error!r})" if last_error is not None else ""
            message = f"{name} was not ready{where} within {timeout_s:.0f} s{why}"
            raise ProcessNotReady(_with_log(message, log))
        time.sleep(interval_s)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    # Only while the leader is not reaped: until then no other group can have its id.
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)


def _alive(tree: list) -> list:
    """The processes of `tree` still running (a zombie has exited: reaping it is its parent's job)."""
    import psutil

    alive = []
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def _wait(processes: list[subprocess.Popen], tree: list, deadline: float) -> None:
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_process_groups(
    processes: Iterable[subprocess.Popen], grace_s: float = 30, stop_signal: int = signal.SIGTERM
) -> None:
    """Stop processes started in sessions of their own (`start_process_group`), all at once:
    `stop_signal` to each one's process group, so that its workers get it too (SIGTERM; SIGINT for
    programs that stop on Ctrl-C, such as Airflow's components), then, for whatever has not exited
    within `grace_s`, SIGKILL to the groups and to anything else left of their process trees (a
    descendant that moved to a group of its own, such as an Airflow task process)."""
    import psutil

    processes = list(processes)
    tree: list[psutil.Process] = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            tree += psutil.Process(process.pid).children(recursive=True)
    for process in processes:
        _signal_group(process, stop_signal)
    _wait(processes, tree, time.monotonic() + grace_s)
    for process in processes:
        _signal_group(process, signal.SIGKILL)
    for leftover in _alive(tree):
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    _wait(processes, tree, time.monotonic() + _KILL_WAIT_S)


def stop_process_group(
    process: subprocess.Popen, grace_s: float = 30, stop_signal: int = signal.SIGTERM
) -> None:
    """`stop_signal` (default SIGTERM) to the process group of `process`, so its workers stop too;
    SIGKILL to the group, and to the rest of its process tree, if it has not exited within `grace_s`."""
    stop_process_groups([process], grace_s, stop_signal)


@contextlib.contextmanager
def process_group(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    log: Path | str | None = None,
    ready: Ready | None = None,
    timeout_s: float = 60,
    interval_s: float = 0.5,
    grace_s: float = 30,
    stop_signal: int = signal.SIGTERM,
    name: str | None = None,
    **popen: Any,
) -> Iterator[subprocess.Popen]:
    """Run `command` in a session of its own (`start_process_group`) while the block runs: first
    waits until `ready` holds (`wait_ready`; no wait without it), then yields the process. On the
    way out, normal or not (the ready wait failing too), stops its process group with `stop_signal`
    and SIGKILL after `grace_s` (`stop_process_group`)."""
    process = start_process_group(command, env=env, cwd=cwd, log=log, **popen)
    try:
        if ready is not None:
            wait_ready(process, ready, timeout_s, log=log, name=name, interval_s=interval_s)
        yield process
    finally:
        stop_process_group(process, grace_s, stop_signal)
