"""The batch features, defined once as Ibis expressions over the validated events.

Every batch feature of the offline sources is written here and nowhere else: the daily snapshots per
user, item and category, and the users' short-term state. The expressions are backend-neutral: the
project runs them on DuckDB out of core (models/features/engine.py), and Ibis compiles the same
expressions for PySpark. What the features mean is documented in models/features/batch.py.

The input is one table of events (`events_table()`): the lake's columns plus `event_position`, the
event's place in the input, which decides between events of the same second (the later one wins,
as in a stable sort by time). A grid of local days (`Grid`) fixes the snapshot times.

Snapshots are computed from day totals: each (entity, day) row is spread over the snapshots that
see it, offsets 0..SPREAD_DAYS after its day (offset 1..n counts in an n-day window; offset 0 is the
midnight before the activity, offset LONGEST+1 the midnight its window empties), and summed per
(entity, snapshot). So the rows kept are exactly the snapshots with activity in reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import ibis
import ibis.expr.types as ir

from feature_repo.contract import (
    BEHAVIOR,
    BEHAVIORS,
    CATEGORY_FEATURES,
    CATEGORY_ID,
    CONVERSION_PRIOR_RATE,
    CONVERSION_PRIOR_WEIGHT,
    EVENT_TIMESTAMP,
    INTENT_BEHAVIORS,
    ITEM_FEATURES,
    ITEM_ID,
    PAGE_VIEW,
    RECENCY_CAP_DAYS,
    RECENT_BEHAVIORS,
    RECENT_CATEGORIES,
    RECENT_EVENT_IDS,
    RECENT_EVENTS,
    RECENT_FEATURES,
    RECENT_ITEMS,
    RECENT_STATE_DELAY,
    RECENT_TIMESTAMPS,
    TOP_CATEGORIES,
    TREND_PRIOR,
    USER_FEATURES,
    USER_ID,
    USER_TOP_CATEGORIES,
    USER_TOP_CATEGORY_SHARES,
    WINDOWS_DAYS,
)

EVENTS_TABLE = "events"
EVENT_POSITION = "event_position"
EVENT_SCHEMA: dict[str, str] = {
    USER_ID: "int64",
    ITEM_ID: "int64",
    CATEGORY_ID: "int64",
    BEHAVIOR: "string",
    EVENT_TIMESTAMP: "timestamp('UTC')",
    EVENT_POSITION: "int64",
}
# The 64-bit event id of models.data.events.event_ids, which the engine registers under this name
# (a scalar function of the event's columns, in EVENT_COLUMNS order).
EVENT_ID_FUNCTION = "ctr_event_id"

LONGEST_DAYS = max(WINDOWS_DAYS.values())
SPREAD_DAYS = LONGEST_DAYS + 1  # offsets 0..SPREAD_DAYS reach a day's snapshots
_DAY_S = 86_400
# Ties between events of one second are decided by (second since the grid's start, position),
# packed into one integer: positions below 2**_POSITION_BITS, grids shorter than 2**(63-_POSITION_BITS) s.
_POSITION_BITS = 38


@dataclass(frozen=True)
class Grid:
    """Snapshot k (k = 0..days) is stamped at bounds[k], the start of local day k (Unix seconds);
    day k is [bounds[k], bounds[k + 1])."""

    bounds: tuple[int, ...]

    @property
    def days(self) -> int:
        return len(self.bounds) - 1


def events_table(name: str = EVENTS_TABLE) -> ir.Table:
    """The unbound input table every definition reads; an engine binds it to its events."""
    return ibis.table(EVENT_SCHEMA, name=name)


def _f64(value) -> ir.FloatingValue:
    return (
        ibis.literal(float(value), type="float64")
        if isinstance(value, int | float)
        else value.cast("float64")
    )


# --- Formulas: plain arithmetic, so that NumPy arrays and Ibis columns give the same numbers ------


def conversion(intents, views):
    """Smoothed conversion rate: (intents + prior rate * weight) / (views + weight)."""
    return (intents + CONVERSION_PRIOR_RATE * CONVERSION_PRIOR_WEIGHT) / (views + CONVERSION_PRIOR_WEIGHT)


def trend(views_1d, views_7d):
    """Views yesterday against the mean day of the week, smoothed: above 1 means rising."""
    return (views_1d + TREND_PRIOR) / (views_7d / WINDOWS_DAYS["7d"] + TREND_PRIOR)


def _ibis_conversion(intents: ir.Value, views: ir.Value) -> ir.FloatingValue:
    return conversion(_f64(intents), _f64(views))


def _ibis_trend(views_1d: ir.Value, views_7d: ir.Value) -> ir.FloatingValue:
    return trend(_f64(views_1d), _f64(views_7d))


# --- The events on the grid -------------------------------------------------------------------


def on_grid(events: ir.Table, grid: Grid) -> ir.Table:
    """The events of the grid's days, with their Unix second, day index and an order key for ties."""
    seconds = events[EVENT_TIMESTAMP].epoch_seconds().floor().cast("int64")
    events = events.mutate(seconds=seconds)
    lo, hi = grid.bounds[0], grid.bounds[-1]
    events = events.filter((events.seconds >= lo) & (events.seconds < hi))
    if all(b - a == _DAY_S for a, b in zip(grid.bounds[:-1], grid.bounds[1:], strict=False)):
        day = ((events.seconds - lo) // _DAY_S).cast("int64")
    else:  # days of 23 or 25 hours (daylight saving): compare with each midnight
        day = ibis.cases(*((events.seconds < b, k) for k, b in enumerate(grid.bounds[1:])), else_=-1)
    if hi - lo >= 2 ** (63 - _POSITION_BITS):
        raise ValueError(f"a grid of {grid.days} days is too long for one batch")
    order = ((events.seconds - lo) * 2**_POSITION_BITS + events[EVENT_POSITION]).cast("int64")
    return events.mutate(day=day, order=order)


def _snapshot_table(grid: Grid) -> ir.Table:
    """k, the snapshot's Unix second, and its stamp."""
    return ibis.memtable(
        {"k": list(range(len(grid.bounds))), "snapshot_seconds": list(grid.bounds)},
        schema={"k": "int64", "snapshot_seconds": "int64"},
    )


def _offsets() -> ir.Table:
    """Offsets 0..SPREAD_DAYS of a day to the snapshots that see it, with 0/1 flags per window."""
    rows = range(SPREAD_DAYS + 1)
    data: dict[str, list[int]] = {"offset": list(rows)}
    for window, n in WINDOWS_DAYS.items():
        data[f"in_{window}"] = [int(1 <= o <= n) for o in rows]
    return ibis.memtable(data, schema=dict.fromkeys(data, "int64"))


def _daily(events: ir.Table, key: str, *, last_category: bool = False) -> ir.Table:
    """Events per (key, day) and behaviour, the day's last second (and the category of its last event)."""
    aggregates = {b: events.count(where=events[BEHAVIOR] == b) for b in BEHAVIORS}
    aggregates["last_second"] = events.seconds.max()
    if last_category:
        aggregates["last_category"] = events[CATEGORY_ID].argmax(events.order)
    return events.group_by([key, "day"]).aggregate(**aggregates)


def _spread(daily: ir.Table, grid: Grid, offsets: ir.Table | None = None) -> ir.Table:
    offsets = _offsets() if offsets is None else offsets
    spread = daily.cross_join(offsets)
    spread = spread.mutate(k=spread.day + spread.offset)
    return spread.filter(spread.k <= grid.days)


def _counts(spread: ir.Table) -> dict[str, ir.Value]:
    """``"{behavior}_{window}"`` sums over the spread rows of one (entity, snapshot)."""
    return {
        f"{b}_{window}": (spread[b] * spread[f"in_{window}"]).sum()
        for window in WINDOWS_DAYS
        for b in BEHAVIORS
    }


def _intents(table: ir.Table, prefix: str, window: str) -> ir.Value:
    total = table[f"{prefix}_{INTENT_BEHAVIORS[0]}_{window}"]
    for b in INTENT_BEHAVIORS[1:]:
        total = total + table[f"{prefix}_{b}_{window}"]
    return total


def _stamped(table: ir.Table, grid: Grid) -> ir.Table:
    snapshots = _snapshot_table(grid)
    joined = table.join(snapshots, "k")
    return joined.mutate(**{EVENT_TIMESTAMP: joined.snapshot_seconds.as_timestamp("s")})


def _days_since(last_second: ir.Value, snapshot_seconds: ir.Value) -> ir.FloatingValue:
    days = (_f64(snapshot_seconds) - _f64(last_second)) / ibis.literal(float(_DAY_S), type="float64")
    cap = ibis.literal(RECENCY_CAP_DAYS, type="float64")
    return ibis.least(days, cap).fill_null(cap)


def _float32(table: ir.Table, names: Sequence[str]) -> dict[str, ir.Value]:
    return {name: table[name].cast("float32") for name in names}


def _entity_counts(events: ir.Table, key: str, grid: Grid, prefix: str) -> ir.Table:
    """Per kept (entity, snapshot): the window counts, renamed with the entity's prefix, and the
    second of the last event in reach before the snapshot."""
    spread = _spread(_daily(events, key), grid)
    counts = {f"{prefix}_{name}": value for name, value in _counts(spread).items()}
    before = spread.offset >= 1
    return spread.group_by([key, "k"]).aggregate(
        **counts,
        active_days_7d=spread["in_7d"].sum(),
        last_second=spread.last_second.max(where=before),
    )


# --- Snapshots ---------------------------------------------------------------------------------


def category_snapshots(events: ir.Table, grid: Grid) -> ir.Table:
    """Per category and snapshot: window counts, conversion and trend."""
    return _category_snapshots(on_grid(events, grid), grid).drop("k")


def _category_snapshots(events: ir.Table, grid: Grid) -> ir.Table:
    counts = _stamped(_entity_counts(events, CATEGORY_ID, grid, "category"), grid)
    counts = counts.mutate(
        category_conversion_7d=_ibis_conversion(
            _intents(counts, "category", "7d"), counts[f"category_{PAGE_VIEW}_7d"]
        ),
        category_trend=_ibis_trend(counts[f"category_{PAGE_VIEW}_1d"], counts[f"category_{PAGE_VIEW}_7d"]),
    )
    return counts.select(CATEGORY_ID, EVENT_TIMESTAMP, "k", **_float32(counts, CATEGORY_FEATURES))


def _top_categories(events: ir.Table, grid: Grid) -> ir.Table:
    """Per (user, snapshot) with events in the last 7 days: the TOP_CATEGORIES categories with most
    of them (ties: lower id first) and their event counts, most first.

    Only the top entries are ranked and collected: a window ranks the (user, category) counts of
    each snapshot, so no list of all a user's categories is built and sorted."""
    daily = events.group_by([USER_ID, CATEGORY_ID, "day"]).aggregate(n=events.count())
    window_days = WINDOWS_DAYS["7d"]
    offsets = ibis.memtable({"offset": list(range(1, window_days + 1))}, schema={"offset": "int64"})
    spread = _spread(daily, grid, offsets)
    per = spread.group_by([USER_ID, CATEGORY_ID, "k"]).aggregate(n=spread.n.sum())
    # most events first, ties by the lower id
    by_count = ibis.window(group_by=[per[USER_ID], per.k], order_by=[ibis.desc(per.n), per[CATEGORY_ID]])
    per = per.mutate(rank=ibis.row_number().over(by_count))
    top = per.filter(per.rank < TOP_CATEGORIES)
    # an ordered collect does not compile for every engine: sort the (at most TOP_CATEGORIES) entries
    entry = ibis.struct({"rank": top.rank, "category": top[CATEGORY_ID], "n": top.n})
    lists = top.group_by([USER_ID, "k"]).aggregate(entries=entry.collect())
    entries = lists.entries.sort()
    return lists.select(
        USER_ID,
        "k",
        **{USER_TOP_CATEGORIES: entries.map(lambda e: e.category), "top_counts": entries.map(lambda e: e.n)},
    )


def user_snapshots(events: ir.Table, grid: Grid) -> ir.Table:
    """Per user and snapshot: window counts, conversion, active days, recency and top categories."""
    events = on_grid(events, grid)
    users = _stamped(_entity_counts(events, USER_ID, grid, "user"), grid)
    users = users.mutate(
        user_conversion_7d=_ibis_conversion(_intents(users, "user", "7d"), users[f"user_{PAGE_VIEW}_7d"]),
        user_active_days_7d=users.active_days_7d,
        user_days_since_last_event=_days_since(users.last_second, users.snapshot_seconds),
    )
    top = _top_categories(events, grid)
    joined = users.left_join(top, [USER_ID, "k"])
    # every event of the 7 days counts once in one category: the total is the user's 7-day count
    total = _f64(_intents(joined, "user", "7d") + joined[f"user_{PAGE_VIEW}_7d"])
    shares = joined.top_counts.map(lambda n: (_f64(n) / total).cast("float32"))
    no_categories = ibis.literal([], type="array<int64>")
    no_shares = ibis.literal([], type="array<float32>")
    return joined.select(
        USER_ID,
        EVENT_TIMESTAMP,
        **_float32(joined, USER_FEATURES),
        **{
            USER_TOP_CATEGORIES: joined[USER_TOP_CATEGORIES].fill_null(no_categories),
            USER_TOP_CATEGORY_SHARES: shares.fill_null(no_shares),
        },
    )


def item_snapshots(events: ir.Table, grid: Grid) -> ir.Table:
    """Per item and snapshot: window counts, conversion, trend, recency, and the item's category as
    last seen before the snapshot with that category's numbers."""
    events = on_grid(events, grid)
    daily = _daily(events, ITEM_ID, last_category=True)
    by_day = ibis.window(group_by=daily[ITEM_ID], order_by=daily.day)
    # the category an item had before its day, for a snapshot with nothing else in reach
    daily = daily.mutate(previous_category=daily.last_category.lag().over(by_day))
    spread = _spread(daily, grid)
    before = spread.offset >= 1
    counts = {f"item_{name}": value for name, value in _counts(spread).items()}
    items = spread.group_by([ITEM_ID, "k"]).aggregate(
        **counts,
        last_second=spread.last_second.max(where=before),
        seen_category=spread.last_category.argmin(spread.offset, where=before),
        # the day's own row: the category before it, else (the item's first day) its own
        own_category=spread.previous_category.fill_null(spread.last_category).max(where=spread.offset == 0),
    )
    items = _stamped(items, grid)
    items = items.mutate(
        **{CATEGORY_ID: items.seen_category.fill_null(items.own_category)},
        item_conversion_7d=_ibis_conversion(_intents(items, "item", "7d"), items[f"item_{PAGE_VIEW}_7d"]),
        item_trend=_ibis_trend(items[f"item_{PAGE_VIEW}_1d"], items[f"item_{PAGE_VIEW}_7d"]),
        item_days_since_last_event=_days_since(items.last_second, items.snapshot_seconds),
    )
    categories = _category_snapshots(events, grid).select(
        CATEGORY_ID, "k", "category_pv_7d", "category_conversion_7d", "category_trend"
    )
    joined = items.left_join(categories, [CATEGORY_ID, "k"])
    # a category without events in reach of the snapshot: no views, the prior, a flat trend
    zero = ibis.literal(0.0, type="float64")
    defaults = {
        "category_pv_7d": zero.cast("float32"),
        "category_conversion_7d": _ibis_conversion(zero, zero).cast("float32"),
        "category_trend": _ibis_trend(zero, zero).cast("float32"),
    }
    joined = joined.mutate(**{name: joined[name].fill_null(value) for name, value in defaults.items()})
    floats = _float32(joined, [name for name in ITEM_FEATURES if name != CATEGORY_ID])
    return joined.select(ITEM_ID, EVENT_TIMESTAMP, **floats, **{CATEGORY_ID: joined[CATEGORY_ID]}).select(
        ITEM_ID, EVENT_TIMESTAMP, *ITEM_FEATURES
    )


# --- Short-term state -------------------------------------------------------------------------


@ibis.udf.scalar.builtin(name=EVENT_ID_FUNCTION)
def _event_id(user: int, item: int, category: int, behavior: str, timestamp: datetime) -> int:  # type: ignore[empty-body]
    """models.data.events.event_ids of one event, registered by the engine."""


def recent_activity(events: ir.Table, start_s: int | None = None, end_s: int | None = None) -> ir.Table:
    """The user's state after each event second: the last RECENT_EVENTS events (oldest first),
    stamped RECENT_STATE_DELAY after that second. Duplicate events (same id) count once. With
    start_s/end_s, only the states stamped in [start_s, end_s) (Unix seconds) are kept."""
    seconds = events[EVENT_TIMESTAMP].epoch_seconds().floor().cast("int64")
    behavior = ibis.cases(*((events[BEHAVIOR] == b, i) for i, b in enumerate(BEHAVIORS)), else_=-1)
    state = events.select(
        USER_ID,
        **{
            RECENT_EVENT_IDS: _event_id(
                events[USER_ID],
                events[ITEM_ID],
                events[CATEGORY_ID],
                events[BEHAVIOR],
                events[EVENT_TIMESTAMP],
            ),
            RECENT_TIMESTAMPS: seconds,
            RECENT_ITEMS: events[ITEM_ID],
            RECENT_CATEGORIES: events[CATEGORY_ID],
            RECENT_BEHAVIORS: behavior.cast("int64"),
        },
    ).distinct()  # a duplicate is the same event in every column kept
    order = [state[RECENT_TIMESTAMPS], state[RECENT_EVENT_IDS]]
    last = ibis.window(group_by=state[USER_ID], order_by=order, preceding=RECENT_EVENTS - 1, following=0)
    following = ibis.window(group_by=state[USER_ID], order_by=order)
    delay = int(RECENT_STATE_DELAY.total_seconds())
    state = state.mutate(
        second=state[RECENT_TIMESTAMPS],
        next_second=state[RECENT_TIMESTAMPS].lead().over(following),
        **{f"last_{name}": state[name].collect().over(last) for name in RECENT_FEATURES},
    )
    # the state after the last event of each second
    state = state.filter(state.next_second.isnull() | (state.next_second != state.second))
    state = state.mutate(stamp_seconds=state.second + delay)
    if start_s is not None:
        state = state.filter(state.stamp_seconds >= start_s)
    if end_s is not None:
        state = state.filter(state.stamp_seconds < end_s)
    return state.select(
        USER_ID,
        **{EVENT_TIMESTAMP: state.stamp_seconds.as_timestamp("s")},
        **{name: state[f"last_{name}"] for name in RECENT_FEATURES},
    )
