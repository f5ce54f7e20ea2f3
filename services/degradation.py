"""Online-store reads with a deadline, so that a store that is down or slow costs a request at most
CTR_FEATURE_TIMEOUT_MS before the ranker falls back to popularity.

After a failure the store is left alone for `retry_after_s` (requests fall back at once instead of
queueing behind a dead connection); the next request after that tries it again, so service comes
back by itself when the store does.

The deadline is the store's: time the process spent in its own garbage collector during the wait
(every thread stopped, the store's answer unread) is added to it, so that the one-off collection
after a model swap does not pass for a slow store and close it to the requests behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from services.heap import collector_pause_s

T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The online store failed, timed out, or failed moments ago."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class StoreGuard:
    def __init__(
        self,
        timeout_s: float,
        retry_after_s: float = 1.0,
        workers: int = 8,
        own_pauses: Callable[[], float] = collector_pause_s,
    ) -> None:
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.own_pauses = own_pauses  # seconds the process stood still so far, read before and after
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="online-store")
        self._lock = threading.Lock()
        self._closed_at = 0.0  # monotonic time until which the store is not tried
        self._last_error = ""

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self._closed_at

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) within the deadline, or StoreUnavailable saying why not."""
        if not self.healthy:
            raise StoreUnavailable(f"online store failed {self.retry_after_s:g} s ago: {self._last_error}")
        began, paused_before = time.monotonic(), self.own_pauses()
        future = self._pool.submit(fn, *args)
        timed_out = False
        try:
            return self._within_deadline(future, began, paused_before)
        except FutureTimeout:
            timed_out = True
            reason = f"online store read took longer than {self.timeout_s * 1000:g} ms"
        except Exception as exc:  # any store client error: connection refused, reset, bad reply
            reason = f"online store read failed: {type(exc).__name__}: {exc}"[:300]
        with self._lock:
            self._last_error = reason
            self._closed_at = time.monotonic() + self.retry_after_s
        raise StoreUnavailable(reason, timed_out)

    def _within_deadline(self, future: Future[T], began: float, paused_before: float) -> T:
        """The future's result, waiting at most the timeout plus the process's own pauses since
        `began` (when the pause count was `paused_before`)."""

        def left() -> float:
            return self.timeout_s + self.own_pauses() - paused_before - (time.monotonic() - began)

        while True:
            try:
                return future.result(timeout=max(left(), 0.0))
            except FutureTimeout:
                if left() < 1e-3:
                    raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
