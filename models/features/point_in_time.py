"""Point-in-time joins of a FeatureService with DuckDB's ASOF JOIN, for training sets at size.

Feast's DuckDB offline store answers `get_historical_features` by joining every entity row with
every earlier row of its entity and keeping the newest (an inner join, then a window): the work
grows with entity rows x rows per entity, and at 1 M events a day's join takes minutes and GBs. An
ASOF join finds the same row (per entity row and view, the newest source row at or before the
row's timestamp) by a merge of both sides sorted by time.

What is joined comes from the FeatureService as Feast resolves it: the service's views and
features, each view's batch source (its file, timestamp and created-timestamp columns, field
mapping) and TTL, and the on-demand views, which run their own transformation on the joined
columns (Arrow arrays, see feature_repo/on_demand_views.py). The result equals Feast's
`get_historical_features(entity_df, features=service).to_df()` for the service's columns
(tests/integration/test_point_in_time.py); the inputs on-demand views read but the service does not
name (the users' recent-event lists) are left out, as a training set does not need them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from feature_repo.contract import EVENT_TIMESTAMP

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from feast import FeatureService, FeatureStore
    from feast.on_demand_feature_view import OnDemandFeatureView

    from models.features.engine import EngineConfig

ROW = "__entity_row"


@dataclass(frozen=True)
class ViewRead:
    """One feature view's part of the join: its source file and the columns read from it."""

    name: str
    path: str
    timestamp: str
    created: str | None
    keys: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (column in the file, feature name)
    ttl_s: float  # 0: a row is valid until the next one


@dataclass(frozen=True)
class JoinPlan:
    """What a FeatureService's point-in-time join reads, and which columns it returns."""

    views: tuple[ViewRead, ...]
    on_demand: tuple[tuple[OnDemandFeatureView, tuple[str, ...]], ...]  # (view, outputs kept)
    features: tuple[str, ...]  # the service's feature columns, in the service's order


def plan_join(store: FeatureStore, service: FeatureService) -> JoinPlan:
    """The service's views and on-demand views as Feast resolves them for a historical retrieval."""
    from feast.data_source import PushSource
    from feast.on_demand_feature_view import OnDemandFeatureView

    registry, project = store.registry, store.project
    reads: dict[str, dict[str, None]] = {}
    on_demand: list[tuple[OnDemandFeatureView, tuple[str, ...]]] = []
    features: list[str] = []
    for projection in service.feature_view_projections:
        if projection.join_key_map:
            raise ValueError(f"projection {projection.name!r} maps join keys; not supported here")
        names = [f.name for f in projection.features]
        features += names
        view = registry.get_any_feature_view(projection.name, project, allow_cache=True)
        if isinstance(view, OnDemandFeatureView):
            if view.mode != "python" or view.aggregations:
                raise ValueError(f"on-demand view {view.name!r}: only mode='python' views are supported")
            on_demand.append((view, tuple(names)))
            for source in view.source_feature_view_projections.values():
                reads.setdefault(source.name, {}).update(dict.fromkeys(f.name for f in source.features))
        else:
            reads.setdefault(projection.name, {}).update(dict.fromkeys(names))
    views = []
    for name, wanted in reads.items():
        view = registry.get_any_feature_view(name, project, allow_cache=True)
        source = view.batch_source
        if isinstance(source, PushSource):
            source = source.batch_source
        path = getattr(source, "path", None)
        if path is None:
            raise ValueError(f"view {name!r} reads {type(source).__name__}: only file sources are supported")
        renamed = {feature: column for column, feature in (source.field_mapping or {}).items()}
        timestamp = renamed.get(source.timestamp_field, source.timestamp_field)
        created = source.created_timestamp_column or None
        views.append(
            ViewRead(
                name=name,
                path=str(path),
                timestamp=timestamp,
                created=renamed.get(created, created) if created else None,
                keys=tuple(c.name for c in view.entity_columns),
                columns=tuple((renamed.get(f, f), f) for f in wanted),
                ttl_s=view.ttl.total_seconds() if view.ttl else 0.0,
            )
        )
    return JoinPlan(tuple(views), tuple(on_demand), tuple(dict.fromkeys(features)))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _files(path: str) -> str:
    """A source's files as read_parquet takes them: the file, or a folder's Parquet files."""
    glob = f"{path.rstrip('/')}/**/*.parquet" if Path(path).is_dir() else path
    return "'" + glob.replace("'", "''") + "'"


