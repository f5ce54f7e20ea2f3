"""Labels: which page views led to purchase intent (see LABEL in feature_repo/contract.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from feature_repo.contract import (
    BEHAVIOR,
    EVENT_TIMESTAMP,
    INTENT_BEHAVIORS,
    ITEM_ID,
    LABEL,
    PAGE_VIEW,
    USER_ID,
)


def label_page_views(events: pd.DataFrame, window: timedelta, data_end: datetime) -> pd.DataFrame:
    """One row per page view: user, item, time and a 0/1 label.

    A view is positive when the same user's next cart/fav/buy of the same item comes within
    `window` after it. Views later than `data_end - window` cannot be judged and are left out, and
    a view logged twice in the same second counts once (it is one training row in Feast too).
    """
    key = [USER_ID, ITEM_ID]
    views = events.loc[events[BEHAVIOR] == PAGE_VIEW, [*key, EVENT_TIMESTAMP]].drop_duplicates()
    views = views[views[EVENT_TIMESTAMP] <= pd.Timestamp(data_end) - window]
    intents = events.loc[events[BEHAVIOR].isin(INTENT_BEHAVIORS), [*key, EVENT_TIMESTAMP]]
    intents = intents.rename(columns={EVENT_TIMESTAMP: "next_intent"})
    intents["_t"] = intents["next_intent"]
    joined = pd.merge_asof(
        views.sort_values(EVENT_TIMESTAMP).astype({USER_ID: "int64", ITEM_ID: "int64"}),
        intents.sort_values("_t").astype({USER_ID: "int64", ITEM_ID: "int64"}),
        left_on=EVENT_TIMESTAMP,
        right_on="_t",
        by=key,
        direction="forward",
        allow_exact_matches=False,
    )
    gap = joined["next_intent"] - joined[EVENT_TIMESTAMP]
    joined[LABEL] = (gap <= window).astype("int8")
    return joined[[*key, EVENT_TIMESTAMP, LABEL]].reset_index(drop=True)
