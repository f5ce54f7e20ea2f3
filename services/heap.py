"""Keep CPython's full garbage collections off the request path.

A full (oldest-generation) collection walks every tracked object. Once TensorFlow, Feast, pandas and
a model are loaded that is ~750,000 objects, and each full collection stops the interpreter for
~0.4 s: under 50 requests/s one came every ~6 s and put 20 requests at a time past 300 ms
(benchmarks/RESULTS.md). What a service has loaded at start-up lives as long as it does, so it is
moved out of the collector's reach (`gc.freeze`); requests' garbage is collected as before.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


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
