"""Request and response models of the ranking API."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

# Feast keys entities as 64-bit integers: a larger id could never match and is refused up front.
MAX_ENTITY_ID = 2**63 - 1
LAST_UNIX_SECOND = 253_402_300_799  # 9999-12-31 23:59:59 UTC, the last time pandas and Python both hold

EntityId = Annotated[int, Field(ge=0, le=MAX_ENTITY_ID)]


class RankContext(BaseModel):
    request_ts: int | None = Field(
        default=None,
        ge=0,
        le=LAST_UNIX_SECOND,
        description="The request's time, Unix seconds (default: now). Request-time features such as "
        "seconds since the user's last event are computed relative to it; set it to replay the past.",
    )


class Contribution(BaseModel):
    feature: str
    value: float | None = Field(description="The feature's value for this item (null: missing).")
    contribution: float = Field(description="Its contribution to the item's score, in log-odds.")


class ScoredItem(BaseModel):
    item_id: int
    score: float = Field(
        description="Predicted probability of purchase intent (cart/fav/buy) after a view; in a "
        "fallback response, the item's popularity share instead."
    )
    unknown: bool = Field(
        default=False,
        description="The online store has no features for this item: it was scored as a new item.",
    )
    source: str | None = Field(
        default=None, description="/recommend: where the candidate came from (covisit, category, popular)."
    )
    explanation: list[Contribution] | None = Field(
        default=None, description="With explain=true: the features that moved the score most."
    )


class ModelRef(BaseModel):
    name: str
    version: str
    feature_service: str
    variant: str = Field(
        description="champion or challenger (a stable share of users, CTR_CHALLENGER_SHARE)."
    )


class RankResponse(BaseModel):
    request_id: str = Field(description="Key of this response's rows in the serving log.")
    user_id: int
    items: list[ScoredItem] = Field(description="Highest score first.")
    model: ModelRef
    fallback: bool = Field(
        default=False,
        description="True when the online store failed or was slow: items are ranked by popularity.",
    )
    fallback_reason: str | None = None
    cold_start: bool = Field(
        default=False, description="/recommend: the user has no history; the list is popularity by hour."
    )
