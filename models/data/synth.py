"""SYNTHETIC Taobao-format behaviour events at any size, fitted to the real Taobao slices.

The real data the project ships is small (814 shoppers' full histories and one hour of the stream);
measuring the pipeline at Taobao's size (100 M events) needs more. `write_synthetic` writes N events
in the raw Taobao format (headerless CSV `user_id,item_id,category_id,behavior_type,timestamp`), one
file per local day of the shop (`DIR/date=YYYY-MM-DD/events.csv`), which ingestion reads with
`CTR_RAW_EVENTS=DIR`. Shoppers are generated in fixed chunks, each from its own random stream, so
memory stays bounded at any N and the output is byte-identical for a seed.

How a shopper's events are made (every parameter fitted by `fit_parameters`, committed in
`synth_params.json`):

- **How many**: the N events are split among N/101 shoppers in proportion to counts drawn from
  the real shoppers' counts.
- **When**: events come in sessions (a gap over 30 minutes starts a new one); session lengths and
  the gaps inside a session follow the real quantiles; a session starts on a day and at an hour
  of the shop's time zone such that the events' days and hours are the real ones.
- **What**: an event re-views an item the shopper met k events earlier (k from the real lags; in
  a session, as often as in the real data, the last item met in the current category), or stays
  in the previous event's category, or returns to one of the shopper's earlier categories (a
  Pólya urn: loyal shoppers), or opens a category new to the shopper. Category and item
  popularity are lognormal, fitted to how often the real stream hour repeats them; each item is
  in one category, and a freshly drawn item is one the shopper has not met.
- **Behaviour**: views, plus carts/favs/buys that follow a view of the same item after the real
  delays ("linked"), plus carts/favs/buys of items not viewed before, in the real proportions.
  Each shopper's events fall in distinct seconds inside the window, so none repeats another.

**Planted signal** (ground truth a model can learn): the chance that a view converts into a later
cart/fav/buy of the same item is proportional to the shopper's share of events in that item's
category (`PLANTED_SIGNAL` is the power of the share). A shopper's favourite categories are both
what they view most and what they buy in, so the share of the candidate's category in the
shopper's past (the `user_item_affinity` features) predicts the label: AUC about 0.69, against
0.57 for the same measure on the real slice and 0.58 on synthetic data without the planted term.

Everything written is labelled SYNTHETIC: `DIR/SYNTHETIC.json` (generator version, seed, sizes,
parameters hash), every progress line, and `is_synthetic(path)` for later stages.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from feature_repo.contract import BEHAVIORS, INTENT_BEHAVIORS, PAGE_VIEW, SHOP_TIMEZONE, SHOP_UTC_OFFSET_S
from models.settings import PROJECT_ROOT

GENERATOR_VERSION = "1"
MARKER = "SYNTHETIC.json"
STATISTICS_FILE = "statistics.json"
PARAMS_PATH = Path(__file__).with_name("synth_params.json")
DAY_FILE = "events.csv"

# Taobao UserBehavior at full size (Tianchi dataset 649), the proportions entities scale with.
TAOBAO_EVENTS = 100_150_807
TAOBAO_SHOPPERS = 987_994
TAOBAO_ITEMS = 4_162_024
TAOBAO_CATEGORIES = 9_439
WINDOW_START = pd.Timestamp("2017-11-25T00:00:00", tz=SHOP_TIMEZONE)
WINDOW_DAYS = 9
SESSION_GAP_S = 1800  # a longer pause starts a new session
CHUNK_SHOPPERS = 20_000  # shoppers generated together: bounds memory, fixes the random streams
# A view's chance of conversion ∝ (shopper's share of events in the item's category) ** this.
PLANTED_SIGNAL = 1.0
_HOUR_S, _DAY_S = 3600, 86400
_WINDOW_S = WINDOW_DAYS * _DAY_S
_BIG = np.int64(1) << np.int64(40)  # separates shoppers in grouped running maxima


def parse_size(text: str | int) -> int:
    """'100M', '10m', '2.5k', '1e6', '84287' -> a whole number of events (at least 1)."""
    if isinstance(text, int):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgb]?)\s*", str(text).lower())
        if not match:
            raise ValueError(f"not a size: {text!r} (e.g. 84287, 1e6, 10M, 2.5k)")
        scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}[match.group(2)]
        value = float(match.group(1)) * scale
    if value < 1 or value != math.floor(value):
        raise ValueError(f"a size must be a whole number of at least 1, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class Sizes:
    events: int
    shoppers: int
    items: int
    categories: int


def entity_counts(
    events: int, shoppers: int | None = None, items: int | None = None, categories: int | None = None
) -> Sizes:
    """Shoppers and items in Taobao's proportions to the events (N/101, N/24); categories grow
    with the cube root of N up to Taobao's 9,439, as a larger sample sees more of the catalogue."""
    share = events / TAOBAO_EVENTS
    shoppers = shoppers or max(1, round(TAOBAO_SHOPPERS * share))
    items = items or max(1, round(TAOBAO_ITEMS * share))
    categories = categories or max(1, min(items, round(TAOBAO_CATEGORIES * min(1.0, share) ** (1 / 3))))
    if shoppers > events:
        raise ValueError(f"{shoppers:,} shoppers cannot share {events:,} events (at least one each)")
    return Sizes(events, shoppers, items, min(categories, items))


# ---------------------------------------------------------------------------------------------
# Fitting


def _read_taobao(path: Path | str) -> pd.DataFrame:
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    return pd.read_csv(path, header=None, names=names)


def _in_window(frame: pd.DataFrame) -> pd.DataFrame:
    start = int(WINDOW_START.timestamp())
    keep = (frame["timestamp"] >= start) & (frame["timestamp"] < start + _WINDOW_S)
    return frame[keep].sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def _quantiles(values: np.ndarray, points: int = 101) -> list[float]:
    return [float(v) for v in np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, points))]


def lognormal_weights(sigma: float, size: int) -> np.ndarray:
    """Popularity of `size` ranks, most popular first: the quantiles of a lognormal law of shape
    `sigma` (no randomness), normalised to sum to one."""
    z = _normal_scores(size)
    weight = np.exp(sigma * (z - z[0]))
    return weight / weight.sum()


@functools.lru_cache(maxsize=4)
def _normal_scores(size: int) -> np.ndarray:
    """Standard normal quantiles at (size - r - 0.5) / size, r = 0..size-1 (largest first)."""
    from scipy.special import ndtri

    z = ndtri((size - np.arange(size) - 0.5) / size)
    z.setflags(write=False)
    return z


