"""Keep CPython's full garbage collections off the request path.

A full (oldest-generation) collection walks every tracked object. Once TensorFlow, Feast, pandas and
a model are loaded that is ~750,000 objects, and each full collection stops the interpreter for
~0.4 s: under 50 requests/s one came every ~6 s and put 20 requests at a time past 300 ms
(benchmarks/RESULTS.md). What a service has loaded at start-up lives as long as it does, so it is
moved out of the collector's reach (`gc.freeze`); requests' garbage is collected as before.

The one full collection left, after a model swap, still stops every thread for ~0.4 s. Each
collection is timed (`collector_pause_s`), so that a deadline on a store read can leave out the
time the process itself stood still: such a pause is not the store being slow.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

# (seconds spent in finished collections, perf_counter at the start of the running one or None),
# replaced as a whole: the callbacks are Python code, so another thread may run in the middle of one,
# and a collection still finishing must then count as the pause it is.
_collections: tuple[float, float | None] = (0.0, None)


def _time_collection(phase: str, info: dict) -> None:
    global _collections
    paused, since = _collections
    if phase == "start":
        _collections = (paused, time.perf_counter())
    elif since is not None:
        _collections = (paused + time.perf_counter() - since, None)


gc.callbacks.append(_time_collection)


def collector_pause_s() -> float:
    """Seconds this process has spent in garbage collections since this module was imported, the
    one running (if any) up to now."""
    paused, since = _collections
    return paused if since is None else paused + time.perf_counter() - since


def freeze_loaded() -> int:
    """Collect once, then exempt every object alive now from later collections; returns how many.

    Call at the end of start-up, and again after a model swap: the previous generation is unfrozen
    and collected first (its reference cycles would otherwise never be freed), a one-off pause.
    """
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "%d objects exempt from garbage collection (%.0f ms)", frozen, 1000 * (time.perf_counter() - started)
    )
    return frozen
