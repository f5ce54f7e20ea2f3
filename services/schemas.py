"""Request and response models of the ranking API."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
