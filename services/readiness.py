"""Whether the online store holds what the ranker serves, for /readyz.

A store that answers but holds none of the FeatureService's entities is a store nothing was
materialized into (switched to Redis, say, without running the materialization): every item would be
scored as unknown and every user as new, with nothing else wrong to see. `StoreProbe` reads a few
keys the store must hold (the most popular items of the candidate lists, a single online read, not a
scan) and reports such a store as not ready, with the fix, and loudly in the log when that state
begins and ends. A store that is down or slow is not a reason to be unready: the ranker falls back to
popularity and flags its responses, and the probe says so in the log only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.degradation import StoreGuard, StoreUnavailable

log = logging.getLogger(__name__)

FIX = (
    "materialize the features into it: `ctr run --stage materialize` (or the ctr_features DAG) with "
    "the same CTR_ONLINE_STORE / CTR_REDIS_CONNECTION as the service"
)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""  # why not ready (empty when ready)


class StoreProbe:
    """`found(keys)` counts the keys the store holds rows for; `keys()` gives the keys to probe (none:
    nothing to tell, ready). A check reads the store at most every `interval_s` and within
    `timeout_s`, on a guard of its own, so that probes never close the request path's guard."""

    def __init__(
        self,
        found: Callable[[list[int]], int],
        keys: Callable[[], list[int]],
        describe: Callable[[], str],  # what the keys are, for the messages
        timeout_s: float = 2.0,
        interval_s: float = 1.0,
    ) -> None:
        self._found = found
        self._keys = keys
        self._describe = describe
        self.interval_s = interval_s
        self._guard = StoreGuard(timeout_s, retry_after_s=interval_s, workers=1)
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._last = Readiness(True)
        self._state = "unchecked"  # unchecked, filled, empty or unreachable: logged when it changes

    def check(self) -> Readiness:
        with self._lock:
            if time.monotonic() - self._checked_at < self.interval_s:
                return self._last
            self._last = self._probe()
            self._checked_at = time.monotonic()
            return self._last

    def _probe(self) -> Readiness:
        keys = self._keys()
        if not keys:
            return Readiness(True)
        try:
            found = self._guard.call(self._found, keys)
        except StoreUnavailable as exc:
            self._enter(
                "unreachable", logging.WARNING, "could not check the online store (%s); serving on", exc
            )
            return Readiness(True)
        if found == 0:
            reason = f"the online store holds none of {self._describe()}; {FIX}"
            self._enter("empty", logging.ERROR, "NOT READY: %s", reason)
            return Readiness(False, reason)
        # A recovery is as visible as the trouble was (the services log WARNING and above).
        level = logging.INFO if self._state in ("unchecked", "filled") else logging.WARNING
        message = "the online store holds %d of %d probed keys: ready"
        self._enter("filled", level, message, found, len(keys))
        return Readiness(True)

    def _enter(self, state: str, level: int, message: str, *args: object) -> None:
        if state != self._state:
            self._state = state
            log.log(level, message, *args)

    def close(self) -> None:
        self._guard.close()
