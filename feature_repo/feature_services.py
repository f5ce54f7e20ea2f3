"""FeatureServices: the exact feature lists a model is trained with and served through.

A service's name carries a version: change its features, bump the version (feature_repo/contract.py).
"""

from contract import RANKER_FEATURE_SERVICE, REALTIME_FEATURE_SERVICE, USER_FEATURES
from feast import FeatureService
from feature_views import item_behavior_stats, user_behavior_stats
from on_demand_views import realtime_context, user_item_affinity

ctr_ranker = FeatureService(
    name=RANKER_FEATURE_SERVICE,
    features=[user_behavior_stats[USER_FEATURES], item_behavior_stats, user_item_affinity],
    description="Features of the CTR ranking models: daily user/item/category numbers and the "
    "user's affinity to the candidate's category. Entity rows: user_id, item_id.",
)

ctr_ranker_realtime = FeatureService(
    name=REALTIME_FEATURE_SERVICE,
    features=[user_behavior_stats[USER_FEATURES], item_behavior_stats, user_item_affinity, realtime_context],
    description="The ranker's features plus the user's last minutes, read at request time. Entity rows: "
    "user_id, item_id, request_ts (Unix seconds).",
)
