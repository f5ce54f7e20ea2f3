"""Offline evaluation of the candidate index: recall@k of what each user touched next, against the
cold-start lists (benchmarks/candidates.py reports it on the real test days)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import numpy as np
import pandas as pd

from feature_repo.contract import CATEGORY_ID, EVENT_TIMESTAMP, ITEM_ID, RECENT_EVENTS, USER_ID, shop_hour
from models.retrieval.index import CandidateIndex, _utc


def recent_history(
    events: pd.DataFrame, until: datetime | pd.Timestamp, n: int = RECENT_EVENTS
) -> pd.DataFrame:
    """Per user, the items and categories of the last `n` events before `until`, newest last."""
    until = _utc(until)
    frame = events[[USER_ID, ITEM_ID, CATEGORY_ID, EVENT_TIMESTAMP]].dropna()
    frame = frame[frame[EVENT_TIMESTAMP] < until].astype(
        {USER_ID: "int64", ITEM_ID: "int64", CATEGORY_ID: "int64"}
    )
    frame = frame.sort_values([USER_ID, EVENT_TIMESTAMP], kind="stable").groupby(USER_ID).tail(n)
    return frame.groupby(USER_ID).agg(items=(ITEM_ID, list), categories=(CATEGORY_ID, list))


RECALL_METHODS = ("covisit_category", "popular_by_hour", "popular_overall")


def recall_at_k(
    index: CandidateIndex,
    events: pd.DataFrame,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    ks: Iterable[int] = (20, 50, 100),
    *,
    new_items_only: bool = False,
) -> dict[str, dict[int, float]]:
    """Mean per-user recall@k of the distinct items each user touches in [start, end).

    Each user with events in the window asks once, at the hour of their first event in it, with
    their last RECENT_EVENTS events before `index.until`. Methods: the full list
    (`covisit_category`), the cold-start list of that hour (`popular_by_hour`) and the overall
    ranking (`popular_overall`). With `new_items_only`, items the user touched before `until` are
    dropped from the targets and excluded from the candidates.
    """
    ks = sorted(ks)
    start, end = _utc(start), _utc(end)
    window = events[(events[EVENT_TIMESTAMP] >= start) & (events[EVENT_TIMESTAMP] < end)].dropna(
        subset=[USER_ID, ITEM_ID, EVENT_TIMESTAMP]
    )
    window = window.sort_values(EVENT_TIMESTAMP, kind="stable")
    first_seen = window.groupby(USER_ID)[EVENT_TIMESTAMP].first()
    targets = window.groupby(USER_ID)[ITEM_ID].agg(lambda s: set(s.astype("int64").tolist()))
    history = recent_history(events, index.until)
    before = events[events[EVENT_TIMESTAMP] < index.until].dropna(subset=[USER_ID, ITEM_ID])
    touched = before.groupby(USER_ID)[ITEM_ID].agg(lambda s: set(s.astype("int64").tolist()))
    hits = {m: {k: [] for k in ks} for m in RECALL_METHODS}
    for user, wanted in targets.items():
        exclude = touched.get(user, set()) if new_items_only else set()
        wanted = wanted - exclude
        if not wanted:
            continue
        hour = shop_hour(first_seen[user])
        items, categories = (
            (history.at[user, "items"], history.at[user, "categories"]) if user in history.index else ((), ())
        )
        lists = {
            "covisit_category": index.recommend_candidates(items, categories, ks[-1], hour, exclude),
            "popular_by_hour": index.cold_start(ks[-1], hour, exclude),
            "popular_overall": index.cold_start(ks[-1], None, exclude),
        }
        for method, ranked in lists.items():
            for k in ks:
                hits[method][k].append(len(wanted.intersection(ranked[:k])) / len(wanted))
    return {
        m: {k: float(np.mean(v)) if v else float("nan") for k, v in per_k.items()}
        for m, per_k in hits.items()
    }
