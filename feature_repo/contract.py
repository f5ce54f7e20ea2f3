"""The feature contract: every name shared by ingestion, features, training and serving.

Feast loads this file with the rest of the repo, so it holds constants and a few small pure
functions, no Feast objects and no imports from the rest of the project.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

# --- Where the data lives ----------------------------------------------------------------------
# Everything the project writes lives under one data dir; models/paths.py names every path in it.
# The feature repo needs only its offline sources' folder, so it reads the variable here itself
# and never imports the library (whose settings would fail it on any unrelated bad variable).
DATA_DIR_VARIABLE = "CTR_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "var"
OFFLINE_FOLDER = "offline"  # <data dir>/offline/: the Parquet files of feature_repo/data_sources.py


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """CTR_DATA_DIR (blank counts as unset), else var/ in the project; absolute."""
    value = (os.environ if environ is None else environ).get(DATA_DIR_VARIABLE, "").strip()
    return Path(value or DEFAULT_DATA_DIR).resolve()


# --- Which feature_store.yaml ------------------------------------------------------------------
# feature_store.yaml beside this file holds the embedded stores (under var/). For any other data dir
# or stores the project writes the effective file to <data dir>/feast/feature_store.yaml, marked
# by its first line; Feast's own variable points the feast CLI, FeatureStore() and `feast serve` at it.
FEAST_YAML_VARIABLE = "FEAST_FS_YAML_FILE_PATH"
EFFECTIVE_YAML_MARKER = "# realtime_ctr: the effective feature_store.yaml of the data dir "


def effective_yaml_data_dir(path: str | Path) -> Path | None:
    """The data dir a feature_store.yaml was written for by the project; None for any other file."""
    try:
        with open(path, encoding="utf-8") as text:
            first = text.readline()
    except OSError:
        return None
    if not first.startswith(EFFECTIVE_YAML_MARKER):
        return None
    return Path(first[len(EFFECTIVE_YAML_MARKER) :].strip())


def check_feast_yaml_variable(environ: Mapping[str, str] | None = None) -> None:
    """Fail when FEAST_FS_YAML_FILE_PATH names the file written for another data dir than
    CTR_DATA_DIR's: Feast would read that data dir's registry and online store, while the offline
    sources declared here, and every other file of the project, follow CTR_DATA_DIR."""
    environ = os.environ if environ is None else environ
    named = environ.get(FEAST_YAML_VARIABLE, "").strip()
    written_for = effective_yaml_data_dir(named) if named else None
    if written_for is not None and written_for.resolve() != data_dir(environ):
        raise ValueError(
            f"{FEAST_YAML_VARIABLE}={named} is the feature_store.yaml of the data dir {written_for}, "
            f"but {DATA_DIR_VARIABLE} is {data_dir(environ)}: set {DATA_DIR_VARIABLE}={written_for}, "
            f"or point {FEAST_YAML_VARIABLE} at {data_dir(environ) / 'feast/feature_store.yaml'}"
        )


# --- The shop's time -------------------------------------------------------------------------
# The shop's time zone. CTR_TIMEZONE (models/settings.py) defaults to it and sets the calendar
# days of lake partitions, daily snapshots and DAG schedules. The hour of day is always taken
# here: it is a feature, fixed in the registered on-demand views and in the models trained on them.
SHOP_TIMEZONE = "Asia/Shanghai"


def _fixed_utc_offset_s(zone: str) -> int:
    """The zone's offset from UTC in seconds; shop_hour's arithmetic needs one without daylight saving."""
    tz = ZoneInfo(zone)
    offsets = {datetime(2017, month, 1, tzinfo=tz).utcoffset() for month in (1, 7)}
    if len(offsets) != 1:
        raise ValueError(f"{zone} has daylight saving time: shop_hour needs a fixed UTC offset")
    return int(offsets.pop().total_seconds())


SHOP_UTC_OFFSET_S = _fixed_utc_offset_s(SHOP_TIMEZONE)  # Asia/Shanghai: UTC+8 all year


def shop_hour(when):
    """Hour of day (0..23) in the shop's time of Unix seconds, or of an aware datetime.

    Unix seconds may be an int or float (an int comes back), or a NumPy array or pandas Series
    of them (an array or Series of hours comes back, of their dtype).
    """
    if isinstance(when, datetime):  # pd.Timestamp too
        if when.utcoffset() is None:
            raise ValueError(f"{when!r} needs a time zone")
        when = when.timestamp()
    hour = (when + SHOP_UTC_OFFSET_S) // 3600 % 24
    return int(hour) if isinstance(hour, int | float) else hour


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
WINDOWS_DAYS: dict[str, int] = {"1d": 1, "3d": 3, "7d": 7}
# Smoothing prior for conversion rates: (intents + PRIOR_RATE * PRIOR_WEIGHT) / (views + PRIOR_WEIGHT),
# so an item seen once is neither 0 nor 1.
CONVERSION_PRIOR_RATE = 0.03
CONVERSION_PRIOR_WEIGHT = 20.0
# Popularity trend: (views yesterday + TREND_PRIOR) / (mean daily views over 7 days + TREND_PRIOR);
# above 1 means rising. The prior keeps rarely seen items near 1.
TREND_PRIOR = 1.0
# A user's affinity to categories: the TOP_CATEGORIES categories with most of the user's events in
# the last 7 days, with their share of those events.
TOP_CATEGORIES = 5
# Days since an entity's last event are capped at the longest window: the cap means "none in it".
RECENCY_CAP_DAYS = 7.0


def count_features(prefix: str) -> list[str]:
    """Names of the behaviour-count features of one entity, e.g. ``user_cart_7d``."""
    return [f"{prefix}_{b}_{w}" for w in WINDOWS_DAYS for b in BEHAVIORS]


USER_TOP_CATEGORIES = "user_top_categories_7d"  # Array(Int64), most events first
USER_TOP_CATEGORY_SHARES = "user_top_category_shares_7d"  # Array(Float32), same order
USER_FEATURES: list[str] = [
    *count_features("user"),
    "user_conversion_7d",
    "user_active_days_7d",
    "user_days_since_last_event",
]
USER_LIST_FEATURES: list[str] = [USER_TOP_CATEGORIES, USER_TOP_CATEGORY_SHARES]
CATEGORY_FEATURES: list[str] = [*count_features("category"), "category_conversion_7d", "category_trend"]
# The item view carries its category's id and the category's headline numbers, so that ranking
# needs only (user, item) keys.
ITEM_FEATURES: list[str] = [
    *count_features("item"),
    "item_conversion_7d",
    "item_trend",
    "item_days_since_last_event",
    CATEGORY_ID,
    "category_pv_7d",
    "category_conversion_7d",
    "category_trend",
]
INTEGER_FEATURES: frozenset[str] = frozenset({CATEGORY_ID})  # Int64; every other scalar is Float32
# Computed when features are read (feature_repo/on_demand_views.py), from the user's top categories
# and the candidate's category.
AFFINITY_FEATURES: list[str] = ["user_category_share_7d", "user_category_rank_7d"]

# --- Short-term activity (pushed by the ingest service, rebuilt by the batch job) -------------
# Per user, the last RECENT_EVENTS events, newest last. A state row is stamped one second after its
# newest event (RECENT_STATE_DELAY), so a training row never sees its own event or any event of the
# same second, as a request ranked before that event would not.
RECENT_EVENTS = 20
RECENT_STATE_DELAY = timedelta(seconds=1)
EVENT_ID = "event_id"
RECENT_EVENT_IDS = "recent_event_ids"  # Array(Int64), see models/events.event_ids
RECENT_TIMESTAMPS = "recent_timestamps"  # Array(Int64), Unix seconds
RECENT_ITEMS = "recent_items"  # Array(Int64)
RECENT_CATEGORIES = "recent_categories"  # Array(Int64)
RECENT_BEHAVIORS = "recent_behaviors"  # Array(Int64): index into BEHAVIORS
RECENT_FEATURES: list[str] = [
    RECENT_EVENT_IDS,
    RECENT_TIMESTAMPS,
    RECENT_ITEMS,
    RECENT_CATEGORIES,
    RECENT_BEHAVIORS,
]
# Request-time features (feature_repo/on_demand_views.py), relative to the request's Unix time.
REQUEST_TS = "request_ts"  # request_hour is shop_hour(request_ts)
SHORT_WINDOWS_S: dict[str, int] = {"5m": 300, "1h": 3600}
REALTIME_FEATURES: list[str] = [
    "request_hour",
    "user_seconds_since_last_event",
    *[f"user_events_{w}" for w in SHORT_WINDOWS_S],
    "user_intents_1h",
    "item_seen_recently",
    "category_seen_recently",
]

# --- Feast object names ----------------------------------------------------------------------
USER_VIEW = "user_behavior_stats"
ITEM_VIEW = "item_behavior_stats"
CATEGORY_VIEW = "category_behavior_stats"
RECENT_VIEW = "user_recent_activity"
RECENT_PUSH_SOURCE = "user_activity_push"
AFFINITY_VIEW = "user_item_affinity"
REALTIME_VIEW = "realtime_context"
# The FeatureService a model is trained with and served through. Bump the suffix when its
# feature list changes so that models trained on the old list keep their own service.
RANKER_FEATURE_SERVICE = "ctr_ranker_v2"
RANKER_FEATURES: list[str] = [*USER_FEATURES, *ITEM_FEATURES, *AFFINITY_FEATURES]
# The ranker's features plus the short-term and request-time ones; reading it needs REQUEST_TS
# in every entity row.
REALTIME_FEATURE_SERVICE = "ctr_ranker_realtime_v1"
REALTIME_RANKER_FEATURES: list[str] = [*RANKER_FEATURES, *REALTIME_FEATURES]
# The FeatureService the CTR models are trained with and served through. The short-term and
# request-time features lift test AUC from about 0.64-0.67 to 0.72 on the Taobao slice.
MODEL_FEATURE_SERVICE = REALTIME_FEATURE_SERVICE
MODEL_FEATURES: list[str] = REALTIME_RANKER_FEATURES
