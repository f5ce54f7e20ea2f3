"""The log of every served ranking, and its join to what the shopper did next.

One row per (request, item): who was ranked, with which model variant and version, at which
position and score, and the feature values the model saw. Joined later to behaviour events, it
gives online click/conversion per variant (the A/B readout) and the features actually served
(drift, skew). Files are Parquet under `date=YYYY-MM-DD/`, written whole and renamed into place,
so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from feature_repo.contract import (
    BEHAVIOR,
    EVENT_TIMESTAMP,
    INTENT_BEHAVIORS,
    ITEM_ID,
    LABEL_WINDOW,
    PAGE_VIEW,
    USER_ID,
)

log = logging.getLogger(__name__)

SERVED_AT = "served_at"
REQUEST_ID = "request_id"
# Columns every served row has; the numeric features the model saw follow, prefixed FEATURE_PREFIX.
COLUMNS: tuple[str, ...] = (
    REQUEST_ID,
    SERVED_AT,
    "endpoint",
    USER_ID,
    ITEM_ID,
    "position",
    "score",
    "variant",
    "model_name",
    "model_version",
    "feature_service",
    "fallback",
    "unknown_item",
    "candidate_source",
)
FEATURE_PREFIX = "f_"


class ServingLog:
    """Buffers served rows in memory and writes them as Parquet files from a background thread.

    Appending costs microseconds on the request path; a file is written every `flush_rows` rows or
    `flush_s` seconds, whichever comes first, and on `close()`.
    """

    def __init__(self, folder: Path, flush_rows: int = 5000, flush_s: float = 5.0) -> None:
        self.folder = folder
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._pending: list[dict[str, Any]] = []
        self._rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-log", daemon=True)
        self._thread.start()

    def append(self, **response: Any) -> None:
        """Queue one served response (the arguments of `served_rows`). The rows are built in the
        writer thread: the request pays only for a list append."""
        with self._lock:
            self._pending.append(response)
            self._rows += len(response["item_ids"])
            full = self._rows >= self.flush_rows
        if full:
            self._wake.set()

    def flush(self) -> Path | None:
        """Write what is buffered now; returns the file written, if any."""
        with self._lock:
            pending, self._pending, self._rows = self._pending, [], 0
        if not pending:
            return None
        frame = pd.concat([served_rows(**response) for response in pending], ignore_index=True)
        day = pd.Timestamp(frame[SERVED_AT].iloc[0]).strftime("%Y-%m-%d")
        folder = self.folder / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        partial = path.with_suffix(".parquet.tmp")
        frame.to_parquet(partial, index=False)
        partial.rename(path)
        return path

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a full disk must not take the ranker down; the rows stay lost
                log.exception("could not write the serving log under %s", self.folder)


def served_rows(
    *,
    request_id: str,
    endpoint: str,
    user_id: int,
    item_ids: list[int],
    scores: list[float],
    variant: str,
    model_name: str,
    model_version: str,
    feature_service: str,
    fallback: bool,
    unknown: Iterable[bool],
    sources: Iterable[str] | None = None,
    features: pd.DataFrame | None = None,
    order: np.ndarray | None = None,
    served_at: datetime | None = None,
) -> pd.DataFrame:
    """The log rows of one response, `item_ids` in served order; `features` in request order when
    `order` (served position -> request row) is given, else in served order."""
    n = len(item_ids)
    rows: dict[str, Any] = {
        REQUEST_ID: [request_id] * n,
        SERVED_AT: [pd.Timestamp(served_at or datetime.now(UTC))] * n,
        "endpoint": [endpoint] * n,
        USER_ID: np.full(n, user_id, np.int64),
        ITEM_ID: np.asarray(item_ids, np.int64),
        "position": np.arange(1, n + 1, dtype=np.int32),
        "score": np.asarray(scores, np.float32),
        "variant": [variant] * n,
        "model_name": [model_name] * n,
        "model_version": [model_version] * n,
        "feature_service": [feature_service] * n,
        "fallback": np.full(n, fallback),
        "unknown_item": np.fromiter(unknown, bool, count=n),
        "candidate_source": list(sources) if sources is not None else [""] * n,
    }
    frame = pd.DataFrame(rows)
    if features is not None:
        numeric = [
            c for c in features.columns if c not in (USER_ID, ITEM_ID) and is_numeric_dtype(features[c])
        ]
        values = features[numeric].to_numpy(np.float32, na_value=np.nan)
        if order is not None:
            values = values[order]
        logged = pd.DataFrame(values, columns=[FEATURE_PREFIX + c for c in numeric])
        frame = pd.concat([frame, logged], axis=1)
    return frame


def read_serving_log(
    folder: Path, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """Every served row under `folder` (optionally served in [start, end)); files of model versions
    with other features are unioned, missing features are NaN."""
    files = sorted(folder.glob("date=*/part-*.parquet"))
    if not files:
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    frame[SERVED_AT] = pd.to_datetime(frame[SERVED_AT], utc=True)
    if start is not None:
        frame = frame[frame[SERVED_AT] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame[SERVED_AT] < pd.Timestamp(end)]
    return frame.reset_index(drop=True)


def join_outcomes(
    served: pd.DataFrame, events: pd.DataFrame, horizon: timedelta = LABEL_WINDOW
) -> pd.DataFrame:
    """Label each served row with what the user did with that item within `horizon` after it was
    served: `clicked` (viewed it) and `converted` (cart, fav or buy), the model's own label."""
    served = served.reset_index(drop=True)
    key = np.arange(len(served))
    later = (
        served[[USER_ID, ITEM_ID, SERVED_AT]]
        .assign(_row=key)
        .merge(events[[USER_ID, ITEM_ID, BEHAVIOR, EVENT_TIMESTAMP]], on=[USER_ID, ITEM_ID])
    )
    ts = pd.to_datetime(later[EVENT_TIMESTAMP], utc=True)
    inside = (ts >= later[SERVED_AT]) & (ts < later[SERVED_AT] + horizon)
    later = later[inside]
    clicked = np.zeros(len(served), bool)
    converted = np.zeros(len(served), bool)
    clicked[later.loc[later[BEHAVIOR] == PAGE_VIEW, "_row"].to_numpy()] = True
    converted[later.loc[later[BEHAVIOR].isin(INTENT_BEHAVIORS), "_row"].to_numpy()] = True
    return served.assign(clicked=clicked, converted=converted)
