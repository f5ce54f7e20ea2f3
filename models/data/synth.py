"""SYNTHETIC Taobao-format behaviour events at any size, fitted to the real Taobao slices.

The real data the project ships is small (814 shoppers' full histories and one hour of the stream);
measuring the pipeline at Taobao's size (100 M events) needs more. `write_synthetic` writes N events
in the raw Taobao format (headerless CSV `user_id,item_id,category_id,behavior_type,timestamp`), one
file per local day of the shop (`DIR/date=YYYY-MM-DD/events.csv`), which ingestion reads with
`CTR_RAW_EVENTS=DIR`. Shoppers are generated in fixed chunks, each from its own random stream, so
memory stays bounded at any N and the output is byte-identical for a seed.

How a shopper's events are made (every parameter fitted by `fit_parameters`, committed in
`synth_params.json`):

- **How many**: events per shopper are lognormal; the N events are split among N/101 shoppers.
- **When**: events come in sessions (a gap over 30 minutes starts a new one); session lengths and
  the gaps inside a session follow the real quantiles; a session starts on a day and at an hour
  of the shop's time zone drawn from the real session starts.
- **What**: an event re-views an item the shopper saw k events earlier (k from the real lags), or
  stays in the previous event's category, or returns to one of the shopper's earlier categories
  (a Pólya urn: loyal shoppers), or opens a new category, drawn from a Zipf law; items within a
  category follow a Zipf law too (both exponents fitted on the real stream hour).
- **Behaviour**: views, plus carts/favs/buys that follow a view of the same item after the real
  delays ("linked"), plus carts/favs/buys of items not viewed before, in the real proportions.

**Planted signal** (ground truth a model can learn): the chance that a view converts into a later
cart/fav/buy of the same item is proportional to the shopper's share of events in that item's
category (`PLANTED_SIGNAL`). A shopper's favourite categories are both what they view most and
what they buy in, so the share of the candidate's category in the shopper's history (the
`user_item_affinity` features) predicts the label.

Everything written is labelled SYNTHETIC: `DIR/SYNTHETIC.json` (generator version, seed, sizes,
parameters hash), every progress line, and `is_synthetic(path)` for later stages.
"""

from __future__ import annotations

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

from feature_repo.contract import BEHAVIORS, INTENT_BEHAVIORS, PAGE_VIEW, SHOP_TIMEZONE

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


def _expected_distinct(exponent: float, size: int, draws: int) -> float:
    """Distinct values expected among `draws` draws from a Zipf law over `size` ranks."""
    weight = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    return float(-np.expm1(draws * np.log1p(-weight / weight.sum())).sum())


def _zipf_exponent(draws: int, distinct: int, size: int) -> float:
    """The Zipf exponent over `size` ranks under which `draws` draws show `distinct` values on
    average: how concentrated popularity must be for a sample to repeat as often as the real one."""
    from scipy.optimize import brentq

    return float(brentq(lambda s: _expected_distinct(s, size, draws) - distinct, 0.0, 4.0, xtol=1e-6))


def _seen_before(frame: pd.DataFrame, behaviours: tuple[str, ...] | None = None) -> np.ndarray:
    """Per row: has the shopper had an earlier row of the same item (of `behaviours`, if given)?"""
    rows = frame if behaviours is None else frame[frame["behavior_type"].isin(behaviours)]
    first_index = rows.reset_index().groupby(["user_id", "item_id"])["index"].min().rename("_i")
    joined = frame.join(first_index, on=["user_id", "item_id"])
    return (joined["_i"].to_numpy() < np.arange(len(frame))) & joined["_i"].notna().to_numpy()


