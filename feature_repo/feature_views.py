"""Feature views: daily snapshots per user, item and category, and the users' short-term activity."""

from datetime import timedelta

from contract import (
    CATEGORY_FEATURES,
    CATEGORY_VIEW,
    INTEGER_FEATURES,
    ITEM_FEATURES,
    ITEM_VIEW,
    RECENT_FEATURES,
    RECENT_VIEW,
    USER_FEATURES,
    USER_TOP_CATEGORIES,
    USER_TOP_CATEGORY_SHARES,
    USER_VIEW,
)
from data_sources import category_stats_source, item_stats_source, user_activity_push, user_stats_source
from entities import category, item, user
from feast import FeatureView, Field
from feast.types import Array, Float32, Int64


def _scalars(names: list[str]) -> list[Field]:
    return [Field(name=n, dtype=Int64 if n in INTEGER_FEATURES else Float32) for n in names]


# A snapshot is valid until the next one; an entity with no snapshot in that time had no
# activity in any window, which the models read as zero counts.
user_behavior_stats = FeatureView(
    name=USER_VIEW,
    entities=[user],
    ttl=timedelta(0),
    schema=[
        *_scalars(USER_FEATURES),
        Field(name=USER_TOP_CATEGORIES, dtype=Array(Int64)),
        Field(name=USER_TOP_CATEGORY_SHARES, dtype=Array(Float32)),
    ],
    source=user_stats_source,
    online=True,
    tags={"owner": "ranking", "cadence": "daily"},
)

item_behavior_stats = FeatureView(
    name=ITEM_VIEW,
    entities=[item],
    ttl=timedelta(0),
    schema=_scalars(ITEM_FEATURES),
    source=item_stats_source,
    online=True,
    tags={"owner": "ranking", "cadence": "daily"},
)

category_behavior_stats = FeatureView(
    name=CATEGORY_VIEW,
    entities=[category],
    ttl=timedelta(0),
    schema=_scalars(CATEGORY_FEATURES),
    source=category_stats_source,
    online=True,
    tags={"owner": "ranking", "cadence": "daily"},
)

# Pushed live by the ingest service through its push source (the view's stream source); the batch
# job rebuilds the same rows offline from the event log into the push source's batch source.
user_recent_activity = FeatureView(
    name=RECENT_VIEW,
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name=n, dtype=Array(Int64)) for n in RECENT_FEATURES],
    source=user_activity_push,
    online=True,
    tags={"owner": "ranking", "cadence": "live"},
)
