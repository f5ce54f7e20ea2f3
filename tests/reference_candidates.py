"""The in-memory NumPy build of the candidate index that models.retrieval.build replaced, kept as
the reference the out-of-core DuckDB build must equal (same lists, same order, same scores)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from feature_repo.contract import BEHAVIOR, CATEGORY_ID, EVENT_TIMESTAMP, ITEM_ID, USER_ID, shop_hour
from models.data.events import unix_seconds
from models.retrieval.index import (
    _OVERALL,
    HOUR,
    HOURS,
    NEIGHBOUR,
    SCORE,
    CandidateConfig,
    CandidateIndex,
    _utc,
)

_BLOCK_PAIRS = 1 << 23  # co-visited pairs summed at once


@dataclass(frozen=True)
class _Events:
    """Valid events before `until`, ordered by user then time, as arrays."""

    user: np.ndarray
    item: np.ndarray  # dense code into `item_ids`
    category: np.ndarray  # dense code into `category_ids`
    seconds: np.ndarray
    weight: np.ndarray  # behaviour weight x recency decay
    item_ids: np.ndarray  # sorted
    category_ids: np.ndarray  # sorted


def _prepare(events: pd.DataFrame, until: pd.Timestamp, config: CandidateConfig) -> _Events:
    frame = events[[USER_ID, ITEM_ID, CATEGORY_ID, BEHAVIOR, EVENT_TIMESTAMP]].dropna()
    frame = frame[frame[EVENT_TIMESTAMP] < until]
    behaviour = frame[BEHAVIOR].astype(str).map(dict(config.behavior_weights))
    frame, behaviour = frame[behaviour.notna()], behaviour[behaviour.notna()].to_numpy(np.float64)
    user = frame[USER_ID].to_numpy(np.int64)
    seconds = unix_seconds(frame[EVENT_TIMESTAMP])
    order = np.lexsort((seconds, user))  # stable: events of the same second keep their order
    item_ids, item = np.unique(frame[ITEM_ID].to_numpy(np.int64)[order], return_inverse=True)
    category_ids, category = np.unique(frame[CATEGORY_ID].to_numpy(np.int64)[order], return_inverse=True)
    seconds = seconds[order]
    age = (until.timestamp() - seconds) / config.half_life_s
    return _Events(
        user=user[order],
        item=item.astype(np.int64),
        category=category.astype(np.int64),
        seconds=seconds,
        weight=behaviour[order] * np.exp2(-age),
        item_ids=item_ids,
        category_ids=category_ids,
    )


def _argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative int64 keys.

    When a key and its position fit in 63 bits together they are packed into one integer and
    sorted by value, which NumPy does several times faster than an argsort.
    """
    if not len(keys):
        return np.empty(0, np.int64)
    shift = max(int(len(keys) - 1).bit_length(), 1)
    if int(keys.max()) < 1 << (63 - shift):
        packed = np.sort((keys << shift) | np.arange(len(keys), dtype=np.int64))
        return packed & ((1 << shift) - 1)
    return np.argsort(keys, kind="stable")


