"""FeatureServices: the exact feature lists a model is trained with and served through."""

from contract import RANKER_FEATURE_SERVICE
from feast import FeatureService
from feature_views import item_behavior_stats, user_behavior_stats

ctr_ranker_v1 = FeatureService(
    name=RANKER_FEATURE_SERVICE,
    features=[user_behavior_stats, item_behavior_stats],
    description="Features of the CTR ranking models (XGBoost).",
)
