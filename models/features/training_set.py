"""Point-in-time training sets from the ranker's FeatureService, split by time.

At any size the set is built in bounded chunks: each day's page views are labelled from that day
and the next (a label looks LABEL_WINDOW ahead, less than a day), optionally downsampled (negatives
only, training and validation days only, deterministic for a seed), and joined through Feast's
get_historical_features at most `chunk_rows` at a time (small days of one split together). Each
chunk is one Parquet file of a dataset folder, so memory follows the chunk, not the window, and
training streams the files (models.kinds.rows) instead of loading them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.contract import EVENT_TIMESTAMP, ITEM_ID, LABEL, REQUEST_TS, USER_ID
from models.kinds.base import feature_matrix
from models.kinds.rows import ParquetRows, Rows

__all__ = [
    "SAMPLING_FILE",
    "ChunkWritten",
    "Split",
    "downsample_negatives",
    "feature_matrix",
    "join_features",
    "read_sampling",
    "split_by_time",
    "split_files",
    "write_chunks",
]

# The dataset folder's record of how it was sampled (readers skip files starting with "_").
SAMPLING_FILE = "_sampling.json"
SPLITS = ("train", "valid", "test")
ROW_GROUP_ROWS = 131_072


@dataclass(frozen=True)
class Split:
    """Training, validation and test rows: frames, or Rows streamed from the dataset's files."""

    train: pd.DataFrame | Rows
    valid: pd.DataFrame | Rows
    test: pd.DataFrame | Rows


