"""The feature contract: every name shared by ingestion, features, training and serving.

Feast loads this file with the rest of the repo, so it holds constants only, no Feast objects
and no imports from the rest of the project.
"""

from __future__ import annotations

from datetime import timedelta

# --- Canonical event schema (one row = one shopper action) -------------------------------------
USER_ID = "user_id"
ITEM_ID = "item_id"
CATEGORY_ID = "category_id"
BEHAVIOR = "behavior"
EVENT_TIMESTAMP = "event_timestamp"
EVENT_COLUMNS: tuple[str, ...] = (USER_ID, ITEM_ID, CATEGORY_ID, BEHAVIOR, EVENT_TIMESTAMP)
ID_COLUMNS: tuple[str, ...] = (USER_ID, ITEM_ID, CATEGORY_ID)

# Column order of the raw Taobao UserBehavior CSV files (no header row).
RAW_COLUMNS: tuple[str, ...] = (USER_ID, ITEM_ID, CATEGORY_ID, BEHAVIOR, "timestamp")

PAGE_VIEW = "pv"
INTENT_BEHAVIORS: tuple[str, ...] = ("cart", "fav", "buy")
BEHAVIORS: tuple[str, ...] = (PAGE_VIEW, *INTENT_BEHAVIORS)

# --- Label ---------------------------------------------------------------------------------------
# A page view is positive when the same user carts, favourites or buys the same item within
# LABEL_WINDOW after it: purchase intent, the thing a shop wants to raise. Every other page view
# is a negative. Page views closer than LABEL_WINDOW to the end of the data are not labelled.
LABEL = "label"
LABEL_WINDOW = timedelta(hours=6)

# --- Batch behaviour aggregates --------------------------------------------------------------
# Snapshots are taken once per day; a snapshot at midnight aggregates the days before it, so a
# training row never sees events from its own future.
SNAPSHOT_INTERVAL = timedelta(days=1)
WINDOWS_DAYS: dict[str, int] = {"1d": 1, "7d": 7}
# Smoothing prior for conversion rates: (intents + PRIOR_RATE * PRIOR_WEIGHT) / (views + PRIOR_WEIGHT),
# so an item seen once is neither 0 nor 1.
CONVERSION_PRIOR_RATE = 0.03
CONVERSION_PRIOR_WEIGHT = 20.0


def count_features(prefix: str) -> list[str]:
    """Names of the behaviour-count features of one entity, e.g. ``user_cart_7d``."""
    return [f"{prefix}_{b}_{w}" for w in WINDOWS_DAYS for b in BEHAVIORS]


USER_FEATURES: list[str] = [*count_features("user"), "user_conversion_7d"]
ITEM_FEATURES: list[str] = [
    *count_features("item"),
    "item_conversion_7d",
    "category_pv_7d",
    "category_conversion_7d",
]

# --- Feast object names ----------------------------------------------------------------------
USER_VIEW = "user_behavior_stats"
ITEM_VIEW = "item_behavior_stats"
# The FeatureService a model is trained with and served through. Bump the suffix when its
# feature list changes so that models trained on the old list keep their own service.
RANKER_FEATURE_SERVICE = "ctr_ranker_v1"
