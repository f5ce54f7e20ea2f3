"""What the ranker reads for one request: the features of (user, candidate) pairs through a
model version's FeatureService, with candidates the store does not know scored as new items."""

from __future__ import annotations

import numpy as np
import pandas as pd

from feature_repo.contract import ITEM_FEATURES, ITEM_ID, REQUEST_TS, USER_ID
from models.settings import Settings


class RankerFeatures:
    def __init__(self, store, settings: Settings) -> None:
        from models.features import new_item_features

        self.store = store
        self.settings = settings
        self.new_item = new_item_features()

    def read(
        self, feature_service: str, user_id: int, item_ids: list[int], request_ts: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """One row per candidate, in order, and which candidates had no item features."""
        rows = [{USER_ID: user_id, ITEM_ID: item_id, REQUEST_TS: request_ts} for item_id in item_ids]
        service = self.store.get_feature_service(feature_service)
        frame = pd.DataFrame(self.store.get_online_features(features=service, entity_rows=rows).to_dict())
        unknown = frame[ITEM_FEATURES].isna().all(axis=1).to_numpy()
        if unknown.any():
            frame.loc[unknown, list(self.new_item)] = list(self.new_item.values())
        return frame, unknown
