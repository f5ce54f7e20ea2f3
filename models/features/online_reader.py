"""Online features for one user and N candidate items, read through Feast in the shape of the request.

`store.get_online_features(features=service, entity_rows=[{user, item, request_ts}] * N)` converts
every row to protobuf, reads the same user N times and runs the on-demand views over the whole
response: 20-50 ms for N = 100 on this machine (benchmarks/RESULTS.md). `OnlineFeatureReader` asks
Feast for the same values as the request is shaped, and returns the same frame:

* the user's rows once (one entity row), never cached: the pushed recent activity must be fresh;
* the items' rows through a bounded cache of NumPy columns (models/features/item_cache.py),
  because batch item features only change when a batch is materialized: a materialization recorded
  in the registry empties it (see `_read_views`), and the TTL bounds what other writers could leave
  stale. Only the misses are read;
* both through Feast's online store API, one batched call per view (`online_read`, the call
  get_online_features makes on SQLite and Redis), the values converted by Feast's own converter
  as get_online_features converts them: that skips the response Feast builds around them, most of
  its per-item cost (benchmarks/item_reads.py). On other stores they go through
  get_online_features. An item the store has no row for may be kept for a shorter time
  (`unknown_item_ttl_s`), so that a store filled while the reader runs is seen within seconds
  rather than a whole TTL later;
* the on-demand views computed here by the view's own transformation (`transform_dict`, the method
  Feast calls), on the inputs Feast would give it, and their values converted as Feast converts them.

Everything is derived from the FeatureService (which views are keyed by the user, which by the
item, which on-demand views read what), so a new service version needs no change here. Feast stays
the only reader of the online store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from feature_repo.contract import ITEM_ID, REQUEST_TS, USER_ID
from models.features.item_cache import Block, ItemCache, block_of, merge

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore, FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView
    from feast.value_type import ValueType

DEFAULT_MAX_CACHED_ITEMS = 1_000_000  # ~300 MB with 19 item features (models/features/item_cache.py)


@dataclass(frozen=True)
class OnlineFeatures:
    """One request's features.

    `frame` has one row per candidate, in request order, with the columns and values of
    `pd.DataFrame(store.get_online_features(features=service, entity_rows=...).to_dict())`; its
    columns come in the service's order (join keys first), where Feast orders a view's features by
    a set, which changes with PYTHONHASHSEED. `unknown_items` are the candidates (each once, in
    request order) Feast has no item feature value for: their item features are None/NaN, exactly as
    Feast returns them, and the caller may flag them. `cached_items` counts the distinct candidates
    served from the cache.
    """

    frame: pd.DataFrame
    unknown_items: list[int]
    cached_items: int


@dataclass(frozen=True)
class _OnDemand:
    view: OnDemandFeatureView
    inputs: tuple[str, ...]  # the columns Feast passes this view (it drops other views' features)
    outputs: tuple[str, ...]  # the service's features of this view
    types: dict[str, ValueType]  # output types, for Feast's value conversion


@dataclass(frozen=True)
class _ViewRead:
    view: str  # a user- or item-keyed feature view
    features: tuple[str, ...]  # its features to read, in _Plan.user_features' or item_features' order
    types: tuple[ValueType, ...]  # their types, for Feast's value conversion


@dataclass(frozen=True)
class _Plan:
    user_refs: list[str]  # "view:feature" of every user-keyed feature to read
    user_features: list[str]
    user_reads: list[_ViewRead]  # the user views, read by the store's online_read
    user_key_type: ValueType  # the user join key's type, as Feast converts the entity values
    item_refs: list[str]
    item_features: list[str]
    item_reads: list[_ViewRead]  # the item views, read by the store's online_read
    item_key_type: ValueType  # the item join key's type, as Feast converts the entity values
    request_fields: tuple[str, ...]
    on_demand: list[_OnDemand]
    columns: list[str]  # the frame's columns: join keys, then the service's features in order


def _plan(store: FeatureStore, service: FeatureService, user_key: str, item_key: str) -> _Plan:
    """Split the service into user reads, item reads and on-demand views, as Feast resolves it."""
    from feast.data_source import PushSource
    from feast.on_demand_feature_view import OnDemandFeatureView
    from feast.stream_feature_view import StreamFeatureView

    registry, project = store.registry, store.project
    reads: dict[str, dict[str, None]] = {}  # view -> features to read (ordered set)
    keyed: dict[str, str] = {}  # view -> user_key or item_key
    types: dict[str, dict[str, ValueType]] = {}  # view -> feature -> type
    key_types: dict[str, ValueType] = {}  # join key -> type
    fv_refs: list[tuple[str, str]] = []  # the service's own (view, feature) refs
    odfvs: list[tuple[OnDemandFeatureView, list[str]]] = []
    columns = [user_key, item_key]

    def add_read(name: str, features: list[str]) -> None:
        if name not in keyed:
            view = registry.get_any_feature_view(name, project, allow_cache=True)
            join_keys = list(view.join_keys)
            if join_keys not in ([user_key], [item_key]):
                raise ValueError(
                    f"view {name!r} is keyed by {join_keys}: expected [{user_key}] or [{item_key}]"
                )
            if join_keys == [item_key] and (
                isinstance(view, StreamFeatureView)
                or isinstance(getattr(view, "stream_source", None), PushSource)
            ):
                raise ValueError(f"item view {name!r} is fed live: caching it would serve stale values")
            keyed[name] = join_keys[0]
            types[name] = {f.name: f.dtype.to_value_type() for f in view.features}
            key_types.update((c.name, c.dtype.to_value_type()) for c in view.entity_columns)
        reads.setdefault(name, {}).update(dict.fromkeys(features))

    for projection in service.feature_view_projections:
        if projection.join_key_map:
            raise ValueError(f"projection {projection.name!r} maps join keys; not supported here")
        names = [f.name for f in projection.features]
        columns += names
        view = registry.get_any_feature_view(projection.name, project, allow_cache=True)
        if isinstance(view, OnDemandFeatureView):
            if view.mode != "python" or view.aggregations or view.write_to_online_store:
                raise ValueError(
                    f"on-demand view {view.name!r}: only plain mode='python' views are supported"
                )
            odfvs.append((view, names))
            for source in view.source_feature_view_projections.values():
                add_read(source.name, [f.name for f in source.features])
        else:
            fv_refs += [(projection.name, n) for n in names]
            add_read(projection.name, names)

    request_fields = tuple(
        dict.fromkeys(
            field.name
            for view, _ in odfvs
            for source in view.source_request_sources.values()
            for field in source.schema
        )
    )
    if set(request_fields) - {REQUEST_TS}:
        raise ValueError(
            f"the service needs request fields {request_fields}; the reader supplies {REQUEST_TS}"
        )

    def refs(key: str) -> tuple[list[str], list[str]]:
        pairs = [(v, f) for v, features in reads.items() if keyed[v] == key for f in features]
        return [f"{v}:{f}" for v, f in pairs], [f for _, f in pairs]

    user_refs, user_features = refs(user_key)
    item_refs, item_features = refs(item_key)

    def view_reads(key: str) -> list[_ViewRead]:
        return [
            _ViewRead(v, tuple(features), tuple(types[v][f] for f in features))
            for v, features in reads.items()
            if keyed[v] == key
        ]

    base = [user_key, item_key, *request_fields, *user_features, *item_features]
    on_demand = []
    for view, outputs in odfvs:
        # Feast's _augment_response_with_on_demand_transforms hides from a view the features of views
        # it does not declare as sources: the service's own refs and other on-demand views' sources.
        declared = {p.name for p in view.source_feature_view_projections.values()}
        hidden = {f for v, f in fv_refs if v not in declared}
        for other, _ in odfvs:
            for p in other.source_feature_view_projections.values():
                if p.name not in declared:
                    hidden.update(f.name for f in p.features)
        on_demand.append(
            _OnDemand(
                view=view,
                inputs=tuple(c for c in dict.fromkeys(base) if c not in hidden),
                outputs=tuple(outputs),
                types={f.name: f.dtype.to_value_type() for f in view.schema},
            )
        )
    from feast.value_type import ValueType

    return _Plan(
        user_refs,
        user_features,
        view_reads(user_key),
        key_types.get(user_key, ValueType.UNKNOWN),
        item_refs,
        item_features,
        view_reads(item_key),
        key_types.get(item_key, ValueType.UNKNOWN),
        request_fields,
        on_demand,
        columns,
    )


# The online stores whose get_online_features is their online_read plus Feast's response: on these
# the reader calls online_read itself. Other stores (Postgres, remote, ...) read as they choose.
_ONLINE_READ_STORES = frozenset({"sqlite", "redis"})


def _reads_online_store(store: FeatureStore, service: FeatureService) -> bool:
    """Whether the item misses are read through the online store's online_read: on the stores of
    _ONLINE_READ_STORES, without feature view versioning (whose reads name a view's version)."""
    config = store.config
    return (
        str(getattr(config.online_store, "type", "")) in _ONLINE_READ_STORES
        and not getattr(config.registry, "enable_online_feature_view_versioning", False)
        and not any(getattr(p, "version_tag", None) is not None for p in service.feature_view_projections)
    )


# Value kinds feast_value_type_to_python_type returns as the proto holds them, whatever the declared
# type: read directly, they skip its checks for the kinds that need converting (~1 us a value).
_PLAIN_KINDS = frozenset({"float_val", "double_val", "int32_val", "int64_val", "bool_val"})


def _python_value(value: Any, value_type: ValueType) -> Any:
    """One feature value as get_online_features' `to_dict` returns it (None for an empty value)."""
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _PLAIN_KINDS:
        return getattr(value, kind)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value, value_type)


