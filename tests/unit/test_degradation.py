"""A dead or slow store costs a request at most the timeout, then the store is retried by itself."""

import time

import pytest

from services.degradation import StoreGuard, StoreUnavailable


def test_slow_and_failing_reads_raise_within_the_deadline_and_service_recovers():
    guard = StoreGuard(timeout_s=0.05, retry_after_s=0.2)
    assert guard.call(lambda x: x + 1, 1) == 2

    started = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="longer than 50 ms"):
        guard.call(time.sleep, 1.0)
    assert time.perf_counter() - started < 0.5

    def refused():
        raise ConnectionError("Connection refused")

    time.sleep(0.25)
    with pytest.raises(StoreUnavailable, match="ConnectionError: Connection refused"):
        guard.call(refused)
    # Right after a failure the store is not tried: the request falls back at once.
    calls = []
    with pytest.raises(StoreUnavailable, match="failed 0.2 s ago"):
        guard.call(calls.append, 1)
    assert calls == [] and not guard.healthy
    time.sleep(0.25)
    assert guard.call(lambda: "back") == "back" and guard.healthy
    guard.close()