def _expected_distinct(sigma: float, size: int, draws: int) -> float:
    """Distinct values expected among `draws` draws from `lognormal_weights(sigma, size)`."""
    return float(-np.expm1(draws * np.log1p(-lognormal_weights(sigma, size))).sum())


def _popularity_shape(draws: int, distinct: int, size: int) -> float:
    """The lognormal shape over `size` values under which `draws` draws show `distinct` values on
    average: how concentrated popularity must be for a sample to repeat as often as the real one."""
    from scipy.optimize import brentq

    return float(brentq(lambda s: _expected_distinct(s, size, draws) - distinct, 1e-3, 8.0, xtol=1e-6))


def _seen_before(frame: pd.DataFrame, behaviours: tuple[str, ...] | None = None) -> np.ndarray:
    """Per row: has the shopper had an earlier row of the same item (of `behaviours`, if given)?"""
    rows = frame if behaviours is None else frame[frame["behavior_type"].isin(behaviours)]
    first_index = rows.reset_index().groupby(["user_id", "item_id"])["index"].min().rename("_i")
    joined = frame.join(first_index, on=["user_id", "item_id"])
    return (joined["_i"].to_numpy() < np.arange(len(frame))) & joined["_i"].notna().to_numpy()


def _histories(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For rows sorted by shopper and time: whether each is its shopper's first, the gap since the
    shopper's previous row (s; 0 for the first), whether it starts a session, its index within
    its shopper's rows."""
    user, t = frame["user_id"].to_numpy(), frame["timestamp"].to_numpy()
    first = np.r_[True, user[1:] != user[:-1]]
    gap = np.where(first, 0, np.r_[0, np.diff(t)])
    starts = np.flatnonzero(first)
    pos = np.arange(len(frame)) - np.repeat(starts, np.diff(np.r_[starts, len(frame)]))
    return first, gap, first | (gap > SESSION_GAP_S), pos


def _category_loyalty(frame: pd.DataFrame) -> tuple[float, float]:
    """Maximum-likelihood (stay, novelty) of the category process on the rows whose item the
    shopper had not met before: stay in the previous event's category with probability `stay`
    (inside a session), else a new category with probability novelty / (novelty + j) at the
    shopper's j-th event, else one of the earlier events' categories, uniformly over those events."""
    from scipy.optimize import minimize

    cat = frame["category_id"].to_numpy()
    _, _, session_first, pos = _histories(frame)
    prior = frame.groupby(["user_id", "category_id"]).cumcount().to_numpy()  # earlier rows, same category
    in_session = ~session_first
    same_as_prev = in_session & (cat == np.r_[-1, cat[:-1]])
    fresh_item = ~_seen_before(frame)
    use = fresh_item & (pos >= 1)
    j, cnt, stay_ok, sess = pos[use], prior[use], same_as_prev[use], in_session[use]
    unseen = cnt == 0

    def nll(x: np.ndarray) -> float:
        stay = 1 / (1 + np.exp(-x[0]))
        theta = np.exp(x[1])
        urn = np.where(unseen, theta / (theta + j), cnt / (theta + j))
        stay_p = np.where(sess, stay, 0.0)
        like = stay_p * stay_ok + (1 - stay_p) * urn
        return float(-np.log(np.maximum(like, 1e-300)).sum())

    best = minimize(
        nll, x0=np.array([0.0, np.log(5.0)]), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-6}
    )
    return float(1 / (1 + np.exp(-best.x[0]))), float(np.exp(best.x[1]))


def _session_start_hours(t: np.ndarray, session_first: np.ndarray, iterations: int = 200) -> list[float]:
    """Shares of session starts per hour of the shop's day such that sessions of the real lengths
    reproduce the real events' hour of day. Evening sessions run longer than morning ones, and
    sessions spill into the next hours; the generator draws lengths independently of the hour, so
    the start shares are the real event shares deconvolved (Richardson-Lucy) by the real spill:
    events per session k clock hours after its start."""
    hour = (t + SHOP_UTC_OFFSET_S) // _HOUR_S
    start_hour = hour[session_first][np.cumsum(session_first) - 1]
    spill = np.bincount(np.minimum(hour - start_hour, 23), minlength=24).astype(np.float64)
    spill /= spill.sum()
    events = np.bincount(hour % 24, minlength=24) / len(t)
    shifts = [np.roll(np.eye(24), k, axis=0) * spill[k] for k in range(24)]
    blur = np.sum(shifts, axis=0)  # blur[h, s]: share of a session started at hour s seen at hour h
    start = np.bincount(start_hour[session_first] % 24, minlength=24) / session_first.sum()
    for _ in range(iterations):
        start = start * (blur.T @ (events / np.maximum(blur @ start, 1e-12)))
        start /= start.sum()
    return [float(v) for v in start]


