"""Entities: the keys features are looked up by."""

from contract import CATEGORY_ID, ITEM_ID, USER_ID
from feast import Entity, ValueType

user = Entity(name="user", join_keys=[USER_ID], value_type=ValueType.INT64, description="A shopper.")
item = Entity(name="item", join_keys=[ITEM_ID], value_type=ValueType.INT64, description="A product.")
category = Entity(
    name="category",
    join_keys=[CATEGORY_ID],
    value_type=ValueType.INT64,
    description="A product category (every item has one).",
)
