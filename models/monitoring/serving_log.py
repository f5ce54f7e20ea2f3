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
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from feature_repo.contract import ITEM_ID, LABEL_WINDOW, USER_ID

log = logging.getLogger(__name__)

# A feature missing for a whole request is an all-None column in the joined frames; its values stay
# None either way. Set once here: a `catch_warnings` block per flush would reset every module's
# warn-once registry each time, and the server would repeat its libraries' one-off warnings.
warnings.filterwarnings("ignore", "The behavior of DataFrame concatenation", FutureWarning)

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
        """Queue one served response (the fields `rows_of` reads). The rows are built in the
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
        frame = rows_of(pending)
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


def rows_of(responses: list[dict[str, Any]]) -> pd.DataFrame:
    """The log rows of many responses, built column by column (one array per column, not one frame
    per response: the writer thread stays short).

    Each response has request_id, endpoint, user_id, item_ids (served order), scores, variant,
    model_name, model_version, feature_service, fallback, unknown, and optionally sources,
    served_at, features (one row per item) and order (served position -> row of `features`; without
    it `features` is in served order).
    """
    sizes = np.array([len(r["item_ids"]) for r in responses], np.int64)

    def repeat(key: str, default: Any = None) -> np.ndarray:
        return np.repeat(np.array([r.get(key, default) for r in responses], dtype=object), sizes)

    now = datetime.now(UTC)
    columns: dict[str, Any] = {
        REQUEST_ID: repeat(REQUEST_ID),
        SERVED_AT: pd.to_datetime([r.get(SERVED_AT) or now for r in responses], utc=True).repeat(sizes),
        "endpoint": repeat("endpoint"),
        USER_ID: np.repeat(np.array([r[USER_ID] for r in responses], np.int64), sizes),
        ITEM_ID: np.concatenate([np.asarray(r["item_ids"], np.int64) for r in responses]),
        "position": np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in sizes]),
        "score": np.concatenate([np.asarray(r["scores"], np.float32) for r in responses]),
        "variant": repeat("variant"),
        "model_name": repeat("model_name"),
        "model_version": repeat("model_version"),
        "feature_service": repeat("feature_service"),
        "fallback": np.repeat(np.array([bool(r["fallback"]) for r in responses]), sizes),
        "unknown_item": np.concatenate([np.asarray(list(r["unknown"]), bool) for r in responses]),
        "candidate_source": np.concatenate(
            [
                np.asarray(list(r.get("sources") or [""] * n), object)
                for r, n in zip(responses, sizes, strict=True)
            ]
        ),
    }
    names, logged = _logged_features(responses, sizes)
    frame = pd.DataFrame(columns)
    features_frame = pd.DataFrame(logged, columns=[FEATURE_PREFIX + name for name in names])
    return pd.concat([frame, features_frame], axis=1)


def _logged_features(responses: list[dict[str, Any]], sizes: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The numeric features of every served row, NaN for rows served without features.

    The responses' frames are joined once and converted once (per-response pandas work would cost
    ~0.3 ms a response, in a thread that shares the interpreter with the requests).
    """
    frames = [r.get("features") for r in responses]
    present = [f for f in frames if f is not None]
    if not present:
        return [], np.empty((int(sizes.sum()), 0), np.float32)
    joined = pd.concat(present, ignore_index=True)  # columns a frame lacks are NaN in its rows
    names = [c for c in joined.columns if c not in (USER_ID, ITEM_ID) and _is_number_column(joined[c])]
    values = joined[names].to_numpy(np.float32, na_value=np.nan)
    take = np.full(int(sizes.sum()), -1, np.int64)  # row of `values` for each served row
    offsets = np.r_[0, np.cumsum(sizes)]
    start = 0
    for k, (response, features) in enumerate(zip(responses, frames, strict=True)):
        if features is None:
            continue
        order = response.get("order")
        rows = np.asarray(order, np.int64) if order is not None else np.arange(sizes[k])
        take[offsets[k] : offsets[k + 1]] = start + rows
        start += len(features)
    logged = np.full((len(take), len(names)), np.nan, np.float32)
    served = take >= 0
    logged[served] = values[take[served]]
    return names, logged


def _is_number_column(column: pd.Series) -> bool:
    """Numeric, or objects that are numbers and None (a feature missing for a whole request comes
    as None); not lists."""
    if is_numeric_dtype(column.dtype):
        return True
    values = column.to_numpy()
    values = values[~pd.isna(values)]
    if len(values) == 0 or column.dtype != object:
        return False
    try:
        values.astype(np.float32)
    except (TypeError, ValueError):
        return False
    return not isinstance(values[0], (str, bytes))


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
    served: `clicked` (viewed it) and `converted` (cart, fav or buy), the model's own label.

    The in-memory form of `models.monitoring.tables.with_outcomes`, which the daily readout runs
    over the log's files; rows keep their order."""
    import duckdb

    from models.monitoring.tables import OUTCOME_COLUMNS, ROW_KEY, with_outcomes

    served = served.reset_index(drop=True)
    con = duckdb.connect()
    try:
        keys = served[list(ROW_KEY)]
        flags = with_outcomes(
            con, con.from_df(served[[*ROW_KEY, USER_ID, ITEM_ID, SERVED_AT]]),
            con.from_df(events[list(OUTCOME_COLUMNS)]), horizon,
        ).df()[[*ROW_KEY, "clicked", "converted"]]  # fmt: skip
    finally:
        con.close()
    labelled = keys.merge(flags, on=list(ROW_KEY), how="left", validate="one_to_one")
    return served.assign(
        clicked=labelled["clicked"].fillna(False).to_numpy(bool),
        converted=labelled["converted"].fillna(False).to_numpy(bool),
    )
