"""StoreProbe: an online store that answers but holds none of the probed keys is not ready, with the
fix, logged once as an error; a filled store is ready; a store that fails or is slow keeps the service
ready (it degrades, it does not fail). Probes read the store at most once per interval."""

from __future__ import annotations

import logging
import threading

import pytest

from services.readiness import StoreProbe

KEYS = [283, 2268318, 2333346]


class Store:
    """What the probe reads: how many of the keys it holds, or an error, or a read that hangs."""

    def __init__(self) -> None:
        self.held = 0
        self.error: Exception | None = None
        self.hang = threading.Event()
        self.reads = 0

    def found(self, keys: list[int]) -> int:
        self.reads += 1
        if self.error is not None:
            raise self.error
        if self.hang.is_set():
            threading.Event().wait(1)
        return min(self.held, len(keys))


def _probe(store: Store, keys: list[int] = KEYS, interval_s: float = 0.0) -> StoreProbe:
    return StoreProbe(
        store.found, lambda: keys, lambda: "the popular items", timeout_s=0.2, interval_s=interval_s
    )


def _messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "services.readiness" and r.levelno == level]


def test_an_empty_store_is_not_ready_and_says_how_to_fill_it_once_in_the_log(caplog):
    store = Store()
    probe = _probe(store)
    with caplog.at_level(logging.INFO, logger="services.readiness"):
        first, second = probe.check(), probe.check()
        store.held = 2
        filled = probe.check()
    assert not first.ready and not second.ready
    assert "holds none of the popular items" in first.reason and "ctr run --stage materialize" in first.reason
    (error,) = _messages(caplog, logging.ERROR)  # once, when the state began
    assert error.startswith("NOT READY:") and "ctr run --stage materialize" in error
    assert filled.ready and filled.reason == ""
    (recovered,) = _messages(caplog, logging.WARNING)
    assert "holds 2 of 3 probed keys: ready" in recovered


@pytest.mark.parametrize("fault", ["error", "slow"])
def test_a_store_that_fails_or_hangs_keeps_the_service_ready(caplog, fault):
    store = Store()
    if fault == "error":
        store.error = ConnectionError("Connection refused")
    else:
        store.hang.set()
    with caplog.at_level(logging.INFO, logger="services.readiness"):
        state = _probe(store).check()
    assert state.ready
    (warning,) = _messages(caplog, logging.WARNING)
    assert "could not check the online store" in warning


def test_nothing_to_probe_is_ready_without_reading_the_store():
    store = Store()
    assert _probe(store, keys=[]).check().ready and store.reads == 0


def test_the_store_is_read_at_most_once_per_interval():
    store = Store()
    probe = _probe(store, interval_s=60)
    assert [probe.check().ready for _ in range(5)] == [False] * 5
    assert store.reads == 1
