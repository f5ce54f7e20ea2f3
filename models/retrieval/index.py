"""Candidate generation: the few hundred items the CTR model ranks for one user.

Three sources, built from the event log up to a cut-off time and looked up per request:

- ``covisit``: item-to-item co-visitation. Within each user's time-ordered events, two items
  touched within `max_lag` events and `max_gap_s` seconds of each other are neighbours, both
  ways. A pair weighs the behaviour weight of the neighbour's event (a cart, favourite or
  purchase counts more than a view) times a recency decay (halving every `half_life_s` seconds
  before the cut-off); each item keeps its `neighbours` heaviest neighbours.
- ``category``: the most popular items of each category, same weighting.
- ``popular``: the most popular items per hour of day in shop time (shrunk towards the overall
  ranking, which is hour-independent), then the whole catalogue by overall popularity. This is
  also the cold-start list of a user without history.

A request's list is the co-visitation neighbours of the user's recent items (newest weighing
most), then popular items of the recent categories, then the popular items of the hour; without
duplicates, without the excluded items, and exactly `k` long when the catalogue allows.

Building is vectorised with NumPy and pandas (no Python loop over events); a built index is a
folder of Parquet files plus `meta.json`, loaded into sorted arrays so a lookup is a handful of
binary searches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.contract import (
    BEHAVIOR,
    CATEGORY_ID,
    EVENT_TIMESTAMP,
    ITEM_ID,
    RECENT_EVENTS,
    USER_ID,
    shop_hour,  # the hour of day in shop time; imported from here too
)
from models.data.events import unix_seconds
from models.settings import Settings, get_settings

log = logging.getLogger(__name__)

COVISIT = "covisit"
CATEGORY = "category"
POPULAR = "popular"
SOURCES: tuple[str, ...] = (COVISIT, CATEGORY, POPULAR)

HOURS = 24
NEIGHBOUR = "neighbour_id"
HOUR = "hour"
SCORE = "score"
_FILES = {
    "neighbours": "neighbours.parquet",
    "categories": "categories.parquet",
    "popular": "popular.parquet",
}
_META = "meta.json"
_OVERALL = -1  # the `hour` of the overall ranking in popular.parquet
_BLOCK_PAIRS = 1 << 23  # co-visited pairs summed at once


@dataclass(frozen=True)
class CandidateConfig:
    """How an index is built and queried; saved with it, so a loaded index answers the same."""

    # Weight of one event by behaviour; intent behaviours weigh more than a page view.
    behavior_weights: Mapping[str, float] = field(
        default_factory=lambda: {"pv": 1.0, "fav": 2.0, "cart": 3.0, "buy": 4.0}
    )
    max_lag: int = 10  # co-visited: at most this many events apart in the user's sequence...
    max_gap_s: float = 86_400.0  # ...and at most this many seconds apart
    half_life_s: float = 3 * 86_400.0  # an event's weight halves for every half-life before `until`
    neighbours: int = 50  # neighbours kept per item
    per_category: int = 100  # items kept per category
    per_hour: int = 500  # items kept per hour of day (the overall ranking keeps every item)
    # Hour score = weight in that hour + hour_prior * overall weight / 24: hours with few events
    # fall back to the overall ranking.
    hour_prior: float = 1.0
    recent_decay: float = 0.9  # a recent item's weight: recent_decay ** (position from the newest)

    def __post_init__(self) -> None:
        if self.max_lag < 1 or self.neighbours < 1 or self.per_category < 1 or self.per_hour < 1:
            raise ValueError("max_lag, neighbours, per_category and per_hour must be at least 1")
        if not 0.0 < self.recent_decay <= 1.0:
            raise ValueError(f"recent_decay={self.recent_decay}: expected a value in (0, 1]")
        if min(self.behavior_weights.values()) <= 0.0:
            raise ValueError("behaviour weights must be positive")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "behavior_weights": dict(self.behavior_weights)}


def _utc(when: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(when)
    if stamp.tzinfo is None:
        raise ValueError(f"{when!r} needs a time zone")
    return stamp.tz_convert("UTC")


# --- Building ----------------------------------------------------------------------------------


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


def build_candidates(
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


# --- Looking up --------------------------------------------------------------------------------


class _Lists:
    """Ranked lists keyed by an integer id: sorted keys, offsets, members and normalised scores."""

    def __init__(self, keys: np.ndarray, members: np.ndarray, scores: np.ndarray, decay: float) -> None:
        # `keys` ascending, each key's members in rank order.
        self.decay = decay
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, np.int64)
        self.keys = keys[starts]
        self.offsets = np.r_[starts, len(keys)].astype(np.int64)
        self.members = members
        # Each list scaled so its first member scores 1: a popular key does not drown the others.
        top = np.repeat(scores[starts], np.diff(self.offsets)) if len(keys) else scores
        self.scores = scores / np.where(top > 0, top, 1.0)

    def __len__(self) -> int:
        return len(self.keys)

    def merge(self, keys: Iterable[int]) -> list[int]:
        """Members of the lists of `keys` (newest last), by the sum of score x recency weight."""
        keys = np.fromiter(keys, dtype=np.int64)
        if not len(keys) or not len(self.keys):
            return []
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = np.flatnonzero(self.keys[pos] == keys)
        if not len(found):
            return []
        pos, recency = pos[found], self.decay ** (len(keys) - 1 - found).astype(np.float64)
        lo, length = self.offsets[pos], self.offsets[pos + 1] - self.offsets[pos]
        # The positions of every member of the found lists, one list after the other.
        at = np.arange(length.sum()) + np.repeat(lo - (np.cumsum(length) - length), length)
        member, inverse = np.unique(self.members[at], return_inverse=True)
        total = np.bincount(inverse, weights=self.scores[at] * np.repeat(recency, length))
        return member[np.lexsort((member, -total))].tolist()


class CandidateIndex:
    """A built index: three ranked tables (the Parquet files) and `meta` (until, counts, config)."""

    def __init__(
        self,
        neighbours: pd.DataFrame,
        categories: pd.DataFrame,
        popular: pd.DataFrame,
        meta: dict[str, Any],
    ) -> None:
        self.tables = {"neighbours": neighbours, "categories": categories, "popular": popular}
        self.meta = meta
        self.config = CandidateConfig(**meta["config"])
        self.until = pd.Timestamp(meta["until"])
        self._neighbours = _Lists(
            neighbours[ITEM_ID].to_numpy(np.int64),
            neighbours[NEIGHBOUR].to_numpy(np.int64),
            neighbours[SCORE].to_numpy(np.float64),
            self.config.recent_decay,
        )
        self._categories = _Lists(
            categories[CATEGORY_ID].to_numpy(np.int64),
            categories[ITEM_ID].to_numpy(np.int64),
            categories[SCORE].to_numpy(np.float64),
            self.config.recent_decay,
        )
        hours = popular[HOUR].to_numpy(np.int64)
        items = popular[ITEM_ID].to_numpy(np.int64)
        self._overall = items[hours == _OVERALL]
        self._by_hour = [items[hours == h].tolist() for h in range(HOURS)]
        overall_scores = popular[SCORE].to_numpy(np.float64)[hours == _OVERALL]
        order = np.argsort(self._overall, kind="stable")
        top = overall_scores.max() if len(overall_scores) else 1.0
        self._popular_keys, self._popular_scores = self._overall[order], overall_scores[order] / top

    # -- summary and storage --

    def summary(self) -> dict[str, Any]:
        return {
            "until": self.meta["until"],
            "events": self.meta["events"],
            "items": len(self._overall),
            "items_with_neighbours": len(self._neighbours),
            "pairs": len(self.tables["neighbours"]),
            "categories": len(self._categories),
        }

    def save(self, folder: Path) -> Path:
        """Write the index to `folder`, replacing what is there only once every file is written."""
        folder = Path(folder)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, table in self.tables.items():
            table.to_parquet(partial / _FILES[name], index=False)
        (partial / _META).write_text(json.dumps(self.meta, indent=2))
        if folder.exists():
            previous = folder.with_name(folder.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(folder, previous)
            os.replace(partial, folder)
            shutil.rmtree(previous)
        else:
            os.replace(partial, folder)
        return folder

    @classmethod
    def load(cls, folder: Path) -> CandidateIndex:
        folder = Path(folder)
        meta = json.loads((folder / _META).read_text())
        tables = {name: pd.read_parquet(folder / file) for name, file in _FILES.items()}
        return cls(tables["neighbours"], tables["categories"], tables["popular"], meta)

    # -- lookups --

    def neighbours(self, item: int) -> list[int]:
        """The co-visitation neighbours of one item, heaviest first."""
        pos = int(np.searchsorted(self._neighbours.keys, item))
        if pos == len(self._neighbours.keys) or self._neighbours.keys[pos] != item:
            return []
        lo, hi = self._neighbours.offsets[pos], self._neighbours.offsets[pos + 1]
        return self._neighbours.members[lo:hi].tolist()

    def _popular(self, hour: int | None) -> Iterator[int]:
        if hour is not None:
            yield from self._by_hour[hour]
        for start in range(0, len(self._overall), 256):
            yield from self._overall[start : start + 256].tolist()

    def recommend_with_sources(
        self,
        recent_items: Iterable[int],
        recent_categories: Iterable[int],
        k: int,
        hour: int | None,
        exclude: Collection[int] = (),
    ) -> tuple[list[int], list[str]]:
        """Up to `k` distinct candidates and, for each, the source that proposed it.

        `recent_items` and `recent_categories` are the user's recent events, newest last (as the
        recent-activity features hold them). `hour` is the request's hour in shop time; None uses
        the overall ranking. Items in `exclude` are never proposed.
        """
        if hour is not None and not 0 <= hour < HOURS:
            raise ValueError(f"hour={hour}: expected 0..23")
        items: list[int] = []
        sources: list[str] = []
        if k <= 0:
            return items, sources
        seen = set(exclude)
        for source, ranked in (
            (COVISIT, lambda: self._neighbours.merge(recent_items)),
            (CATEGORY, lambda: self._categories.merge(recent_categories)),
            (POPULAR, lambda: self._popular(hour)),
        ):
            for item in ranked():  # a source is looked up only when the ones before fall short
                if item not in seen:
                    seen.add(item)
                    items.append(item)
                    sources.append(source)
                    if len(items) == k:
                        return items, sources
        return items, sources

    def recommend_candidates(
        self,
        recent_items: Iterable[int],
        recent_categories: Iterable[int],
        k: int,
        hour: int | None,
        exclude: Collection[int] = (),
    ) -> list[int]:
        """`recommend_with_sources` without the sources."""
        return self.recommend_with_sources(recent_items, recent_categories, k, hour, exclude)[0]

    def popularity(self, item_ids: Sequence[int]) -> np.ndarray:
        """Each item's overall popularity score (the top item's is 1; 0 for an item never seen):
        what the ranker orders candidates by when it cannot read features."""
        ids = np.asarray(item_ids, np.int64)
        pos = np.searchsorted(self._popular_keys, ids).clip(0, max(len(self._popular_keys) - 1, 0))
        if not len(self._popular_keys):
            return np.zeros(len(ids))
        return np.where(self._popular_keys[pos] == ids, self._popular_scores[pos], 0.0)

    def cold_start(self, k: int, hour: int | None, exclude: Collection[int] = ()) -> list[int]:
        """The list of a user without history: popular items of the hour, then overall."""
        return self.recommend_candidates((), (), k, hour, exclude)


# --- Pipeline stage and offline evaluation ------------------------------------------------------


def build_candidates_stage(settings: Settings | None = None) -> dict[str, Any]:
    """Build from the accepted events up to the last one present and save to `candidates_dir`."""
    settings = settings or get_settings()
    started = time.perf_counter()
    from models.data.lake import ACCEPTED, read_events

    events = read_events(settings, ACCEPTED)
    if not len(events):
        raise ValueError("No accepted events to build candidates from")
    until = events[EVENT_TIMESTAMP].max() + pd.Timedelta(seconds=1)  # the last event included
    index = build_candidates(events, until)
    index.save(settings.paths.candidates)
    summary = {
        **index.summary(),
        "path": str(settings.paths.candidates),
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("candidates: %s", json.dumps(summary))
    return summary


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