# A declared value type -> the kind of the item cache's column for it (models/features/item_cache.py)
_KIND_OF_TYPE = {"FLOAT": "f", "DOUBLE": "f", "INT32": "i", "INT64": "i", "BOOL": "b"}

_NUMPY_KINDS = {bool: "b", int: "i", float: "f"}  # a Python scalar type -> its NumPy dtype kind


def _column(values: list[Any]) -> np.ndarray | list[Any]:
    """A column of plain numbers as the array pandas would infer from the list (int64, float64 or
    bool), made by NumPy in a fraction of the time. Anything else (None among the values, strings,
    lists, numbers of mixed types) stays a list for pandas to infer, so the frame is always the one
    `pd.DataFrame` makes of the lists."""
    if not values:
        return values
    try:
        array = np.asarray(values)
    except ValueError:  # lists of different lengths
        return values
    kind = _NUMPY_KINDS.get(type(values[0]))
    return array if array.ndim == 1 and array.dtype.kind == kind else values


def _as_feast_returns(values: list[Any], value_type: ValueType) -> list[Any]:
    """An on-demand view's output as get_online_features returns it: through protobuf and back.

    That round trip turns ints into floats for a Float64 feature and NaN into None; plain floats and
    None come back unchanged, so those skip it.
    """
    from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
    from feast.value_type import ValueType

    if value_type == ValueType.DOUBLE and all(v is None or (type(v) is float and v == v) for v in values):
        return values
    return [feast_value_type_to_python_type(v) for v in python_values_to_proto_values(values, value_type)]


