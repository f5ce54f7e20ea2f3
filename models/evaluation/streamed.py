"""The test window scored block by block, so that evaluation and the gate stay bounded in memory.

At 100 M events the test days hold ~19 M rows of ~50 columns (7 GiB as float64) and the training
days several times that. What the metrics need per row is small: the label, the user and each
model's score. Those are kept; the rows themselves are read one row group at a time. What needs
whole rows (plots, importances, the registered artifact's check, the latency probe, the
baselines' fit) gets a seeded uniform sample, which is every row on a set smaller than the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo.contract import LABEL, USER_ID
from models.kinds.rows import Rows, as_rows

Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass(frozen=True)
class Scored:
    """Labels, users and each scorer's probabilities, in the rows' order."""

    y: np.ndarray
    users: np.ndarray
    scores: dict[str, np.ndarray]


def score_rows(rows: pd.DataFrame | Rows, scorers: Mapping[str, Scorer]) -> Scored:
    """Every scorer over every block of `rows`, in one pass over the data."""
    ys, users, parts = [], [], {name: [] for name in scorers}
    for frame in as_rows(rows).frames():
        ys.append(frame[LABEL].to_numpy())
        users.append(frame[USER_ID].to_numpy())
        for name, score in scorers.items():
            parts[name].append(np.asarray(score(frame), dtype=np.float64).reshape(-1))

    def joined(chunks: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)

    return Scored(
        y=joined(ys, np.int64),
        users=joined(users, np.int64),
        scores={name: joined(chunks, np.float64) for name, chunks in parts.items()},
    )


def sample_rows(rows: pd.DataFrame | Rows, limit: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """At most `limit` rows, chosen uniformly with a seed and kept in storage order, with their
    positions in `rows` (to pick the same rows' labels and scores). Every row when there are fewer."""
    rows = as_rows(rows)
    total = len(rows)
    if total <= limit:
        return rows.to_frame(), np.arange(total)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))
    offsets = np.cumsum([0, *rows.block_rows()])
    frames = []
    for index, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
        inside = chosen[(chosen >= lo) & (chosen < hi)] - lo
        if len(inside):
            frames.append(rows.block(index).iloc[inside])
    return pd.concat(frames, ignore_index=True), chosen