def _category_loyalty(frame: pd.DataFrame) -> tuple[float, float]:
    """Maximum-likelihood (stay, novelty) of the category process on the rows whose item the
    shopper had not met before: stay in the previous event's category with probability `stay`
    (inside a session), else a new category with probability novelty / (novelty + j) at the
    shopper's j-th event, else one of the earlier events' categories, uniformly over those events."""
    from scipy.optimize import minimize

    user = frame["user_id"].to_numpy()
    cat = frame["category_id"].to_numpy()
    t = frame["timestamp"].to_numpy()
    first = np.r_[True, user[1:] != user[:-1]]
    starts = np.flatnonzero(first)
    pos = np.arange(len(frame)) - np.repeat(starts, np.diff(np.r_[starts, len(frame)]))
    prior = frame.groupby(["user_id", "category_id"]).cumcount().to_numpy()  # earlier rows, same category
    in_session = ~first & (np.r_[0, np.diff(t)] <= SESSION_GAP_S)
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
    user, t, behaviour = real["user_id"].to_numpy(), real["timestamp"].to_numpy(), real["behavior_type"]
    first = np.r_[True, user[1:] != user[:-1]]
    gap = np.r_[0, np.diff(t)]
    session_first = first | (gap > SESSION_GAP_S)
    session = np.cumsum(session_first)
    lengths = np.bincount(session)[1:]
    local = pd.to_datetime(t[session_first], unit="s", utc=True).tz_convert(SHOP_TIMEZONE)
    day = ((local.normalize() - WINDOW_START).days).to_numpy()
    per_shopper = real.groupby("user_id").size().to_numpy()

    is_pv = (behaviour == PAGE_VIEW).to_numpy()
    intent = ~is_pv
    linked = intent & _seen_before(real, (PAGE_VIEW,))
    # delay of a linked intent: since the latest earlier view of the same item
    views = real.loc[is_pv, ["user_id", "item_id", "timestamp"]].rename(columns={"timestamp": "viewed"})
    intents = real.loc[linked, ["user_id", "item_id", "timestamp"]]
    delays = pd.merge_asof(
        intents.sort_values("timestamp"),
        views.sort_values("viewed"),
        left_on="timestamp",
        right_on="viewed",
        by=["user_id", "item_id"],
        direction="backward",
    )
    delay_s = (delays["timestamp"] - delays["viewed"]).to_numpy()
    # repeat views: lag in events back to the latest earlier event of the same item
    index = pd.Series(np.arange(len(real)))
    previous = index.groupby([real["user_id"], real["item_id"]]).shift()
    repeat = is_pv & previous.notna().to_numpy()
    lag = (index - previous).to_numpy()[repeat].astype(np.int64)
    pos = np.arange(len(real)) - np.repeat(
        np.flatnonzero(first), np.diff(np.r_[np.flatnonzero(first), len(real)])
    )
    lag_q = _quantiles(lag)
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
        "events_per_shopper": {
            "log_mean": float(np.log(per_shopper).mean()),
            "log_std": float(np.log(per_shopper).std()),
        },
        "behavior_mix": {b: float(mix.get(b, 0.0)) for b in BEHAVIORS},
        "intent_linked_share": float(linked.sum() / intent.sum()),
        "linked_mix": {b: float(linked_mix.get(b, 0.0)) for b in INTENT_BEHAVIORS},
        "unlinked_mix": {b: float(unlinked_mix.get(b, 0.0)) for b in INTENT_BEHAVIORS},
        "conversion_delay_s_quantiles": _quantiles(delay_s),
        "session_gap_s": SESSION_GAP_S,
        "session_length_quantiles": _quantiles(lengths),
        "within_session_gap_s_quantiles": _quantiles(gap[~session_first]),
        "session_start_day_shares": [float(v) for v in np.bincount(day, minlength=WINDOW_DAYS) / len(day)],
        "session_start_hour_shares": [float(v) for v in np.bincount(local.hour, minlength=24) / len(day)],
        "repeat_view": {
            "share": repeat_share,
            "generation_probability": float(min(1.0, repeat_share / reachable.mean())),
            "lag_quantiles": lag_q,
        },
        "category_loyalty": {"stay": stay, "novelty": novelty},
        # The stream hour is a cross-section of all of Taobao's shoppers: its distinct items and
        # categories, counted once per shopper (a shopper's repeats are the loyalty process's),
        # against Taobao's full catalogue.
        "popularity": {
            "item_zipf": _zipf_exponent(
                len(stream.drop_duplicates(["user_id", "item_id"])), stream["item_id"].nunique(), TAOBAO_ITEMS
            ),
            "category_zipf": _zipf_exponent(
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


def load_parameters(path: Path | str = PARAMS_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def parameters_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Generation


def _from_quantiles(table: list[float], u: np.ndarray, log: bool = False) -> np.ndarray:
    """Inverse-CDF draws from a quantile table (evenly spaced probabilities), interpolated
    (in log(1 + x) for the heavy-tailed times)."""
    grid = np.linspace(0.0, 1.0, len(table))
    values = np.asarray(table, dtype=np.float64)
    if log:
        return np.expm1(np.interp(u, grid, np.log1p(values)))
    return np.interp(u, grid, values)


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


class _Catalogue:
    """Items and categories: Zipf popularity for both, each item in one category; draws items
    within a category in proportion to their popularity."""

    def __init__(self, sizes: Sizes, params: dict[str, Any], rng: np.random.Generator):
        pop = params["popularity"]
        n_items, n_cats = sizes.items, sizes.categories
        cat_weight = np.arange(1, n_cats + 1, dtype=np.float64) ** -pop["category_zipf"]
        self.category_cdf = np.cumsum(cat_weight / cat_weight.sum())
        self.category_ids = rng.permutation(n_cats).astype(np.int64) + 1
        item_weight = np.arange(1, n_items + 1, dtype=np.float64) ** -pop["item_zipf"]
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

    def items(self, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
        target = self.cat_lo[cat] + u * (self.cat_hi[cat] - self.cat_lo[cat])
        pos = np.clip(np.searchsorted(self.cum_weight, target), self.cat_first[cat], self.cat_last[cat])
        return self.items_by_cat[pos]


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
    day = rng.choice(WINDOW_DAYS, size=n_sessions, p=_shares(params["session_start_day_shares"]))
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
    cat_root = index.copy()
    cat_root[is_repeat] = (index - lag)[is_repeat]
    cat_root[stay] = index[stay] - 1
    cat_root[back] = earlier[back]
    cat_root = _resolve(cat_root)
    category = catalogue.categories(rng.random(m))[cat_root]
    item_root = index.copy()
    item_root[is_repeat] = (index - lag)[is_repeat]
    item_root = _resolve(item_root)
    item = catalogue.items(category, rng.random(m))[item_root]

    # planted signal: views convert in proportion to the shopper's share of events in the category
    key = shopper.astype(np.int64) * (len(catalogue.category_cdf) + 1) + category
    _, inverse, per_key = np.unique(key, return_inverse=True, return_counts=True)
    share = per_key[inverse] / counts[shopper]
    lift = share ** params["planted_signal"]
    views = behaviour == 0
    p_convert = linked * intents / mix[PAGE_VIEW] * lift / max(lift[views].mean(), 1e-12)
    converted = views & (rng.random(m) < p_convert)
    delay = np.maximum(
        1, np.round(_from_quantiles(params["conversion_delay_s_quantiles"], rng.random(m), log=True))
    )
    follow_t = seconds + delay.astype(np.int64)
    converted &= follow_t < _WINDOW_S - counts[shopper]
    src = np.flatnonzero(converted)
    linked_mix = np.asarray([params["linked_mix"][b] for b in INTENT_BEHAVIORS])
    follow_b = 1 + rng.choice(len(INTENT_BEHAVIORS), size=len(src), p=linked_mix / linked_mix.sum())

    # each shopper keeps their count: as many of their unconverted own events go as intents came
    everyone = {
        "shopper": np.r_[shopper, shopper[src]],
        "seconds": np.r_[seconds, follow_t[src]],
        "category": np.r_[category, category[src]],
        "item": np.r_[item, item[src]],
        "behavior": np.r_[behaviour, follow_b.astype(np.int8)],
    }
    keep_rank = np.r_[rng.random(m) + np.where(converted, 3.0, 0.0), 2.0 + rng.random(len(src))]
    order = np.lexsort((keep_rank, everyone["shopper"]))
    extra = np.bincount(shopper[src], minlength=len(counts))
    ranked_shopper = everyone["shopper"][order]
    rank = np.arange(len(order)) - np.r_[0, np.cumsum(counts + extra)[:-1]][ranked_shopper]
    kept = np.sort(order[rank >= extra[ranked_shopper]])
    events = {k: v[kept] for k, v in everyone.items()}
    order = np.argsort(events["shopper"].astype(np.int64) * _BIG + events["seconds"], kind="stable")
    events = {k: v[order] for k, v in events.items()}
    # one shopper's events in distinct seconds (two rows alike would be one event twice), all in the window
    t = events["seconds"] - pos
    t = np.minimum(_grouped_running_max(t, shopper.astype(np.int64)), _WINDOW_S - counts[shopper])
    events["seconds"] = t + pos
    return events


def _shopper_counts(sizes: Sizes, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Events per shopper: lognormal weights, the N events split among them, each at least one."""
    fit = params["events_per_shopper"]
    weight = rng.lognormal(fit["log_mean"], fit["log_std"], size=sizes.shoppers)
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
    progress: TextIO | None = sys.stderr,
) -> SynthResult:
    """Write `events` SYNTHETIC events in the raw Taobao format, one CSV per local day
    (`out_dir/date=YYYY-MM-DD/events.csv`) plus `out_dir/SYNTHETIC.json`; byte-identical for a
    seed. Files are written under a temporary name and renamed when complete."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    params = params or load_parameters()
    sizes = entity_counts(events, shoppers, items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    say = _progress(progress)
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
