"""Point-in-time training sets from the ranker's FeatureService, split by time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from feature_repo.contract import EVENT_TIMESTAMP, ITEM_ID, LABEL, REQUEST_TS, USER_ID
from models.kinds.base import feature_matrix

__all__ = ["Split", "feature_matrix", "join_features", "split_by_time"]


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def join_features(store, labelled: pd.DataFrame, service) -> pd.DataFrame:
    """Join each labelled view with the features as they were at its timestamp.

    Request-time features are computed as if the row had been ranked at its own timestamp.
    """
    from models.data.events import unix_seconds
    from models.features.store import historical_features

    rows = labelled[[USER_ID, ITEM_ID, EVENT_TIMESTAMP, LABEL]].assign(
        **{REQUEST_TS: unix_seconds(labelled[EVENT_TIMESTAMP])}
    )
    joined = historical_features(store, rows, service)
    if len(joined) != len(rows):
        raise RuntimeError(
            f"Feast returned {len(joined)} training rows for {len(rows)} labelled views; "
            "check that every entity has a snapshot at or before its first event"
        )
    return joined.sort_values([EVENT_TIMESTAMP, USER_ID, ITEM_ID]).reset_index(drop=True)


def split_by_time(frame: pd.DataFrame, valid_start: datetime, test_start: datetime) -> Split:
    """Train on the earliest days, stop early on the next, test on the latest: no shuffling."""
    ts = frame[EVENT_TIMESTAMP]
    return Split(
        train=frame[ts < valid_start].reset_index(drop=True),
        valid=frame[(ts >= valid_start) & (ts < test_start)].reset_index(drop=True),
        test=frame[ts >= test_start].reset_index(drop=True),
    )
