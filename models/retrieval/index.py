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

This module is the index and its lookups; models.retrieval.build builds it (DuckDB queries that
spill to disk, so the log may be larger than memory) and models.retrieval.evaluation measures its
recall. A
built index is a folder of Parquet files plus `meta.json`, loaded into sorted arrays so a lookup
is a handful of binary searches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.contract import CATEGORY_ID, ITEM_ID

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


def replace_folder(partial: Path, folder: Path) -> Path:
    """Move the fully written `partial` to `folder`, so a reader never sees half an index."""
    if folder.exists():
        previous = folder.with_name(folder.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(folder, previous)
        os.replace(partial, folder)
        shutil.rmtree(previous)
    else:
        os.replace(partial, folder)
    return folder


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
        return replace_folder(partial, folder)

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
