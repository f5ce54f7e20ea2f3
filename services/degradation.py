"""Online-store reads with a deadline, so that a store that is down or slow costs a request at most
CTR_FEATURE_TIMEOUT_MS before the ranker falls back to popularity.

After a failure the store is left alone for `retry_after_s` (requests fall back at once instead of
queueing behind a dead connection); the next request after that tries it again, so service comes
back by itself when the store does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The online store failed, timed out, or failed moments ago."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


class StoreGuard:
    def __init__(self, timeout_s: float, retry_after_s: float = 1.0, workers: int = 8) -> None:
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
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
        future = self._pool.submit(fn, *args)
        timed_out = False
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            timed_out = True
            reason = f"online store read took longer than {self.timeout_s * 1000:g} ms"
        except Exception as exc:  # any store client error: connection refused, reset, bad reply
            reason = f"online store read failed: {type(exc).__name__}: {exc}"[:300]
        with self._lock:
            self._last_error = reason
            self._closed_at = time.monotonic() + self.retry_after_s
        raise StoreUnavailable(reason, timed_out)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
