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


def test_the_process_own_collector_pause_does_not_count_against_the_store():
    pauses = [0.0]  # seconds the process stood still, as services.heap counts them

    def read_during_a_pause():
        pauses[0] += 0.3  # every thread stopped for 0.3 s while the answer waited to be read
        time.sleep(0.15)
        return "answer"

    guard = StoreGuard(timeout_s=0.05, retry_after_s=5, own_pauses=lambda: pauses[0])
    assert guard.call(read_during_a_pause) == "answer" and guard.healthy

    # The same slow read without a pause of the process's own is the store's: it times out.
    started = time.perf_counter()
    with pytest.raises(StoreUnavailable, match="longer than 50 ms"):
        guard.call(time.sleep, 0.15)
    assert time.perf_counter() - started < 0.12 and not guard.healthy
    guard.close()