def _sig(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}")


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return _sig(obj)
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def fit_parameters(slice_csv: Path | str, stream_csv: Path | str) -> dict[str, Any]:
    """The generator's parameters from the real user slice (full 9-day histories) and the real
    stream hour (a cross-section of all shoppers, for popularity)."""
    real = _in_window(_read_taobao(slice_csv))
    stream = _read_taobao(stream_csv)
    t, behaviour = real["timestamp"].to_numpy(), real["behavior_type"]
    _, gap, session_first, pos = _histories(real)
    session = np.cumsum(session_first)
    lengths = np.bincount(session)[1:]
    local = pd.to_datetime(t, unit="s", utc=True).tz_convert(SHOP_TIMEZONE)
    day = ((local.normalize() - WINDOW_START).days).to_numpy()
    per_shopper = real.groupby("user_id").size().to_numpy()

    is_pv = (behaviour == PAGE_VIEW).to_numpy()
    intent = ~is_pv
    linked = intent & _seen_before(real, (PAGE_VIEW,))
    # repeat views: lag in events back to the latest earlier event of the same item
    index = pd.Series(np.arange(len(real)))
    previous = index.groupby([real["user_id"], real["item_id"]]).shift()
    repeat = is_pv & previous.notna().to_numpy()
    lag = (index - previous).to_numpy()[repeat].astype(np.int64)
    lag_q = _quantiles(lag)
    # re-views in a session that return to the item met last in the current category
    in_session = ~session_first
    latest_in_cat = index.groupby([real["user_id"], real["category_id"]]).shift().to_numpy()
    returned = previous.to_numpy() == np.r_[np.nan, latest_in_cat[:-1]]
    category_return = float(returned[repeat & in_session].mean())
    # chance that a lag drawn from the table reaches back no further than the shopper's start
    reachable = np.interp(pos[is_pv & (pos >= 1)], lag_q, np.linspace(0, 1, len(lag_q)))
    repeat_share = float(repeat.sum() / is_pv.sum())
    stay, novelty = _category_loyalty(real)
    mix = behaviour.value_counts(normalize=True)
    linked_mix = behaviour[linked].value_counts(normalize=True)
    unlinked_mix = behaviour[intent & ~linked].value_counts(normalize=True)
    params = {
        "generator_version": GENERATOR_VERSION,
        "sources": {
            "user_slice": _describe_file(slice_csv),
            "stream_hour": _describe_file(stream_csv),
        },
        "events_per_shopper_quantiles": _quantiles(per_shopper),
        "behavior_mix": {b: float(mix.get(b, 0.0)) for b in BEHAVIORS},
        "intent_linked_share": float(linked.sum() / intent.sum()),
        "linked_mix": {b: float(linked_mix.get(b, 0.0)) for b in INTENT_BEHAVIORS},
        "unlinked_mix": {b: float(unlinked_mix.get(b, 0.0)) for b in INTENT_BEHAVIORS},
        "conversion_delay_s_quantiles": _quantiles(_conversion_delays(real, linked)),
        "session_gap_s": SESSION_GAP_S,
        "session_length_quantiles": _quantiles(lengths),
        "within_session_gap_s_quantiles": _quantiles(gap[~session_first]),
        "day_shares": [float(v) for v in np.bincount(day, minlength=WINDOW_DAYS) / len(day)],
        "session_start_hour_shares": _session_start_hours(t, session_first),
        "repeat_view": {
            "share": repeat_share,
            "generation_probability": float(min(1.0, repeat_share / reachable.mean())),
            "lag_quantiles": lag_q,
            "category_return_share": category_return,
        },
        "category_loyalty": {"stay": stay, "novelty": novelty},
        # The stream hour is a cross-section of all of Taobao's shoppers: its distinct items and
        # categories, counted once per shopper (a shopper's repeats are the loyalty process's),
        # against Taobao's full catalogue.
        "popularity": {
            "item_lognormal_sigma": _popularity_shape(
                len(stream.drop_duplicates(["user_id", "item_id"])), stream["item_id"].nunique(), TAOBAO_ITEMS
            ),
            "category_lognormal_sigma": _popularity_shape(
                len(stream.drop_duplicates(["user_id", "category_id"])),
                stream["category_id"].nunique(),
                TAOBAO_CATEGORIES,
            ),
        },
        "planted_signal": PLANTED_SIGNAL,
    }
    return _rounded(params)