def join_features(
    store,
    labelled: pd.DataFrame,
    service,
    via: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Join each labelled view with the features as they were at its timestamp, through Feast's
    get_historical_features or `via` (models.features.point_in_time.duckdb_join's join).

    Request-time features are computed as if the row had been ranked at its own timestamp.
    """
    from models.data.events import unix_seconds
    from models.features.store import historical_features

    rows = labelled[[USER_ID, ITEM_ID, EVENT_TIMESTAMP, LABEL]].assign(
        **{REQUEST_TS: unix_seconds(labelled[EVENT_TIMESTAMP])}
    )
    joined = via(rows) if via is not None else historical_features(store, rows, service)
    if len(joined) != len(rows):
        raise RuntimeError(
            f"The point-in-time join returned {len(joined)} training rows for {len(rows)} labelled views; "
            "check that every entity has a snapshot at or before its first event"
        )
    return joined.sort_values([EVENT_TIMESTAMP, USER_ID, ITEM_ID]).reset_index(drop=True)


@contextmanager
def bounded_duckdb(memory_limit: str, threads: int, temp_dir: Path) -> Iterator[None]:
    """Feast's DuckDB offline store joins on ibis' default DuckDB connection, which may take 80 %
    of the machine's memory: for the block, one bounded as the project's other DuckDB jobs are
    (spilling to `temp_dir` beyond `memory_limit`)."""
    import ibis

    previous = ibis.options.default_backend
    temp_dir.mkdir(parents=True, exist_ok=True)
    ibis.set_backend(
        ibis.duckdb.connect(memory_limit=memory_limit, threads=threads, temp_directory=str(temp_dir))
    )
    try:
        yield
    finally:
        ibis.options.default_backend = previous


def split_by_time(frame: pd.DataFrame, valid_start: datetime, test_start: datetime) -> Split:
    """Train on the earliest days, stop early on the next, test on the latest: no shuffling."""
    ts = frame[EVENT_TIMESTAMP]
    return Split(
        train=frame[ts < valid_start].reset_index(drop=True),
        valid=frame[(ts >= valid_start) & (ts < test_start)].reset_index(drop=True),
        test=frame[ts >= test_start].reset_index(drop=True),
    )


def split_of(start: pd.Timestamp, valid_start: datetime, test_start: datetime) -> str:
    """The split of a chunk starting at `start` (chunks never straddle the split boundaries)."""
    return "train" if start < valid_start else "valid" if start < test_start else "test"


def chunk_bounds(days: list[pd.Timestamp], end: datetime, cuts: tuple[datetime, ...]) -> list[tuple]:
    """[start, end) intervals: the days, each cut again where a split begins inside it."""
    edges = sorted({*days, pd.Timestamp(end), *(pd.Timestamp(c) for c in cuts if days[0] < c < end)})
    return list(zip(edges[:-1], edges[1:], strict=True))


def downsample_negatives(labelled: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """Every positive and a share `rate` of the negatives, chosen by a seeded hash of each view
    (user, item, time): the same views for the same seed, whatever the chunking or row order."""
    if rate >= 1.0:
        return labelled
    keys = pd.util.hash_pandas_object(labelled[[USER_ID, ITEM_ID, EVENT_TIMESTAMP]], index=False)
    # numeric columns hash without a key: the seed is mixed in by hashing the hashes again
    hashed = pd.util.hash_array(keys.to_numpy() ^ np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64))
    keep = (labelled[LABEL].to_numpy() == 1) | (hashed < np.uint64(rate * 2.0**64))
    return labelled[keep]


@dataclass(frozen=True)
class ChunkWritten:
    split: str
    start: str
    views: int  # labelled views of the chunk before sampling
    rows: int  # rows written
    positives: int


def write_chunks(
    chunks: Iterator[tuple[pd.Timestamp, pd.Timestamp, pd.DataFrame]],
    join: Callable[[pd.DataFrame], pd.DataFrame],
    folder: Path,
    *,
    valid_start: datetime,
    test_start: datetime,
    negative_rate: float,
    seed: int,
    chunk_rows: int,
    complete: Callable[[list[Path], int], None] | None = None,
) -> list[ChunkWritten]:
    """Write each chunk's labelled views, sampled (not on test days) and joined (`join`, at most
    `chunk_rows` views at a time), as Parquet files of a fresh dataset folder that replaces
    `folder` when complete; returns what each chunk gave. A join in two steps
    (models.features.point_in_time.AsOfJoin.in_two_steps) gives `join` its first step and
    `complete` the second, which rewrites all the files once they are written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.features.store import with_microsecond_stamps

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    schema: Any = None
    written: list[ChunkWritten] = []
    pending: list[pd.DataFrame] = []  # sampled views of consecutive days of one split
    pending_start, pending_views = None, 0

    def flush() -> None:
        nonlocal schema, pending, pending_start, pending_views
        if pending_start is None:
            return
        split = split_of(pending_start, valid_start, test_start)
        views = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
        rows = positives = 0
        for part, lo in enumerate(range(0, len(views), chunk_rows)):
            frame = with_microsecond_stamps(join(views.iloc[lo : lo + chunk_rows]))
            table = pa.Table.from_pandas(frame, preserve_index=False)
            schema = schema or table.schema
            name = f"{pending_start.tz_convert('UTC'):%Y%m%dT%H%M%S}-{part:04d}-{split}.parquet"
            pq.write_table(table.cast(schema), partial / name, row_group_size=ROW_GROUP_ROWS)
            rows, positives = rows + len(frame), positives + int(frame[LABEL].sum())
        written.append(ChunkWritten(split, pending_start.isoformat(), pending_views, rows, positives))
        pending, pending_start, pending_views = [], None, 0

    # Small days are joined together (one Feast call has a fixed cost), up to `chunk_rows` views
    # and never across a split boundary.
    for start, _end, labelled in chunks:
        split = split_of(start, valid_start, test_start)
        if pending_start is not None and split != split_of(pending_start, valid_start, test_start):
            flush()
        sampled = labelled if split == "test" else downsample_negatives(labelled, negative_rate, seed)
        pending.append(sampled)
        pending_start = start if pending_start is None else pending_start
        pending_views += len(labelled)
        if sum(len(p) for p in pending) >= chunk_rows:
            flush()
    flush()
    if complete is not None:
        complete(sorted(partial.glob("*.parquet")), ROW_GROUP_ROWS)
    record = {
        "negative_sample_rate": negative_rate if negative_rate < 1.0 else 1.0,
        "seed": seed,
        "sampled_splits": ["train", "valid"] if negative_rate < 1.0 else [],
        "chunks": [c.__dict__ for c in written],
    }
    (partial / SAMPLING_FILE).write_text(json.dumps(record, indent=2))
    if folder.is_dir():
        shutil.rmtree(folder)
    elif folder.exists():
        folder.unlink()  # a training set written as one file by an older version
    partial.replace(folder)
    return written


def split_files(folder: Path, split: str) -> list[Path]:
    """The dataset's files of one split, in time order."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    return sorted(folder.glob(f"*-{split}.parquet"))


def read_sampling(folder: Path) -> dict[str, Any]:
    """How the dataset was sampled ({"negative_sample_rate": 1.0} for an unsampled one)."""
    path = folder / SAMPLING_FILE
    return json.loads(path.read_text()) if path.exists() else {"negative_sample_rate": 1.0}


def streamed_split(folder: Path, frames: tuple[str, ...] = ()) -> Split:
    """The dataset's splits as Rows read block by block; those named in `frames` read whole."""
    parts = {}
    for split in SPLITS:
        rows = ParquetRows(split_files(folder, split))
        parts[split] = rows.to_frame() if split in frames else rows
    return Split(**parts)
