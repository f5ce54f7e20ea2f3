"""Request and response models of the ranking API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RankContext(BaseModel):
    request_ts: int | None = Field(
        default=None,
        ge=0,
        description="The request's time, Unix seconds (default: now). Request-time features such as "
        "seconds since the user's last event are computed relative to it; set it to replay the past.",
    )


class ScoredItem(BaseModel):
    item_id: int
    score: float = Field(description="Predicted probability of purchase intent (cart/fav/buy) after a view.")


class ModelRef(BaseModel):
    name: str
    version: str
    feature_service: str


class RankResponse(BaseModel):
    user_id: int
    items: list[ScoredItem] = Field(description="The candidates, highest score first.")
    model: ModelRef
