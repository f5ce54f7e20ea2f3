"""On-demand features, computed when features are read: by the same function for a training set
(get_historical_features) and for a live request (get_online_features).

The functions get and return columns as lists (Feast's "python" mode). They are stored in the
registry by value, so they import nothing from this repo: constants, and copies of the contract's
functions that are stored by value too (`_by_value`), come in as default arguments.
"""

import types

from contract import (
    AFFINITY_FEATURES,
    AFFINITY_VIEW,
    BEHAVIORS,
    CATEGORY_ID,
    INTENT_BEHAVIORS,
    ITEM_ID,
    REALTIME_FEATURES,
    REALTIME_VIEW,
    RECENCY_CAP_DAYS,
    RECENT_BEHAVIORS,
    RECENT_CATEGORIES,
    RECENT_ITEMS,
    RECENT_TIMESTAMPS,
    REQUEST_TS,
    SHORT_WINDOWS_S,
    TOP_CATEGORIES,
    USER_TOP_CATEGORIES,
    USER_TOP_CATEGORY_SHARES,
    shop_hour,
)
from data_sources import request_context
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64
from feature_views import item_behavior_stats, user_behavior_stats, user_recent_activity

# Sliced views are made inside the decorators: Feast would take a module-level slice for a second
# view of the same name.
_WINDOWS_S = tuple(SHORT_WINDOWS_S.values())
_INTENT_CODES = tuple(BEHAVIORS.index(b) for b in INTENT_BEHAVIORS)


def _by_value(function: types.FunctionType) -> types.FunctionType:
    """A copy of `function` that the registry stores by value, as Feast stores a view's own function
    (its module set to __main__), so that a reader needs no `contract` module to load the view."""
    copy = types.FunctionType(
        function.__code__,
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__module__ = "__main__"
    return copy


_SHOP_HOUR = _by_value(shop_hour)


@on_demand_feature_view(
    name=AFFINITY_VIEW,
    sources=[
        user_behavior_stats[[USER_TOP_CATEGORIES, USER_TOP_CATEGORY_SHARES]],
        item_behavior_stats[[CATEGORY_ID]],
    ],
    schema=[Field(name=n, dtype=Float64) for n in AFFINITY_FEATURES],
    mode="python",
    description="How much of the user's last 7 days went to the candidate's category (share and rank; "
    "rank TOP_CATEGORIES + 1 when it is not among the user's top categories).",
)
def user_item_affinity(
    inputs: dict,
    _names=(USER_TOP_CATEGORIES, USER_TOP_CATEGORY_SHARES, CATEGORY_ID),
    _outputs=tuple(AFFINITY_FEATURES),
    _top=TOP_CATEGORIES,
) -> dict:
    tops, shares, categories = (inputs[name] for name in _names)
    share_out, rank_out = [], []
    for top, share, category in zip(tops, shares, categories, strict=True):
        top = list(top) if top is not None else []
        if category is not None and category in top:
            position = top.index(category)
            share_out.append(float(share[position]))
            rank_out.append(float(position + 1))
        else:
            share_out.append(0.0)
            rank_out.append(float(_top + 1))
    return {_outputs[0]: share_out, _outputs[1]: rank_out}


@on_demand_feature_view(
    name=REALTIME_VIEW,
    sources=[user_recent_activity, item_behavior_stats[[CATEGORY_ID]], request_context],
    schema=[Field(name=n, dtype=Float64) for n in REALTIME_FEATURES],
    mode="python",
    description="Request-time features from the user's last events: hour of day, time since the last "
    "event, events in the last minutes, and whether the candidate or its category was seen lately.",
)
def realtime_context(
    inputs: dict,
    _keys=(RECENT_TIMESTAMPS, RECENT_ITEMS, RECENT_CATEGORIES, RECENT_BEHAVIORS, ITEM_ID, CATEGORY_ID),
    _request_ts=REQUEST_TS,
    _outputs=tuple(REALTIME_FEATURES),
    _windows=_WINDOWS_S,
    _hour=SHORT_WINDOWS_S["1h"],
    _intents=_INTENT_CODES,
    _shop_hour=_SHOP_HOUR,
    _cap_s=RECENCY_CAP_DAYS * 86400.0,
) -> dict:
    now = inputs[_request_ts]
    stamps, items, categories, behaviors, candidates, candidate_categories = (
        inputs.get(key) or [None] * len(now) for key in _keys
    )
    out: dict[str, list[float]] = {name: [] for name in _outputs}
    user = None  # what depends on the user's events and the request time only
    for i, t in enumerate(now):
        # A ranking request repeats one user's lists (the same objects) for every candidate: their
        # part is worked out once per user, the candidate's part per row.
        if not (
            user is not None
            and t == now[i - 1]
            and stamps[i] is stamps[i - 1]
            and items[i] is items[i - 1]
            and categories[i] is categories[i - 1]
            and behaviors[i] is behaviors[i - 1]
        ):
            ts = list(stamps[i]) if stamps[i] is not None else []
            known = [j for j, s in enumerate(ts) if s <= t]  # events after the request are not known at it
            ages = [t - ts[j] for j in known]
            user = (
                [
                    float(_shop_hour(t)),
                    float(min(min(ages), _cap_s)) if ages else _cap_s,
                    *[float(sum(1 for a in ages if a < w)) for w in _windows],
                    float(
                        sum(
                            1
                            for j, a in zip(known, ages, strict=True)
                            if a < _hour and behaviors[i][j] in _intents
                        )
                    ),
                ],
                {items[i][j] for j in known},
                {categories[i][j] for j in known},
            )
        values = [
            *user[0],
            float(candidates[i] is not None and candidates[i] in user[1]),
            float(candidate_categories[i] is not None and candidate_categories[i] in user[2]),
        ]
        for name, value in zip(_outputs, values, strict=True):
            out[name].append(value)
    return out
