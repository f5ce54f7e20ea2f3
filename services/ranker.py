"""BentoML ranking service: `bentoml serve services.ranker:Ranker`.

Reads user and item features from the Feast online store through the FeatureService the model
was trained with, and scores candidates with the MLflow `champion` of CTR_SERVED_MODEL
(`ctr-xgboost` by default, or `ctr-wide-deep`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated

import bentoml
import pandas as pd
from bentoml.exceptions import InvalidArgument
from pydantic import Field

from feature_repo.contract import ITEM_ID, REQUEST_TS, USER_ID
from models.settings import get_settings
from services.schemas import ModelRef, RankContext, RankResponse, ScoredItem

SETTINGS = get_settings()


class FeatureBindingError(RuntimeError):
    """The model was trained on other features than the Feast registry now serves."""


@bentoml.service(traffic={"timeout": 10}, workers=1)
class Ranker:
    def __init__(self) -> None:
        from models.feature_store import fingerprint, open_store
        from models.registry import load_by_alias

        self.served = load_by_alias(SETTINGS)
        self.store = open_store(SETTINGS)
        self.feature_service = self.store.get_feature_service(self.served.feature_service)
        registered = fingerprint(self.feature_service)
        if registered != self.served.fingerprint:
            raise FeatureBindingError(
                f"{self.served.name} v{self.served.version} was trained with FeatureService "
                f"'{self.served.feature_service}' fingerprint {self.served.fingerprint}, but the Feast "
                f"registry now has fingerprint {registered}; retrain or re-apply the matching feature repo"
            )

    def score(self, user_id: int, item_ids: list[int], request_ts: int) -> list[float]:
        """Online features for each (user, item) pair at the request's time, then the model: the
        path /rank serves."""
        rows = [{USER_ID: user_id, ITEM_ID: item_id, REQUEST_TS: request_ts} for item_id in item_ids]
        features = self.store.get_online_features(features=self.feature_service, entity_rows=rows).to_dict()
        return self.served.predict(pd.DataFrame(features)).tolist()

    @bentoml.api
    def rank(
        self,
        user_id: Annotated[int, Field(ge=0, description="The shopper's id.")],
        item_ids: Annotated[
            list[Annotated[int, Field(ge=0)]],
            Field(
                min_length=1, max_length=SETTINGS.max_candidates, description="Candidate item ids, unique."
            ),
        ],
        context: RankContext | None = None,
    ) -> RankResponse:
        """Rank candidate items for a user, highest predicted purchase intent first."""
        if len(set(item_ids)) != len(item_ids):
            repeated = sorted(i for i, n in Counter(item_ids).items() if n > 1)
            raise InvalidArgument(f"item_ids must be unique; repeated: {repeated[:10]}")
        request_ts = context.request_ts if context and context.request_ts is not None else int(time.time())
        scores = self.score(user_id, item_ids, request_ts)
        ranked = sorted(zip(item_ids, scores, strict=True), key=lambda pair: -pair[1])
        return RankResponse(
            user_id=user_id,
            items=[ScoredItem(item_id=i, score=s) for i, s in ranked],
            model=ModelRef(
                name=self.served.name,
                version=self.served.version,
                feature_service=self.served.feature_service,
            ),
        )
