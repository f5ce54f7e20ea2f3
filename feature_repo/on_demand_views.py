"""On-demand features, computed when features are read: by the same function for a training set
(get_historical_features) and for a live request (get_online_features).

The functions get and return columns as lists (Feast's "python" mode) and work on whole columns with
NumPy, so that the millions of rows of a training set cost what a request's hundred do per row; they
take Arrow arrays too, which a training-set build passes without converting them to Python lists.
They are stored in the registry by value, so they import nothing from this repo: constants, and
copies of the contract's and this module's functions that are stored by value too (`_by_value`),
come in as default arguments.
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


def _list_column(column, value_type: str):
    """A column of lists (Python lists, NumPy arrays, None, or an Arrow list array) as its values
    flattened and, per value, the index of its row; the values come as `value_type`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow_type = pa.list_(getattr(pa, value_type)())
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        column = list(column)
        first = column[0] if column else None
        if first is not None and all(x is first for x in column):
            # a request's rows share one user's lists: converted once
            one = np.asarray(first, dtype=value_type)
            return np.tile(one, len(column)), np.repeat(np.arange(len(column)), len(one))
        column = pa.array(column, type=arrow_type)
    if pa.types.is_null(column.type):
        return np.zeros(0, dtype=value_type), np.zeros(0, dtype=np.int64)
    column = column.cast(arrow_type)
    values = column.flatten().to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    return values, parents


def _int_column(column):
    """A column of integers or None as (values with None as 0, where a value is present)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        column = pa.array(column, type=pa.int64())
    column = column.cast(pa.int64())
    present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return column.fill_null(0).to_numpy(zero_copy_only=False), present


def _row_starts(parents, n: int):
    """Per row, the index of its first flattened value (values of a row are contiguous)."""
    import numpy as np

    counts = np.bincount(parents, minlength=n)
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


_LISTS = _by_value(_list_column)
_INTS = _by_value(_int_column)
_STARTS = _by_value(_row_starts)


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
    _lists=_LISTS,
    _ints=_INTS,
    _starts=_STARTS,
) -> dict:
    import numpy as np

    categories, known = _ints(inputs[_names[2]])
    n = len(categories)
    tops, rows = _lists(inputs[_names[0]], "int64")
    shares, share_rows = _lists(inputs[_names[1]], "float64")
    # the first place in the user's top categories that holds the candidate's category (a row's
    # values are contiguous and in order: its first match is the first of its run of matches)
    local = np.arange(len(tops)) - _starts(rows, n)[rows]
    match = np.flatnonzero((tops == categories[rows]) & known[rows])
    first = match[np.r_[True, rows[match][1:] != rows[match][:-1]]] if len(match) else match
    position = np.full(n, _top + 1, dtype=np.int64)
    position[rows[first]] = local[first]
    found = position <= _top
    share = np.zeros(n)
    share[found] = shares[_starts(share_rows, n)[found] + position[found]]
    rank = np.where(found, position + 1, _top + 1).astype(np.float64)
    return {_outputs[0]: share.tolist(), _outputs[1]: rank.tolist()}


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
    _lists=_LISTS,
    _ints=_INTS,
) -> dict:
    import numpy as np

    now, _ = _ints(inputs[_request_ts])
    n = len(now)
    missing = [None] * n
    # The user's events, one value per (row, event); the four lists of a row are aligned.
    stamps, rows = _lists(inputs.get(_keys[0], missing), "int64")
    items, _ = _lists(inputs.get(_keys[1], missing), "int64")
    categories, _ = _lists(inputs.get(_keys[2], missing), "int64")
    behaviors, _ = _lists(inputs.get(_keys[3], missing), "int64")
    candidates, has_candidate = _ints(inputs.get(_keys[4], missing))
    candidate_categories, has_category = _ints(inputs.get(_keys[5], missing))
    known = stamps <= now[rows]  # events after the request are not known at it
    rows = rows[known]
    ages = now[rows] - stamps[known]
    newest = np.full(n, np.inf)
    if len(rows):  # the youngest known event of each row's run of values
        runs = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        newest[rows[runs]] = np.minimum.reduceat(ages, runs)

    def per_row(mask):
        return np.bincount(rows[mask], minlength=n).astype(np.float64)

    intents = np.isin(behaviors[known], np.asarray(_intents, dtype=np.int64))
    values = [
        np.asarray(_shop_hour(now), dtype=np.float64),
        np.minimum(newest, _cap_s),
        *[per_row(ages < w) for w in _windows],
        per_row((ages < _hour) & intents),
        np.minimum(per_row((items[known] == candidates[rows]) & has_candidate[rows]), 1.0),
        np.minimum(per_row((categories[known] == candidate_categories[rows]) & has_category[rows]), 1.0),
    ]
    return {name: value.tolist() for name, value in zip(_outputs, values, strict=True)}