class OnlineFeatureReader:
    """Reads a FeatureService's online features for one user and many candidate items.

    `item_cache_ttl_s` is how long an item's rows are reused (0 disables the cache), and
    `unknown_item_ttl_s` how long an item the store has no row for is remembered as such (default:
    as long as the others; 0: read again at every request); at most `max_cached_items` items are
    kept, least recently used first out. `clock` is injectable for
    tests. The plan (which view is read how) is taken from the registry once, here: build a new
    reader when the service changes, as a model is bound to the service it was trained on.
    """

    def __init__(
        self,
        store: FeatureStore,
        feature_service: FeatureService,
        item_cache_ttl_s: float,
        *,
        unknown_item_ttl_s: float | None = None,
        max_cached_items: int = DEFAULT_MAX_CACHED_ITEMS,
        clock: Callable[[], float] = time.monotonic,
        user_key: str = USER_ID,
        item_key: str = ITEM_ID,
    ) -> None:
        if unknown_item_ttl_s is None:
            unknown_item_ttl_s = item_cache_ttl_s
        if item_cache_ttl_s < 0 or unknown_item_ttl_s < 0 or max_cached_items < 1:
            raise ValueError("the TTLs must be >= 0 and max_cached_items >= 1")
        self.store = store
        self.feature_service = feature_service
        self.item_cache_ttl_s = float(item_cache_ttl_s)
        self.unknown_item_ttl_s = min(float(unknown_item_ttl_s), self.item_cache_ttl_s)
        self.max_cached_items = max_cached_items
        self._clock = clock
        self._user_key, self._item_key = user_key, item_key
        self._plan = _plan(store, feature_service, user_key, item_key)
        self._reads_online_store = _reads_online_store(store, feature_service)
        ttl = float(getattr(store.config.registry, "cache_ttl_seconds", 0) or 0)
        self._registry_ttl_s = ttl if ttl > 0 else float("inf")  # Feast's 0: never expires
        self._views: tuple[dict[str, FeatureView] | None, Any, float] = (None, None, 0.0)
        self._materialized: tuple[Any, ...] | None = None  # the item views' materialization intervals
        self._kinds = [_KIND_OF_TYPE.get(t.name, "O") for r in self._plan.item_reads for t in r.types]
        self._cache = ItemCache(self._kinds, max_cached_items)
        self._lock = threading.Lock()

    @property
    def columns(self) -> list[str]:
        return list(self._plan.columns)

    def __len__(self) -> int:
        """Items in the cache (expired ones included until they are read again or evicted)."""
        return len(self._cache)

    def invalidate(self) -> None:
        """Forget every cached item, e.g. right after a materialization."""
        with self._lock:
            self._cache.clear()

    def warm(self, item_ids: Sequence[int], chunk: int = 200, pause_s: float = 0.0) -> int:
        """Read these items' rows into the cache now (refresh-ahead): called every so often with the
        most requested items, it keeps them from expiring on a request's path. `pause_s` between
        chunks leaves the interpreter to the requests. Returns the items read."""
        if self.item_cache_ttl_s <= 0:
            return 0
        items = list(dict.fromkeys(int(i) for i in item_ids))[: self.max_cached_items]
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            block, found = self._read_items(part)
            expires = self._expiry(found, self._clock())
            with self._lock:
                self._cache.put(part, block, expires)
            time.sleep(pause_s)
        return len(items)

    def read(self, user_id: int, item_ids: Sequence[int], request_ts: int) -> OnlineFeatures:
        """The service's features for (user_id, item, request_ts) for every item, in order."""
        plan = self._plan
        self._read_views()  # an item materialization recorded since the last read empties the cache
        items = [int(i) for i in item_ids]
        n = len(items)
        user = int(user_id)
        base: dict[str, list[Any]] = {self._user_key: [user] * n, self._item_key: items}
        for name in plan.request_fields:
            base[name] = [int(request_ts)] * n
        if plan.user_refs:
            if self._reads_online_store:
                values = self._online_read([user], self._user_key, plan.user_key_type, plan.user_reads)
            else:
                row = self.store.get_online_features(
                    features=plan.user_refs, entity_rows=[{self._user_key: user}]
                ).to_dict()
                values = [row[name] for name in plan.user_features]
            for name, value in zip(plan.user_features, values, strict=True):
                base[name] = value * n
        block, unknown, cached = self._item_block(items)
        result: dict[str, Any] = dict(base)
        for k, name in enumerate(plan.item_features):
            values, present = block.values[k], block.present[k]
            # A column of one kind with every value present is already the array pandas would make.
            result[name] = values if block.kinds[k] != "O" and present.all() else block.python(k)

        def python(name: str) -> list[Any]:  # an input of an on-demand view, as Feast passes it
            if name not in base:
                base[name] = block.python(plan.item_features.index(name))
            return base[name]

        for od in plan.on_demand:
            out = od.view.transform_dict({name: python(name) for name in od.inputs})
            for name in od.outputs:
                if name in out:  # as Feast, which keeps only what the transformation returned
                    result[name] = _as_feast_returns(list(out[name]), od.types[name])
        frame = pd.DataFrame(
            {
                c: result[c] if isinstance(result[c], np.ndarray) else _column(result[c])
                for c in plan.columns
                if c in result
            }
        )
        return OnlineFeatures(frame=frame, unknown_items=unknown, cached_items=cached)

    def _item_block(self, items: list[int]) -> tuple[Block, list[int], int]:
        """The item features' values of every candidate, in order; the unknown items; how many
        distinct candidates came from the cache."""
        now = self._clock()
        distinct = list(dict.fromkeys(items))
        if self.item_cache_ttl_s > 0:
            with self._lock:
                held, block = self._cache.get(distinct, now)
        else:
            held, block = np.zeros(len(distinct), np.bool_), block_of([[]] * len(self._kinds), self._kinds)
        cached = int(held.sum())
        misses = [item for item, hit in zip(distinct, held.tolist(), strict=True) if not hit]
        if misses:
            fetched, found = self._read_items(misses)
            if self.item_cache_ttl_s > 0:
                with self._lock:
                    self._cache.put(misses, fetched, self._expiry(found, now))
            block = merge(block, fetched, held)
        found = block.found() if self._plan.item_refs else np.ones(len(distinct), np.bool_)
        unknown = [item for item, ok in zip(distinct, found.tolist(), strict=True) if not ok]
        if len(distinct) < len(items):
            position = {item: j for j, item in enumerate(distinct)}
            block = block.take(np.fromiter((position[i] for i in items), np.int64, len(items)))
        return block, unknown, cached

    def _expiry(self, found: np.ndarray, now: float) -> np.ndarray:
        """When rows read at `now` expire: after the TTL, or the shorter one for unknown items."""
        return np.where(found, now + self.item_cache_ttl_s, now + self.unknown_item_ttl_s)

    def stored(self, item_ids: Sequence[int]) -> list[int]:
        """Those of `item_ids` the online store has rows for, read now (the cache is neither read nor
        filled): a cheap check that the store holds what the service serves."""
        items = list(dict.fromkeys(int(i) for i in item_ids))
        _, found = self._read_items(items)
        return [item for item, ok in zip(items, found.tolist(), strict=True) if ok]

    def _read_items(self, items: list[int]) -> tuple[Block, np.ndarray]:
        """One batched read of the items' rows, and per item whether the store has one.

        An item is unknown when Feast returned no value for any of its features: field statuses cannot
        tell, as Feast's Redis store marks the empty values of a missing key PRESENT (SQLite marks them
        NOT_FOUND).
        """
        block = block_of(self._item_values(items), self._kinds)
        found = block.found() if self._plan.item_refs else np.ones(len(items), np.bool_)
        return block, found

    def _item_values(self, items: list[int]) -> list[list[Any]]:
        """The item features' values as get_online_features returns them: one list per feature."""
        plan = self._plan
        if not plan.item_refs:
            return []
        if self._reads_online_store:
            return self._online_read(items, self._item_key, plan.item_key_type, plan.item_reads)
        values = self.store.get_online_features(
            features=plan.item_refs, entity_rows=[{self._item_key: item} for item in items]
        ).to_dict()
        return [values[name] for name in plan.item_features]

    def _online_read(
        self, ids: list[int], join_key: str, key_type: ValueType, reads: list[_ViewRead]
    ) -> list[list[Any]]:
        """The features' values of these views (one list per feature, aligned with `ids`), read by
        the online store's `online_read`, one call per view, and converted as get_online_features
        converts them: the entity key built from the id with the join key's type, a feature the
        store has no value for None."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        store = self.store
        keys = [
            EntityKey(join_keys=[join_key], entity_values=[value])
            for value in python_values_to_proto_values(ids, key_type)
        ]
        provider = store._get_provider()
        views = self._read_views()
        columns: list[list[Any]] = []
        for read in reads:
            rows = provider.online_read(
                config=store.config,
                table=views[read.view],
                entity_keys=keys,
                requested_features=list(read.features),
            )
            for name, value_type in zip(read.features, read.types, strict=True):
                columns.append(
                    [
                        None if data is None or name not in data else _python_value(data[name], value_type)
                        for _, data in rows
                    ]
                )
        return columns

    def _read_views(self) -> dict[str, FeatureView]:
        """The user and item views as the registry holds them now. Building a view from the
        registry's proto costs milliseconds, so one is kept until Feast's registry cache is
        refreshed (by any read) or its TTL has passed, when this read refreshes it: an apply reaches
        these reads when it reaches get_online_features.

        A materialization records its interval on each view it wrote (Feast's materialize and this
        project's both do). When a refreshed registry shows new intervals on an item view, the item
        cache is emptied: cached rows never outlive a materialization by more than the registry's
        TTL, so the item TTL need not be short to keep them current.
        """
        registry, now = self.store.registry, time.monotonic()
        stamp = getattr(registry, "cached_registry_proto_created", None)
        views, seen, read_at = self._views
        if views is None or stamp is None or stamp != seen or now - read_at >= self._registry_ttl_s:
            project = self.store.project
            views = {
                r.view: registry.get_any_feature_view(r.view, project, allow_cache=True)
                for r in (*self._plan.user_reads, *self._plan.item_reads)
            }
            self._views = (views, getattr(registry, "cached_registry_proto_created", None), now)
            materialized = tuple(
                (r.view, tuple(getattr(views[r.view], "materialization_intervals", None) or ()))
                for r in self._plan.item_reads
            )
            if self._materialized is not None and materialized != self._materialized:
                self.invalidate()
            self._materialized = materialized
        return views