def join_sql(plan: JoinPlan, entity: str, keys: list[str], latest: Any) -> str:
    """The SQL of the join of relation `entity` (its columns, ROW and EVENT_TIMESTAMP) with every
    view of `plan`: per view the newest source row at or before each entity row's time (newest
    created first where the source has a created-timestamp column), within the view's TTL."""
    selects = [f"e.{_quote(c)}" for c in keys]
    joins = []
    for i, view in enumerate(plan.views):
        alias, ts = f"v{i}", f"__ts{i}"
        order = [_quote(view.timestamp)]
        picked = ", ".join(
            [*(_quote(k) for k in view.keys), f"CAST({_quote(view.timestamp)} AS TIMESTAMPTZ) AS {ts}"]
            + [f"{_quote(column)} AS {_quote(feature)}" for column, feature in view.columns]
        )
        where = f"WHERE {_quote(view.timestamp)} <= TIMESTAMPTZ '{latest.isoformat()}'"
        source = f"SELECT {picked} FROM read_parquet({_files(view.path)}) {where}"
        if view.created:
            order.append(_quote(view.created))
            keys_sql = ", ".join(_quote(k) for k in [*view.keys, view.timestamp])
            source = (
                f"SELECT {picked} FROM read_parquet({_files(view.path)}) {where} QUALIFY row_number() "
                f"OVER (PARTITION BY {keys_sql} ORDER BY {_quote(view.created)} DESC) = 1"
            )
        on = " AND ".join(
            [f"e.{_quote(k)} = {alias}.{_quote(k)}" for k in view.keys]
            + [f"CAST(e.{_quote(EVENT_TIMESTAMP)} AS TIMESTAMPTZ) >= {alias}.{ts}"]
        )
        joins.append(f"ASOF LEFT JOIN ({source}) AS {alias} ON {on}")
        for _, feature in view.columns:
            value = f"{alias}.{_quote(feature)}"
            if view.ttl_s > 0:
                expired = (
                    f"{alias}.{ts} < CAST(e.{_quote(EVENT_TIMESTAMP)} AS TIMESTAMPTZ) "
                    f"- INTERVAL {view.ttl_s} SECOND"
                )
                value = f"CASE WHEN {expired} THEN NULL ELSE {value} END"
            selects.append(f"{value} AS {_quote(feature)}")
    return f"SELECT {', '.join(selects)} FROM {entity} AS e {' '.join(joins)} ORDER BY e.{ROW}"


def historical_features(
    con: duckdb.DuckDBPyConnection, plan: JoinPlan, entity_rows: pd.DataFrame
) -> pd.DataFrame:
    """`entity_rows` (join keys, EVENT_TIMESTAMP, anything else) with the service's features as
    they were at each row's timestamp, in the rows' order: the columns of Feast's
    get_historical_features for the service, without the inputs only on-demand views read."""
    import pyarrow as pa

    keys = list(entity_rows.columns)
    rows = pa.Table.from_pandas(entity_rows, preserve_index=False)
    rows = rows.append_column(ROW, pa.array(range(len(entity_rows)), type=pa.int64()))
    con.register("__entity_rows", rows)
    try:
        latest = entity_rows[EVENT_TIMESTAMP].max()
        joined = con.sql(join_sql(plan, "__entity_rows", keys, latest)).to_arrow_table()
    finally:
        con.unregister("__entity_rows")
    joined = _with_on_demand(joined, plan)
    wanted = [*keys, *(c for c in plan.features if c not in keys)]
    return joined.select(wanted).to_pandas()


def _with_on_demand(table: pa.Table, plan: JoinPlan) -> pa.Table:
    """`table` with the on-demand views' outputs, each computed by the view's own transformation."""
    import pyarrow as pa
    from feast.type_map import feast_value_type_to_pa

    for view, outputs in plan.on_demand:
        inputs = {name: table[name] for name in table.column_names}
        out = view.feature_transformation.udf(inputs)
        types = {f.name: feast_value_type_to_pa(f.dtype.to_value_type()) for f in view.features}
        for name in outputs:
            table = table.append_column(name, pa.array(out[name], type=types[name]))
    return table


@contextmanager
def duckdb_join(
    store: FeatureStore, service: FeatureService, config: EngineConfig
) -> Iterator[Callable[[pd.DataFrame], pd.DataFrame]]:
    """For the block, the service's point-in-time join of entity rows on one DuckDB connection
    within `config`'s memory, threads and spill folder."""
    from models.features.engine import connect

    plan = plan_join(store, service)
    with connect(config) as con:
        yield lambda rows: historical_features(con, plan, rows)
