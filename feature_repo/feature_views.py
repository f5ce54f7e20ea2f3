"""Batch feature views over the daily behaviour snapshots."""

from datetime import timedelta

from contract import ITEM_FEATURES, ITEM_VIEW, USER_FEATURES, USER_VIEW
from data_sources import item_stats_source, user_stats_source
from entities import item, user
from feast import FeatureView, Field
from feast.types import Float32

# A snapshot is valid until the next one; an entity with no snapshot in that time had no
# activity in any window, which the models read as zero counts.
user_behavior_stats = FeatureView(
    name=USER_VIEW,
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name=name, dtype=Float32) for name in USER_FEATURES],
    source=user_stats_source,
    online=True,
    tags={"owner": "ranking", "cadence": "daily"},
)

item_behavior_stats = FeatureView(
    name=ITEM_VIEW,
    entities=[item],
    ttl=timedelta(0),
    schema=[Field(name=name, dtype=Float32) for name in ITEM_FEATURES],
    source=item_stats_source,
    online=True,
    tags={"owner": "ranking", "cadence": "daily"},
)