def _sum_by_key(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of weights per distinct key, keys ascending."""
    if not len(keys):
        return keys, weights
    order = _argsort(keys)
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(weights[order], starts)


def _top_per_group(
    group: np.ndarray, member: np.ndarray, score: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group, the `keep` members with the highest score.

    Ties keep the input order, so input sorted by (group, member) breaks them by smaller member.
    """
    by_score = np.argsort(-score, kind="stable")
    order = by_score[_argsort(group[by_score])]
    group, member, score = group[order], member[order], score[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else group
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    kept = rank < keep
    return group[kept], member[kept], score[kept]


def _co_visited(ev: _Events, config: CandidateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the earlier and the later event of every co-visited pair."""
    earlier, later = [], []
    for lag in range(1, min(config.max_lag, len(ev.user) - 1) + 1):
        head, tail = slice(None, -lag), slice(lag, None)
        pair = np.flatnonzero(
            (ev.user[head] == ev.user[tail])
            & (ev.seconds[tail] - ev.seconds[head] <= config.max_gap_s)
            & (ev.item[head] != ev.item[tail])
        )
        earlier.append(pair)
        later.append(pair + lag)
    if not earlier:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(earlier), np.concatenate(later)


def _covisitation(ev: _Events, config: CandidateConfig) -> pd.DataFrame:
    """Each pair counts both ways: a -> b weighs b's event, b -> a weighs a's event.

    Pairs are summed and ranked per block of source items holding about _BLOCK_PAIRS pairs, so
    memory stays bounded on large logs; blocks are contiguous, so the result is sorted by source.
    """
    n = len(ev.item_ids)
    earlier, later = _co_visited(ev, config)
    small = np.int32 if max(n, len(ev.user)) < 2**31 else np.int64  # halves the largest arrays
    source = np.r_[ev.item[earlier], ev.item[later]].astype(small)
    target = np.r_[ev.item[later], ev.item[earlier]].astype(small)
    event = np.r_[later, earlier].astype(small)  # the event whose weight the pair carries
    del earlier, later
    parts = [pd.DataFrame({ITEM_ID: [], NEIGHBOUR: [], SCORE: []}, dtype=np.int64)]
    for lo, hi in _blocks(np.bincount(source, minlength=n), _BLOCK_PAIRS):
        block = np.flatnonzero((source >= lo) & (source < hi))
        key, weight = _sum_by_key(
            (source[block].astype(np.int64) - lo) * n + target[block], ev.weight[event[block]]
        )
        src, dst, weight = _top_per_group(key // n + lo, key % n, weight, config.neighbours)
        parts.append(pd.DataFrame({ITEM_ID: ev.item_ids[src], NEIGHBOUR: ev.item_ids[dst], SCORE: weight}))
    return pd.concat(parts, ignore_index=True).astype({SCORE: np.float64})


def _blocks(counts: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Contiguous ranges [lo, hi) of positions whose counts add up to about `size` each."""
    if not counts.sum():
        return []
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(size, ends[-1], size)) + 1
    bounds = np.unique(np.r_[0, cuts, len(counts)]).tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _category_popularity(ev: _Events, config: CandidateConfig) -> pd.DataFrame:
    n = len(ev.item_ids)
    key, weight = _sum_by_key(ev.category * n + ev.item, ev.weight)
    category, item, weight = _top_per_group(key // n, key % n, weight, config.per_category)
    return pd.DataFrame({CATEGORY_ID: ev.category_ids[category], ITEM_ID: ev.item_ids[item], SCORE: weight})


def _popularity(ev: _Events, config: CandidateConfig) -> pd.DataFrame:
    """Per hour of day the top `per_hour` items by smoothed hour score; then every item overall."""
    n = len(ev.item_ids)
    overall = np.bincount(ev.item, weights=ev.weight, minlength=n)
    hour = shop_hour(ev.seconds)
    key, weight = _sum_by_key(hour * n + ev.item, ev.weight)
    # An item unseen in an hour scores its prior only, so the overall leaders are the only unseen
    # items that can make an hour's list: add them with zero hour weight.
    leaders = np.argsort(-overall, kind="stable")[: config.per_hour]
    extra = (np.arange(HOURS)[:, None] * n + leaders[None, :]).ravel()
    key, weight = _sum_by_key(np.r_[key, extra], np.r_[weight, np.zeros(len(extra))])
    item = key % n
    weight = weight + config.hour_prior * overall[item] / HOURS
    hours, item, weight = _top_per_group(key // n, item, weight, config.per_hour)
    everything = np.lexsort((ev.item_ids, -overall))
    return pd.DataFrame(
        {
            HOUR: np.r_[hours, np.full(n, _OVERALL)].astype(np.int64),
            ITEM_ID: ev.item_ids[np.r_[item, everything]],
            SCORE: np.r_[weight, overall[everything]],
        }
    )


def build_index(
    events: pd.DataFrame, until: datetime | pd.Timestamp, *, config: CandidateConfig | None = None
) -> CandidateIndex:
    """Co-visitation, category and hourly popularity lists from the events strictly before `until`.

    `events` is a canonical event frame (feature_repo/contract.py); rows with nulls or an unknown
    behaviour are skipped.
    """
    config = config or CandidateConfig()
    until = _utc(until)
    ev = _prepare(events, until, config)
    index = CandidateIndex(
        _covisitation(ev, config),
        _category_popularity(ev, config),
        _popularity(ev, config),
        {"until": until.isoformat(), "events": len(ev.user), "config": config.to_json()},
    )
    return index
