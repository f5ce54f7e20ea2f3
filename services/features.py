"""What the ranker reads for one request: the features of (user, candidate) pairs through a
model version's FeatureService, with candidates the store does not know scored as new items."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from models.settings import Settings


class RankerFeatures:
    """One OnlineFeatureReader per FeatureService (its item cache shared by every request)."""

    def __init__(self, store, settings: Settings) -> None:
        from models.features import new_item_features

        self.store = store
        self.settings = settings
        self.new_item = new_item_features()
        self._readers: dict[str, object] = {}
        self._lock = threading.Lock()

    def reader(self, feature_service: str):
        from models.online_features import OnlineFeatureReader

        with self._lock:
            if feature_service not in self._readers:
                service = self.store.get_feature_service(feature_service)
                self._readers[feature_service] = OnlineFeatureReader(
                    self.store, service, self.settings.item_cache_ttl_s
                )
            return self._readers[feature_service]

    def read(
        self, feature_service: str, user_id: int, item_ids: list[int], request_ts: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """One row per candidate, in order, and which candidates had no item features."""
        result = self.reader(feature_service).read(user_id, item_ids, request_ts)
        frame = result.frame
        unknown = np.isin(np.asarray(item_ids, np.int64), np.asarray(result.unknown_items, np.int64))
        if unknown.any():
            frame = frame.copy()
            frame.loc[unknown, list(self.new_item)] = list(self.new_item.values())
        return frame, unknown
