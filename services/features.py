"""What the ranker reads for one request: the features of (user, candidate) pairs through a
model version's FeatureService, with candidates the store does not know scored as new items."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from models.settings import Settings
from services.metrics import ITEM_FEATURE_READS

log = logging.getLogger(__name__)


class RankerFeatures:
    """One OnlineFeatureReader per FeatureService (its item cache shared by every request)."""

    def __init__(self, store, settings: Settings) -> None:
        from models.features.batch import new_item_features

        self.store = store
        self.settings = settings
        self.new_item = new_item_features()
        self._readers: dict[str, object] = {}
        self._lock = threading.Lock()

    def reader(self, feature_service: str):
        from models.features.online_reader import OnlineFeatureReader

        with self._lock:
            if feature_service not in self._readers:
                service = self.store.get_feature_service(feature_service)
                self._readers[feature_service] = OnlineFeatureReader(
                    self.store,
                    service,
                    self.settings.item_cache_ttl_s,
                    unknown_item_ttl_s=self.settings.unknown_item_ttl_s,
                    max_cached_items=self.settings.item_cache_items,
                )
            return self._readers[feature_service]

    def keep_warm(self, feature_service: str, items: Callable[[], list[int]]) -> None:
        """Re-read the `items()` (the most popular) every half item-cache TTL in a daemon thread, so
        that they never expire on a request's path."""
        ttl = self.settings.item_cache_ttl_s
        if ttl <= 0:
            return
        reader = self.reader(feature_service)

        def loop() -> None:
            while True:
                try:
                    reader.warm(items(), chunk=25, pause_s=0.02)
                except Exception:  # the store being down is the request path's business
                    log.warning("could not refresh the item cache", exc_info=True)
                time.sleep(max(ttl / 2, 1.0))

        threading.Thread(target=loop, name="item-cache-refresh", daemon=True).start()

    def stored(self, feature_service: str, item_ids: list[int]) -> int:
        """How many of `item_ids` the online store holds rows for, read now (not from the cache)."""
        return len(self.reader(feature_service).stored(item_ids))

    def read(
        self, feature_service: str, user_id: int, item_ids: list[int], request_ts: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """One row per candidate, in order, and which candidates had no item features."""
        result = self.reader(feature_service).read(user_id, item_ids, request_ts)
        distinct = len(dict.fromkeys(item_ids))
        ITEM_FEATURE_READS.labels(source="cache").inc(result.cached_items)
        ITEM_FEATURE_READS.labels(source="store").inc(max(distinct - result.cached_items, 0))
        frame = result.frame
        unknown = np.isin(np.asarray(item_ids, np.int64), np.asarray(result.unknown_items, np.int64))
        if unknown.any():
            frame = frame.copy()
            frame.loc[unknown, list(self.new_item)] = list(self.new_item.values())
        return frame, unknown