def _describe_file(path: Path | str) -> dict[str, Any]:
    data = Path(path).read_bytes()
    return {"name": Path(path).name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def write_parameters(real_dir: Path | str | None = None, path: Path | str = PARAMS_PATH) -> dict[str, Any]:
    """Refit on the real slices in `real_dir` (default: ../shared/data/taobao_userbehavior) and
    write the parameters the generator runs with: `ctr synth --fit`."""
    real = Path(real_dir or REAL_DIR)
    params = fit_parameters(real / REAL_SLICE, real / REAL_STREAM)
    text = json.dumps(params, indent=2)
    # one line per list of numbers: the file stays short enough to read and to diff
    text = re.sub(r"\[\s+([-0-9.e+,\s]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    Path(path).write_text(text + "\n")
    return params


def load_parameters(path: Path | str = PARAMS_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def parameters_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Generation


def _from_quantiles(table: list[float], u: np.ndarray, log: bool = False) -> np.ndarray:
    """Inverse-CDF draws from a quantile table (evenly spaced probabilities), interpolated
    (in log(1 + x) for the heavy-tailed times)."""
    values = np.asarray(table, dtype=np.float64)
    if log:
        values = np.log1p(values)
    x = u * (len(values) - 1)
    at = np.minimum(x.astype(np.int64), len(values) - 2)
    drawn = values[at] + (x - at) * (values[at + 1] - values[at])
    return np.expm1(drawn) if log else drawn


def _shares(values: list[float]) -> np.ndarray:
    """Shares as probabilities summing to one (the committed ones are rounded)."""
    array = np.asarray(values, dtype=np.float64)
    return array / array.sum()


def _resolve(pointer: np.ndarray) -> np.ndarray:
    """Follow pointers (each to itself or an earlier row) to their roots, by pointer jumping."""
    while True:
        nxt = pointer[pointer]
        if np.array_equal(nxt, pointer):
            return pointer
        pointer = nxt


def _sorted_search(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """np.searchsorted of many random keys in a large table, an order of magnitude faster: the
    keys are searched in sorted order, so each search starts where the last one ended."""
    order = np.argsort(keys)
    found = np.empty(len(keys), dtype=np.int64)
    found[order] = np.searchsorted(table, keys[order])
    return found


class _Catalogue:
    """Items and categories: Zipf popularity for both, each item in one category; draws items
    within a category in proportion to their popularity."""

    def __init__(self, sizes: Sizes, params: dict[str, Any], rng: np.random.Generator):
        pop = params["popularity"]
        n_items, n_cats = sizes.items, sizes.categories
        self.n_items, self.n_categories = n_items, n_cats
        self.category_cdf = np.cumsum(lognormal_weights(pop["category_lognormal_sigma"], n_cats))
        self.category_ids = rng.permutation(n_cats).astype(np.int64) + 1
        item_weight = lognormal_weights(pop["item_lognormal_sigma"], n_items)
        item_ids = rng.permutation(n_items).astype(np.int64) + 1
        # every category gets one item, the rest go to categories in proportion to their popularity
        item_cat = np.empty(n_items, dtype=np.int64)
        first = rng.permutation(n_items)[:n_cats]
        item_cat[:] = np.minimum(np.searchsorted(self.category_cdf, rng.random(n_items)), n_cats - 1)
        item_cat[first] = np.arange(n_cats)
        order = np.lexsort((np.arange(n_items), item_cat))
        self.items_by_cat = item_ids[order]
        self.cum_weight = np.cumsum(item_weight[order])
        bounds = np.searchsorted(item_cat[order], np.arange(n_cats + 1))
        self.cat_lo = np.r_[0.0, self.cum_weight][bounds[:-1]]
        self.cat_hi = self.cum_weight[bounds[1:] - 1]
        self.cat_first, self.cat_last = bounds[:-1], bounds[1:] - 1

    def categories(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.category_cdf, u), len(self.category_cdf) - 1)

    def items(self, cat: np.ndarray, u: np.ndarray, uniform: bool = False) -> np.ndarray:
        """Items of the categories `cat` for uniform numbers `u`: by popularity, or uniformly."""
        if uniform:
            width = self.cat_last[cat] - self.cat_first[cat] + 1
            return self.items_by_cat[
                self.cat_first[cat] + np.minimum(width - 1, (u * width).astype(np.int64))
            ]
        target = self.cat_lo[cat] + u * (self.cat_hi[cat] - self.cat_lo[cat])
        pos = np.clip(_sorted_search(self.cum_weight, target), self.cat_first[cat], self.cat_last[cat])
        return self.items_by_cat[pos]


def _distinct_per_shopper(
    roots: np.ndarray,
    shopper: np.ndarray,
    draw: Callable[[np.ndarray, bool], np.ndarray],
    size: int,
    rounds: int = 10,
) -> np.ndarray:
    """Values drawn for the rows `roots`, drawn again (up to `rounds` times) where the same shopper
    has the same value at another root: a fresh draw that lands on a value the shopper already has
    is redrawn, by popularity at first, then uniformly (a shopper may have met all of a small
    category's popular items). The first root with a value keeps it."""
    values = draw(roots, False)
    owner = shopper[roots].astype(np.int64) * np.int64(size + 1)  # values are below `size`
    taken, first = np.unique(owner + values, return_index=True)
    taken_later: list[np.ndarray] = []
    again = np.ones(len(roots), dtype=bool)
    again[first] = False
    pending = np.flatnonzero(again)
    for round_ in range(rounds):
        if not len(pending):
            break
        fresh = draw(roots[pending], round_ >= rounds // 2)
        key = owner[pending] + fresh
        free = taken[np.minimum(np.searchsorted(taken, key), len(taken) - 1)] != key
        for later in taken_later:
            free &= later[np.minimum(np.searchsorted(later, key), len(later) - 1)] != key
        unique_new = np.zeros(len(pending), dtype=bool)
        unique_new[np.unique(key, return_index=True)[1]] = True
        accept = free & unique_new
        values[pending[accept]] = fresh[accept]
        if accept.any():
            taken_later.append(np.sort(key[accept]))
        pending = pending[~accept]
    return values


def _grouped_running_max(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(values + group * _BIG) - group * _BIG


def _shopper_positions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    shopper = np.repeat(np.arange(len(counts)), counts)
    return shopper, np.arange(counts.sum()) - starts[shopper], starts


def _chunk(
    counts: np.ndarray, catalogue: _Catalogue, params: dict[str, Any], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The events of one chunk of shoppers, sorted by shopper and time: seconds since the window
    start, shopper index in the chunk, category index, item id, behaviour code."""
    m = int(counts.sum())
    shopper, pos, starts = _shopper_positions(counts)
    # sessions: lengths from the real table, cut where a shopper ends
    lengths = np.maximum(
        1, np.round(_from_quantiles(params["session_length_quantiles"], rng.random(m // 2 + 16)))
    )
    cuts = np.cumsum(lengths).astype(np.int64)
    while cuts[-1] < m:  # not reached in practice: session lengths average about six
        cuts = np.r_[cuts, cuts[-1] + cuts]
    session_first = np.zeros(m, dtype=bool)
    session_first[starts] = True
    session_first[cuts[cuts < m]] = True
    session = np.cumsum(session_first) - 1
    gaps = _from_quantiles(params["within_session_gap_s_quantiles"], rng.random(m), log=True)
    gaps[session_first] = 0.0
    offset = np.cumsum(gaps)
    first_index = np.flatnonzero(session_first)
    offset -= offset[first_index][session]
    n_sessions = len(first_index)
    duration = np.r_[offset[first_index[1:] - 1], offset[-1]] if n_sessions > 1 else offset[-1:]
    size = np.diff(np.r_[first_index, m])
    day = rng.choice(WINDOW_DAYS, size=n_sessions, p=_shares(params["day_shares"]))
    hour = rng.choice(24, size=n_sessions, p=_shares(params["session_start_hour_shares"]))
    begin = day * _DAY_S + hour * _HOUR_S + rng.random(n_sessions) * _HOUR_S
    begin = np.minimum(begin, _WINDOW_S - 1 - duration - size - counts[shopper[first_index]])
    seconds = np.maximum(0, begin)[session] + offset
    seconds = np.floor(seconds).astype(np.int64)

    # behaviour of the shoppers' own events: a view, or a cart/fav/buy of an item not viewed before
    mix = params["behavior_mix"]
    intents = 1.0 - mix[PAGE_VIEW]
    linked = params["intent_linked_share"]
    pv_base = mix[PAGE_VIEW] / (mix[PAGE_VIEW] + (1 - linked) * intents)
    unlinked = np.asarray([params["unlinked_mix"][b] for b in INTENT_BEHAVIORS])
    behaviour = np.where(
        rng.random(m) < pv_base, 0, 1 + rng.choice(len(INTENT_BEHAVIORS), size=m, p=unlinked / unlinked.sum())
    ).astype(np.int8)

    order = np.argsort(shopper.astype(np.int64) * _BIG + seconds, kind="stable")
    seconds, behaviour = seconds[order], behaviour[order]
    prev_gap = np.r_[_BIG, np.diff(seconds)]
    in_session = (pos >= 1) & (prev_gap <= SESSION_GAP_S)

    # what: repeat views, then the category process, then items within categories
    index = np.arange(m)
    repeat = params["repeat_view"]
    lag = np.maximum(1, np.round(_from_quantiles(repeat["lag_quantiles"], rng.random(m)))).astype(np.int64)
    is_repeat = (behaviour == 0) & (rng.random(m) < repeat["generation_probability"]) & (lag <= pos)
    loyalty = params["category_loyalty"]
    stay = ~is_repeat & in_session & (rng.random(m) < loyalty["stay"])
    novel = rng.random(m) < loyalty["novelty"] / (loyalty["novelty"] + pos)
    back = ~is_repeat & ~stay & ~novel
    earlier = starts[shopper] + np.floor(rng.random(m) * pos).astype(np.int64)
    # a re-view inside a session returns, as often as in the real data, to the item met last in the
    # current category (before the previous event): "A B A" comparisons
    returning = is_repeat & in_session & (rng.random(m) < repeat["category_return_share"])
    is_repeat &= ~returning
    cat_root = index.copy()
    cat_root[is_repeat] = (index - lag)[is_repeat]
    cat_root[stay | returning] = index[stay | returning] - 1
    cat_root[back] = earlier[back]
    cat_root = _resolve(cat_root)
    # a new category is new to the shopper, a freshly drawn item one they have not met
    roots = np.flatnonzero(cat_root == index)
    category = np.empty(m, dtype=np.int64)
    category[roots] = _distinct_per_shopper(
        roots,
        shopper,
        lambda rows, _uniform: catalogue.categories(rng.random(len(rows))),
        catalogue.n_categories,
    )
    category = category[cat_root]
    item_root = index.copy()
    item_root[is_repeat] = (index - lag)[is_repeat]
    group = shopper.astype(np.int64) * (len(catalogue.category_cdf) + 1) + category
    by_group = np.argsort(group, kind="stable")
    before = np.full(m, -1, dtype=np.int64)  # the shopper's previous event in the same category
    same = group[by_group[1:]] == group[by_group[:-1]]
    before[by_group[1:][same]] = by_group[:-1][same]
    target = np.r_[-1, before[:-1]]  # ... of the previous event
    returning &= target >= 0
    item_root[returning] = target[returning]
    item_root = _resolve(item_root)
    roots = np.flatnonzero(item_root == index)
    item = np.empty(m, dtype=np.int64)
    item[roots] = _distinct_per_shopper(
        roots,
        shopper,
        lambda rows, uniform: catalogue.items(category[rows], rng.random(len(rows)), uniform),
        catalogue.n_items + 1,
    )
    item = item[item_root]

    # planted signal: views convert in proportion to the shopper's share of events in the category
    _, inverse, per_group = np.unique(group, return_inverse=True, return_counts=True)
    lift = (per_group[inverse] / counts[shopper]) ** params["planted_signal"]
    views = behaviour == 0
    p_convert = linked * intents / mix[PAGE_VIEW] * lift / max(lift[views].mean(), 1e-12)
    converted = views & (rng.random(m) < p_convert)
    src = np.flatnonzero(converted)
    delay = np.maximum(
        1, np.round(_from_quantiles(params["conversion_delay_s_quantiles"], rng.random(len(src)), log=True))
    )
    follow_t = seconds[src] + delay.astype(np.int64)
    inside = follow_t < _WINDOW_S - counts[shopper[src]]
    src, follow_t = src[inside], follow_t[inside]
    linked_mix = np.asarray([params["linked_mix"][b] for b in INTENT_BEHAVIORS])
    follow_b = 1 + rng.choice(len(INTENT_BEHAVIORS), size=len(src), p=linked_mix / linked_mix.sum())

    # each shopper keeps their count: for every intent that follows a view, one of the shopper's
    # unconverted events goes (an intent for which none is found after a few tries is not added)
    dropped = np.zeros(m, dtype=bool)
    owner = shopper[src]
    victim = np.full(len(src), -1, dtype=np.int64)
    pending = np.arange(len(src))
    for _ in range(8):
        if not len(pending):
            break
        who = owner[pending]
        cand = starts[who] + np.minimum(
            counts[who] - 1, (rng.random(len(pending)) * counts[who]).astype(np.int64)
        )
        ok = ~converted[cand] & ~dropped[cand]
        first = np.zeros(len(pending), dtype=bool)
        first[np.unique(cand, return_index=True)[1]] = True
        ok &= first
        victim[pending[ok]] = cand[ok]
        dropped[cand[ok]] = True
        pending = pending[~ok]
    added = victim >= 0
    src, follow_t, follow_b = src[added], follow_t[added], follow_b[added]
    order = np.argsort(shopper[src].astype(np.int64) * _BIG + follow_t, kind="stable")
    src, follow_t, follow_b = src[order], follow_t[order], follow_b[order]
    kept = ~dropped
    at = np.searchsorted(
        (shopper.astype(np.int64) * _BIG + seconds)[kept],
        shopper[src].astype(np.int64) * _BIG + follow_t,
        "right",
    )
    events = {
        "shopper": np.insert(shopper[kept], at, shopper[src]),
        "seconds": np.insert(seconds[kept], at, follow_t),
        "category": np.insert(category[kept], at, category[src]),
        "item": np.insert(item[kept], at, item[src]),
        "behavior": np.insert(behaviour[kept], at, follow_b.astype(np.int8)),
    }
    # one shopper's events in distinct seconds (two rows alike would be one event twice), all in the window
    t = events["seconds"] - pos
    t = np.minimum(_grouped_running_max(t, shopper.astype(np.int64)), _WINDOW_S - counts[shopper])
    events["seconds"] = t + pos
    return events


def _shopper_counts(sizes: Sizes, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Events per shopper: weights drawn from the real counts' quantiles, the N events split in
    proportion to them, each shopper at least one."""
    weight = _from_quantiles(params["events_per_shopper_quantiles"], rng.random(sizes.shoppers))
    extra = sizes.events - sizes.shoppers
    counts = np.ones(sizes.shoppers, dtype=np.int64)
    if extra:
        share = np.floor(weight / weight.sum() * extra).astype(np.int64)
        rest = extra - int(share.sum())
        np.add.at(share, rng.choice(sizes.shoppers, size=rest, p=weight / weight.sum()), 1)
        counts += share
    return counts


@dataclass(frozen=True)
class SynthResult:
    out_dir: Path
    sizes: Sizes
    seed: int
    seconds: float
    days: dict[str, int]  # events per day partition
    metadata: dict[str, Any]


def _progress(stream: TextIO | None) -> Callable[[str], None]:
    def say(line: str) -> None:
        if stream is not None:
            print(f"SYNTHETIC {line}", file=stream, flush=True)

    return say


def day_names() -> list[str]:
    return [f"{WINDOW_START + pd.Timedelta(days=d):%Y-%m-%d}" for d in range(WINDOW_DAYS)]


def write_synthetic(
    out_dir: Path | str,
    events: int,
    seed: int = 0,
    shoppers: int | None = None,
    items: int | None = None,
    params: dict[str, Any] | None = None,
    progress: TextIO | bool | None = True,
) -> SynthResult:
    """Write `events` SYNTHETIC events in the raw Taobao format, one CSV per local day
    (`out_dir/date=YYYY-MM-DD/events.csv`) plus `out_dir/SYNTHETIC.json`; byte-identical for a
    seed. Files are written under a temporary name and renamed when complete. `shoppers` and
    `items` replace Taobao's proportions; `params` the committed fit; `progress` is where the
    progress lines go (True: stderr, None: nowhere)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    params = params or load_parameters()
    sizes = entity_counts(events, shoppers, items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    say = _progress(sys.stderr if progress is True else progress or None)
    say(
        f"generating {sizes.events:,} events, {sizes.shoppers:,} shoppers, {sizes.items:,} items, "
        f"{sizes.categories:,} categories, seed {seed} -> {out}"
    )
    began = time.perf_counter()
    root = np.random.SeedSequence([seed, 0x5E7])
    catalogue_seq, counts_seq, chunks_seq = root.spawn(3)
    catalogue = _Catalogue(sizes, params, np.random.default_rng(catalogue_seq))
    counts = _shopper_counts(sizes, params, np.random.default_rng(counts_seq))
    names = day_names()
    folders = [out / f"date={d}" for d in names]
    for folder in folders:
        folder.mkdir(exist_ok=True)
    handles = [(folder / (DAY_FILE + ".part")).open("wb") for folder in folders]
    per_day = np.zeros(WINDOW_DAYS, dtype=np.int64)
    behaviours = pa.array(list(BEHAVIORS))
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    start_s = int(WINDOW_START.timestamp())
    n_chunks = max(1, math.ceil(sizes.shoppers / CHUNK_SHOPPERS))
    written = 0
    try:
        for c, chunk_seq in enumerate(chunks_seq.spawn(n_chunks)):
            lo, hi = c * CHUNK_SHOPPERS, min(sizes.shoppers, (c + 1) * CHUNK_SHOPPERS)
            t0 = time.perf_counter()
            ev = _chunk(counts[lo:hi], catalogue, params, np.random.default_rng(chunk_seq))
            day = ev["seconds"] // _DAY_S
            day_order = np.argsort(day, kind="stable")
            bounds = np.searchsorted(day[day_order], np.arange(WINDOW_DAYS + 1))
            for d in range(WINDOW_DAYS):
                rows = day_order[bounds[d] : bounds[d + 1]]
                if not len(rows):
                    continue
                table = pa.table(
                    {
                        "user_id": ev["shopper"][rows] + lo + 1,
                        "item_id": ev["item"][rows],
                        "category_id": catalogue.category_ids[ev["category"][rows]],
                        "behavior_type": pc.take(behaviours, pa.array(ev["behavior"][rows])),
                        "timestamp": ev["seconds"][rows] + start_s,
                    }
                )
                sink = pa.BufferOutputStream()
                pa_csv.write_csv(table, sink, options)
                handles[d].write(sink.getvalue().to_pybytes())
                per_day[d] += len(rows)
            written += len(day)
            elapsed = time.perf_counter() - t0
            say(
                f"chunk {c + 1}/{n_chunks}: shoppers {lo + 1:,}..{hi:,}, {len(day):,} events in "
                f"{elapsed:.1f} s ({len(day) / max(elapsed, 1e-9):,.0f} events/s); "
                f"{written:,}/{sizes.events:,}"
            )
    finally:
        for handle in handles:
            handle.close()
    for folder in folders:
        os.replace(folder / (DAY_FILE + ".part"), folder / DAY_FILE)
    seconds = time.perf_counter() - began
    metadata = {
        "SYNTHETIC": True,
        "generator": "models.data.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "events": sizes.events,
        "shoppers": sizes.shoppers,
        "items": sizes.items,
        "categories": sizes.categories,
        "parameters_hash": parameters_hash(params),
        "planted_signal": "P(view converts) ∝ (shopper's share of events in the item's category) ** "
        f"{params['planted_signal']}",
        "format": "headerless CSV user_id,item_id,category_id,behavior_type,timestamp (Unix s)",
        "timezone": SHOP_TIMEZONE,
        "days": {name: int(n) for name, n in zip(names, per_day, strict=True)},
    }
    (out / MARKER).write_text(json.dumps(metadata, indent=2) + "\n")
    say(f"wrote {sizes.events:,} events in {seconds:.1f} s ({sizes.events / seconds:,.0f} events/s) to {out}")
    return SynthResult(out, sizes, seed, seconds, metadata["days"], metadata)


def is_synthetic(path: Path | str) -> bool:
    """Whether `path` (a dataset folder, or a file or folder inside one) was written by this
    generator: a SYNTHETIC.json marker in it or above it."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        marker = folder / MARKER
        if marker.is_file():
            try:
                return bool(json.loads(marker.read_text()).get("SYNTHETIC"))
            except (OSError, ValueError):
                return False
    return False


# ---------------------------------------------------------------------------------------------
# Statistics: synthetic against real, side by side

REAL_DIR = PROJECT_ROOT.parent / "shared/data/taobao_userbehavior"
REAL_SLICE = "userbehavior_user_slice.csv"
REAL_STREAM = "userbehavior_stream_20171126T0100Z_0200Z.csv"
# The real stream's hour, 2017-11-26 09:00-10:00 in the shop's time zone: the cross-section the
# popularity statistics are taken on, in the synthetic data too.
CROSS_SECTION = (
    int(pd.Timestamp("2017-11-26T01:00:00Z").timestamp()),
    int(pd.Timestamp("2017-11-26T02:00:00Z").timestamp()),
)
STATS_SHOPPERS = CHUNK_SHOPPERS  # the shoppers the per-shopper statistics are computed on (ids 1..)


@dataclass(frozen=True)
class Statistic:
    key: str
    label: str
    group: str
    tolerance: float | None  # |synthetic - real| allowed, absolute; None: reported, not held to it
    relative: bool = False  # tolerance as a fraction of the real value


STATISTICS = (
    Statistic("events_per_shopper_mean", "events per shopper, mean", "shoppers", 0.15, True),
    Statistic("events_per_shopper_median", "events per shopper, median", "shoppers", 0.15, True),
    Statistic("events_per_shopper_p90", "events per shopper, 90th percentile", "shoppers", 0.2, True),
    Statistic("share_pv", "share of pv", "behaviour", 0.01),
    Statistic("share_cart", "share of cart", "behaviour", 0.01),
    Statistic("share_fav", "share of fav", "behaviour", 0.01),
    Statistic("share_buy", "share of buy", "behaviour", 0.01),
    Statistic("intent_linked_share", "cart/fav/buy after a view of the item", "conversion", 0.05),
    Statistic(
        "label_positive_rate", "views followed by cart/fav/buy within 6 h (label)", "conversion", 0.4, True
    ),
    Statistic("conversion_delay_median_s", "view -> cart/fav/buy delay, median (s)", "conversion", 0.5, True),
    Statistic("repeat_view_share", "views of an item met before", "repeats", 0.05),
    Statistic(
        "sessions_per_shopper_median", "sessions per shopper, median (30 min gap)", "sessions", 0.3, True
    ),
    Statistic("events_per_session_mean", "events per session, mean", "sessions", 0.3, True),
    Statistic("gap_in_session_median_s", "gap inside a session, median (s)", "sessions", 0.3, True),
    Statistic("gap_median_s", "gap between a shopper's events, median (s)", "sessions", 0.3, True),
    Statistic("hour_of_day_tv", "hour of day: total variation from real", "time", 0.05),
    Statistic("evening_share", "share of events 19:00-23:00 (shop time)", "time", 0.03),
    Statistic("night_share", "share of events 00:00-06:00 (shop time)", "time", 0.02),
    Statistic("day_tv", "day of window: total variation from real", "time", 0.05),
    Statistic("top_category_share_median", "shopper's top category share, median", "loyalty", 0.08),
    Statistic("distinct_categories_median", "categories per shopper, median", "loyalty", 0.3, True),
    Statistic(
        "same_category_in_session", "same category as the previous event in a session", "loyalty", 0.08
    ),
    Statistic(
        "category_share_auc",
        "AUC for the label of the category's share of the shopper's past",
        "signal",
        None,
    ),
    Statistic(
        "distinct_items_per_pair", "cross-section: distinct items / (shopper, item) pairs", "popularity", None
    ),
    Statistic(
        "distinct_categories_per_pair",
        "cross-section: distinct categories / (shopper, category) pairs",
        "popularity",
        None,
    ),
    Statistic(
        "top10_category_share", "cross-section: top 10 categories' share of events", "popularity", None
    ),
)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def _conversion_delays(frame: pd.DataFrame, linked: np.ndarray) -> np.ndarray:
    views = frame.loc[frame["behavior_type"] == PAGE_VIEW, ["user_id", "item_id", "timestamp"]]
    views = views.rename(columns={"timestamp": "viewed"})
    intents = frame.loc[linked, ["user_id", "item_id", "timestamp"]]
    joined = pd.merge_asof(
        intents.sort_values("timestamp"),
        views.sort_values("viewed"),
        left_on="timestamp",
        right_on="viewed",
        by=["user_id", "item_id"],
        direction="backward",
    )
    return (joined["timestamp"] - joined["viewed"]).to_numpy()


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(label, score)) if 0 < label.sum() < len(label) else float("nan")


def _labels(frame: pd.DataFrame) -> pd.DataFrame:
    """The project's label (models/data/labels.py) on raw-format rows."""
    from feature_repo.contract import BEHAVIOR, EVENT_TIMESTAMP, LABEL_WINDOW
    from models.data.labels import label_page_views

    canonical = pd.DataFrame(
        {
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "category_id": frame["category_id"],
            BEHAVIOR: frame["behavior_type"],
            EVENT_TIMESTAMP: pd.to_datetime(frame["timestamp"], unit="s", utc=True),
        }
    )
    return label_page_views(canonical, LABEL_WINDOW, WINDOW_START + pd.Timedelta(days=WINDOW_DAYS))


def _labelled_views(frame: pd.DataFrame) -> pd.DataFrame:
    """The project's labelled views of sorted raw rows, each with what a model can know of the
    planted signal at the view: the share of the shopper's earlier events in the item's category."""
    prior = frame.groupby("user_id").cumcount().to_numpy()
    prior_in_category = frame.groupby(["user_id", "category_id"]).cumcount().to_numpy()
    views = pd.DataFrame(
        {
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "event_timestamp": pd.to_datetime(frame["timestamp"], unit="s", utc=True),
            "category_share": prior_in_category / np.maximum(prior, 1),
        }
    )[(frame["behavior_type"] == PAGE_VIEW).to_numpy()]
    views = views.drop_duplicates(["user_id", "item_id", "event_timestamp"])
    return _labels(frame).merge(views, on=["user_id", "item_id", "event_timestamp"], how="left")


def shopper_statistics(frame: pd.DataFrame) -> dict[str, Any]:
    """The per-shopper statistics of complete histories (raw columns, Unix seconds)."""
    frame = _sorted(frame)
    user, t, cat = frame["user_id"].to_numpy(), frame["timestamp"].to_numpy(), frame["category_id"].to_numpy()
    behaviour = frame["behavior_type"]
    first, gap, session_first, _ = _histories(frame)
    session = np.cumsum(session_first)
    per_shopper = frame.groupby("user_id").size()
    mix = behaviour.value_counts(normalize=True)
    is_pv = (behaviour == PAGE_VIEW).to_numpy()
    linked = ~is_pv & _seen_before(frame, (PAGE_VIEW,))
    repeat = is_pv & _seen_before(frame)
    local = pd.to_datetime(t, unit="s", utc=True).tz_convert(SHOP_TIMEZONE)
    hours = np.bincount(local.hour, minlength=24) / len(frame)
    days = np.bincount(((local.normalize() - WINDOW_START).days).to_numpy(), minlength=WINDOW_DAYS)[
        :WINDOW_DAYS
    ]
    per_cat = frame.groupby(["user_id", "category_id"]).size()
    top_share = per_cat.groupby(level=0).max() / per_shopper
    in_session = ~session_first
    labelled = _labelled_views(frame)
    return {
        "events": int(len(frame)),
        "shoppers": int(len(per_shopper)),
        "events_per_shopper_mean": float(per_shopper.mean()),
        "events_per_shopper_median": float(per_shopper.median()),
        "events_per_shopper_p90": float(per_shopper.quantile(0.9)),
        **{f"share_{b}": float(mix.get(b, 0.0)) for b in BEHAVIORS},
        "intent_linked_share": float(linked.sum() / max(1, (~is_pv).sum())),
        "label_positive_rate": float(labelled["label"].mean()),
        "conversion_delay_median_s": float(np.median(_conversion_delays(frame, linked)))
        if linked.any()
        else 0.0,
        "repeat_view_share": float(repeat.sum() / max(1, is_pv.sum())),
        "sessions_per_shopper_median": float(pd.Series(session_first).groupby(user).sum().median()),
        "events_per_session_mean": float(len(frame) / session[-1]),
        "gap_in_session_median_s": float(np.median(gap[in_session])),
        "gap_median_s": float(np.median(gap[~first])),
        "hour_shares": [float(v) for v in hours],
        "day_shares": [float(v) for v in days / days.sum()],
        "evening_share": float(hours[19:24].sum()),
        "night_share": float(hours[0:6].sum()),
        "top_category_share_median": float(top_share.median()),
        "distinct_categories_median": float(frame.groupby("user_id")["category_id"].nunique().median()),
        "same_category_in_session": float((cat == np.r_[-1, cat[:-1]])[in_session].mean()),
        "category_share_auc": _auc(labelled["label"].to_numpy(), labelled["category_share"].to_numpy()),
    }


_CROSS_SECTION_KEYS = ("distinct_items_per_pair", "distinct_categories_per_pair", "top10_category_share")


def cross_section_statistics(frame: pd.DataFrame) -> dict[str, Any]:
    """Popularity on a cross-section of all shoppers (an hour of events; none: not measured)."""
    if frame.empty:
        return {"cross_section_events": 0, **dict.fromkeys(_CROSS_SECTION_KEYS)}
    cats = frame["category_id"].value_counts().to_numpy()
    return {
        "cross_section_events": int(len(frame)),
        "distinct_items_per_pair": float(
            frame["item_id"].nunique() / len(frame.drop_duplicates(["user_id", "item_id"]))
        ),
        "distinct_categories_per_pair": float(
            frame["category_id"].nunique() / len(frame.drop_duplicates(["user_id", "category_id"]))
        ),
        "top10_category_share": float(cats[:10].sum() / cats.sum()),
    }


def _read_partitions(out_dir: Path, max_user: int | None, hour: tuple[int, int] | None) -> pd.DataFrame:
    """Rows of a synthetic dataset: those of shoppers 1..max_user (the first rows of each day file,
    read until a later shopper starts), or those of the cross-section hour."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    types = {"user_id": pa.int64(), "item_id": pa.int64(), "category_id": pa.int64(), "timestamp": pa.int64()}
    tables = []
    for folder in sorted(out_dir.glob("date=*")):
        if hour is not None:
            day = pd.Timestamp(folder.name.removeprefix("date="), tz=SHOP_TIMEZONE)
            if not int(day.timestamp()) <= hour[0] < int(day.timestamp()) + _DAY_S:
                continue
        if (folder / DAY_FILE).stat().st_size == 0:
            continue
        reader = pa_csv.open_csv(
            folder / DAY_FILE,
            read_options=pa_csv.ReadOptions(column_names=names, block_size=1 << 24),
            convert_options=pa_csv.ConvertOptions(column_types=types),
        )
        for batch in reader:
            if max_user is not None:  # shoppers come in id order: stop at the first later one
                tables.append(batch.filter(pc.less_equal(batch["user_id"], max_user)))
                if batch.num_rows and pc.max(batch["user_id"]).as_py() > max_user:
                    break
            else:
                ts = batch["timestamp"]
                tables.append(batch.filter(pc.and_(pc.greater_equal(ts, hour[0]), pc.less(ts, hour[1]))))
    if not tables:
        return pd.DataFrame(columns=names)
    return pa.Table.from_batches(tables).to_pandas()


def _subsample(frame: pd.DataFrame, size: int) -> pd.DataFrame:
    return frame.sample(n=size, random_state=0) if size < len(frame) else frame


def _subsample(frame: pd.DataFrame, size: int) -> pd.DataFrame:
    return frame.sample(n=size, random_state=0) if size < len(frame) else frame


def _tv(a: list[float], b: list[float]) -> float:
    return float(0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum())


def compare(out_dir: Path | str, real_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per statistic: real, SYNTHETIC, the tolerance and whether it holds. Written to
    `out_dir/statistics.json` too."""
    out = Path(out_dir)
    real_dir = Path(real_dir or REAL_DIR)
    missing = [name for name in (REAL_SLICE, REAL_STREAM) if not (real_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the real data to compare with is missing: {', '.join(missing)} in {real_dir}"
        )
    # per shopper: the real slice against shoppers 1..STATS_SHOPPERS; popularity: the real stream
    # hour against the same hour of the synthetic data, both at one size (ratios of distinct values
    # depend on the sample's size)
    hour = _read_partitions(out, None, CROSS_SECTION)
    stream = _read_taobao(real_dir / REAL_STREAM)
    size = min(len(hour), len(stream))
    synthetic = {
        **shopper_statistics(_read_partitions(out, STATS_SHOPPERS, None)),
        **cross_section_statistics(_subsample(hour, size)),
    }
    real = {
        **shopper_statistics(_in_window(_read_taobao(real_dir / REAL_SLICE))),
        **cross_section_statistics(_subsample(stream, size)),
    }
    synthetic["hour_of_day_tv"] = _tv(synthetic["hour_shares"], real["hour_shares"])
    synthetic["day_tv"] = _tv(synthetic["day_shares"], real["day_shares"])
    real["hour_of_day_tv"] = real["day_tv"] = 0.0
    rows = []
    for s in STATISTICS:
        r, y = (None if v is None or not math.isfinite(v) else v for v in (real[s.key], synthetic[s.key]))
        allowed = None if s.tolerance is None or r is None else s.tolerance * (abs(r) if s.relative else 1.0)
        rows.append(
            {
                "group": s.group,
                "statistic": s.label,
                "real": r,
                "synthetic": y,
                "tolerance": allowed,
                "ok": None if allowed is None else y is not None and bool(abs(y - r) <= allowed),
            }
        )
    marker = json.loads((out / MARKER).read_text()) if (out / MARKER).is_file() else {}
    report = {
        "SYNTHETIC": True,
        "dataset": marker,
        "real": {"dir": str(real_dir), "slice": REAL_SLICE, "stream": REAL_STREAM},
        "sample": {
            "shoppers": synthetic["shoppers"],
            "cross_section_events": synthetic["cross_section_events"],
        },
        "rows": rows,
    }
    (out / STATISTICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return rows


def format_figure(value: Any) -> str:
    """A table cell: four significant digits (shares and rates are small numbers), yes/NO."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table as text."""

    header = ["statistic", "real", "SYNTHETIC", "tolerance", "ok"]
    body = [
        [r["statistic"], *(format_figure(r[k]) for k in ("real", "synthetic", "tolerance", "ok"))]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)
