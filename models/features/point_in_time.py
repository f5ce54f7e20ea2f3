"""Point-in-time joins of a FeatureService with DuckDB's ASOF JOIN, for training sets at size.

Feast's DuckDB offline store answers `get_historical_features` by joining every entity row with
every earlier row of its entity and keeping the newest (an inner join, then a window): the work
grows with entity rows x rows per entity, and at 1 M events a day's join takes minutes and GBs. An
ASOF join finds the same row (per entity row and view, the newest source row at or before the
row's timestamp) by a merge of both sides sorted by time, and `AsOfJoin` feeds it, for a chunk of
entity rows, only the source rows the chunk can meet (see its docstring).

What is joined comes from the FeatureService as Feast resolves it: the service's views and
features, each view's batch source (its file, timestamp column and field mapping), and the
on-demand views, which run their own transformation on the joined
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
from typing import TYPE_CHECKING

import pandas as pd

from feature_repo.contract import EVENT_TIMESTAMP
from models.features.sql import literal, quoted

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
    keys: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (column in the file, feature name)
    # Lists (the recent-activity state) are joined by their row in the source file and read from it
    # once at the end (AsOfJoin.complete): rewriting them costs several times more than reading.
    by_reference: bool = False


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
        if (view.ttl and view.ttl.total_seconds() > 0) or source.created_timestamp_column:
            # not needed by this repo's views (a snapshot is valid until the next one)
            raise ValueError(
                f"view {name!r} has a TTL or a created-timestamp column, which this join does not "
                "apply: build the training set with CTR_TRAINING_JOIN=feast"
            )
        renamed = {feature: column for column, feature in (source.field_mapping or {}).items()}
        columns = tuple((renamed.get(f, f), f) for f in wanted)
        views.append(
            ViewRead(
                name=name,
                path=str(path),
                timestamp=renamed.get(source.timestamp_field, source.timestamp_field),
                keys=tuple(c.name for c in view.entity_columns),
                columns=columns,
                by_reference=_has_lists(str(path), [column for column, _ in columns]),
            )
        )
    return JoinPlan(tuple(views), tuple(on_demand), tuple(dict.fromkeys(features)))


def _has_lists(path: str, columns: list[str]) -> bool:
    """Whether the source is one Parquet file (rows numbered in it) with a list among `columns`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if Path(path).is_dir() or not Path(path).exists():
        return False
    schema = pq.read_schema(path)
    return any(pa.types.is_list(schema.field(c).type) for c in columns if c in schema.names)


def _files(path: str) -> str:
    """A source's files as read_parquet takes them: the file, or a folder's Parquet files."""
    glob = f"{path.rstrip('/')}/**/*.parquet" if Path(path).is_dir() else path
    return literal(glob)


def _stamp(t: pd.Timestamp) -> str:
    return f"TIMESTAMPTZ '{t.isoformat()}'"


TS, HOUR, SOURCE_ROW = "__ts", "__hour", "__source_row"
COMPLETION_BATCH_ROWS = 65_536
# Source rows of the largest view joined by reference that one completion query reads: a block of
# them and the partial rows that refer to it are joined alone, so the join's memory follows the
# block, not the training set (DuckDB reads only the row groups a block's row numbers fall in).
COMPLETION_SOURCE_ROWS = 10_000_000
FILE, POSITION = "__file", "__position"


def _reference(i: int) -> str:
    return f"__reference{i}"


class AsOfJoin:
    """The plan's point-in-time join on one DuckDB connection, for entity rows given in chunks.

    Each view's source is first rewritten, with only the columns the plan reads, into files per hour
    of its timestamps. A chunk of entity rows between times lo and hi is then joined with, per view,
    the newest row of each entity before lo (a table carried from chunk to chunk) and the source
    rows from lo to hi (the hours between, read alone): the rows an ASOF join over the whole source
    would find, from a read that follows the chunk rather than the source. Chunks given in time
    order, as a training set's are, move the carried rows forward by the hours between them; a chunk
    earlier than the last one rebuilds them.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, plan: JoinPlan, folder: Path) -> None:
        self.con, self.plan, self.folder = con, plan, folder
        self._sources = [self._by_hour(i, view) for i, view in enumerate(plan.views)]
        self._carried_to: list[pd.Timestamp | None] = [None] * len(plan.views)

    def _by_hour(self, i: int, view: ViewRead) -> str:
        out = self.folder / f"view{i}"
        values = [f"{quoted(column)} AS {quoted(feature)}" for column, feature in view.columns]
        columns = [
            *(quoted(k) for k in view.keys),
            f"CAST({quoted(view.timestamp)} AS TIMESTAMPTZ) AS {TS}",
            *([f"file_row_number AS {SOURCE_ROW}"] if view.by_reference else values),
            f"CAST(floor(epoch({quoted(view.timestamp)}) / 3600) AS BIGINT) AS {HOUR}",
        ]
        numbered = ", file_row_number = true" if view.by_reference else ""
        self.con.execute(
            f"COPY (SELECT {', '.join(columns)} FROM read_parquet({_files(view.path)}{numbered})) "
            f"TO {literal(str(out))} (FORMAT parquet, PARTITION_BY ({HOUR}))"
        )
        return f"read_parquet({literal(str(out) + '/**/*.parquet')}, hive_partitioning = true)"

    def _rows(self, i: int, lo: pd.Timestamp | None, hi: pd.Timestamp, *, include_hi: bool) -> str:
        """The rows of view i with lo <= time (< or <=) hi, reading only the hours between."""
        hours = [
            f"{HOUR} <= {int(hi.timestamp() // 3600)}",
            f"{TS} {'<=' if include_hi else '<'} {_stamp(hi)}",
        ]
        if lo is not None:
            hours += [f"{HOUR} >= {int(lo.timestamp() // 3600)}", f"{TS} >= {_stamp(lo)}"]
        return f"SELECT * EXCLUDE ({HOUR}) FROM {self._sources[i]} WHERE {' AND '.join(hours)}"

    def _newest(self, i: int, rows: str) -> str:
        keys = ", ".join(quoted(k) for k in self.plan.views[i].keys)
        return (
            f"SELECT * FROM ({rows}) QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {TS} DESC) = 1"
        )

    def _carry(self, i: int, lo: pd.Timestamp) -> None:
        """Table __carry{i}: per entity of view i its newest row before lo."""
        last = self._carried_to[i]
        if last is not None and last == lo:
            return
        if last is None or lo < last:
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE __carry{i} AS "
                f"{self._newest(i, self._rows(i, None, lo, include_hi=False))}"
            )
        else:
            fresh = self._rows(i, last, lo, include_hi=False)
            if self.con.sql(f"SELECT count(*) FROM ({fresh})").fetchall()[0][0]:
                # the entities with newer rows take them; the others keep theirs
                on = " AND ".join(f"c.{quoted(k)} = f.{quoted(k)}" for k in self.plan.views[i].keys)
                self.con.execute(
                    f"CREATE OR REPLACE TEMP TABLE __carry{i} AS WITH f AS ({self._newest(i, fresh)}) "
                    f"SELECT c.* FROM __carry{i} AS c ANTI JOIN f ON {on} UNION ALL BY NAME SELECT * FROM f"
                )
        self._carried_to[i] = lo

    def _right(self, i: int, entity: str, lo: pd.Timestamp, hi: pd.Timestamp) -> str:
        """View i's rows a chunk can meet: those carried and those from lo to hi, of its entities."""
        on = " AND ".join(f"r.{quoted(k)} = e.{quoted(k)}" for k in self.plan.views[i].keys)
        rows = f"SELECT * FROM __carry{i} UNION ALL BY NAME {self._rows(i, lo, hi, include_hi=True)}"
        return f"SELECT r.* FROM ({rows}) AS r SEMI JOIN {entity} AS e ON {on}"

    def sql(self, entity: str, keys: list[str], lo: pd.Timestamp, hi: pd.Timestamp) -> str:
        """The join of relation `entity` (its columns, ROW and EVENT_TIMESTAMP between lo and hi)
        with every view: per view the newest row at or before each entity row's time (among rows of
        one entity and time, any one, as Feast's store picks); of a view joined by reference, that
        row's number in its source file."""
        at = f"CAST(e.{quoted(EVENT_TIMESTAMP)} AS TIMESTAMPTZ)"
        selects = [f"e.{quoted(c)}" for c in keys]
        joins = []
        for i, view in enumerate(self.plan.views):
            self._carry(i, lo)
            alias = f"v{i}"
            on = " AND ".join(
                [f"e.{quoted(k)} = {alias}.{quoted(k)}" for k in view.keys] + [f"{at} >= {alias}.{TS}"]
            )
            joins.append(f"ASOF LEFT JOIN ({self._right(i, entity, lo, hi)}) AS {alias} ON {on}")
            if view.by_reference:
                selects.append(f"{alias}.{SOURCE_ROW} AS {_reference(i)}")
            else:
                selects += [f"{alias}.{quoted(feature)} AS {quoted(feature)}" for _, feature in view.columns]
        return f"SELECT {', '.join(selects)} FROM {entity} AS e {' '.join(joins)} ORDER BY e.{ROW}"

    def __call__(self, entity_rows: pd.DataFrame) -> pd.DataFrame:
        """`entity_rows` (join keys, EVENT_TIMESTAMP, anything else) with the service's features as
        they were at each row's timestamp, in the rows' order: the columns of Feast's
        get_historical_features for the service, without the inputs only on-demand views read."""
        import pyarrow as pa

        partial = pa.Table.from_pandas(self.partial(entity_rows), preserve_index=False)
        numbered = partial.append_column(POSITION, pa.array(range(partial.num_rows), type=pa.int64()))
        self.con.register("__partial", numbered)
        try:
            parts = list(self._completions("SELECT * FROM __partial", list(entity_rows.columns)))
        finally:
            self.con.unregister("__partial")
        completed = pa.concat_tables(parts).sort_by(POSITION) if parts else None
        return self._assemble(partial, completed, list(entity_rows.columns)).to_pandas()

    def in_two_steps(self) -> tuple[Callable[[pd.DataFrame], pd.DataFrame], Callable | None]:
        """For a build in chunks: the join of a chunk and what completes the written files
        (training_set.write_chunks), or the whole join and None when no view is joined by
        reference."""
        if any(view.by_reference for view in self.plan.views):
            return self.partial, self.complete
        return self, None

    def partial(self, entity_rows: pd.DataFrame) -> pd.DataFrame:
        """The first step of the join, in the rows' order: `entity_rows` with the features of the
        views joined by value and, per view joined by reference, the chosen row of its source
        (`complete` adds their values and the on-demand features)."""
        import pyarrow as pa

        keys = list(entity_rows.columns)
        rows = pa.Table.from_pandas(entity_rows, preserve_index=False)
        rows = rows.append_column(ROW, pa.array(range(len(entity_rows)), type=pa.int64()))
        times = entity_rows[EVENT_TIMESTAMP]
        lo, hi = times.min().floor("us"), times.max().ceil("us")
        self.con.register("__entity_rows", rows)
        try:
            return self.con.sql(self.sql("__entity_rows", keys, lo, hi)).to_arrow_table().to_pandas()
        finally:
            self.con.unregister("__entity_rows")

    def complete(self, files: list[Path], row_group_rows: int | None = None) -> None:
        """Replace each Parquet file of `partial` rows by its complete rows: one read of each
        referenced source for all the files together (a read per chunk would read the source as
        many times as there are chunks), the on-demand features computed block by block."""
        import pyarrow.parquet as pq

        if not files:
            return
        names = pq.read_schema(files[0]).names
        keys = [c for c in names if c not in self._joined_columns()]
        listed = ", ".join(literal(str(f)) for f in files)
        numbers = ", ".join(f"({literal(str(f))}, {k})" for k, f in enumerate(files))
        # each file by its index in `files`: an integer per row, not its path
        rows = (
            f"SELECT p.* EXCLUDE (filename, file_row_number), f.number AS {FILE}, "
            f"p.file_row_number AS {POSITION} "
            f"FROM read_parquet([{listed}], filename = true, file_row_number = true) AS p "
            f"JOIN (VALUES {numbers}) AS f(name, number) ON p.filename = f.name"
        )
        # A second connection to the same database holds the completed columns while the first one
        # streams the join (a statement on the streaming connection would end its stream).
        with self.con.cursor() as store:
            self._complete_files(store, rows, keys, files, row_group_rows)

    def _complete_files(self, store, rows: str, keys: list[str], files: list[Path], row_group_rows) -> None:
        import pyarrow.parquet as pq

        store.execute("DROP TABLE IF EXISTS __completed")
        first = True
        for part in self._completions(rows, keys, extra=[FILE]):
            store.register("__part", part)
            if first:
                store.execute("CREATE TABLE __completed AS SELECT * FROM __part")
                first = False
            else:
                store.execute("INSERT INTO __completed SELECT * FROM __part")
            store.unregister("__part")
        if first:
            return
        # clustered by file, so that each file's rows are read from their own blocks
        store.execute(f"CREATE OR REPLACE TABLE __completed AS FROM __completed ORDER BY {FILE}, {POSITION}")
        schema = None
        for number, path in enumerate(files):
            partial = pq.read_table(path)
            completed = store.sql(
                f"SELECT * EXCLUDE ({FILE}) FROM __completed WHERE {FILE} = $file ORDER BY {POSITION}",
                params={"file": number},
            ).to_arrow_table()
            table = self._assemble(partial, completed, keys)
            schema = schema or table.schema
            pq.write_table(table.cast(schema), path, row_group_size=row_group_rows)
        store.execute("DROP TABLE __completed")

    def _joined_columns(self) -> set[str]:
        """The columns the first step adds to the entity rows."""
        added = {_reference(i) for i, view in enumerate(self.plan.views) if view.by_reference}
        return added | {f for view in self.plan.views if not view.by_reference for _, f in view.columns}

    def _completions(self, rows: str, keys: list[str], extra: tuple[str, ...] | list[str] = ()):
        """Per block of the partial `rows` (a relation with POSITION), the values the first step
        left out: the referenced views' features the service names and the on-demand features,
        with POSITION (and the `extra` columns). The rows come block by block of the largest
        referenced source (COMPLETION_SOURCE_ROWS), then those it has no row for, in no set order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        referenced = [(i, view) for i, view in enumerate(self.plan.views) if view.by_reference]
        by_value = {f for view in self.plan.views if not view.by_reference for _, f in view.columns}
        inputs = list(dict.fromkeys([*keys, *(f for f in self._on_demand_inputs() if f in by_value)]))
        added = [c for c in self.plan.features if c not in keys and c not in by_value]
        blocks: list[tuple[int, int] | None] = [None]
        main = None
        if referenced:
            sizes = {i: pq.read_metadata(view.path).num_rows for i, view in referenced}
            main = max(sizes, key=sizes.__getitem__)
            size, step = sizes[main], COMPLETION_SOURCE_ROWS
            blocks = [(lo, min(lo + step, size)) for lo in range(0, size, step)] + blocks
        for block in blocks:
            query = self._completion_query(rows, referenced, main, block, [*extra, POSITION, *inputs])
            for batch in self.con.sql(query).to_arrow_reader(COMPLETION_BATCH_ROWS):
                table = _with_on_demand(pa.Table.from_batches([batch]), self.plan)
                yield table.select([*extra, POSITION, *added])

    def _completion_query(
        self,
        rows: str,
        referenced: list[tuple[int, ViewRead]],
        main: int | None,
        block: tuple[int, int] | None,
        carried: list[str],
    ) -> str:
        """The partial rows whose row in view `main`'s source lies in `block` (lo, hi), or that
        have none there when `block` is None, with the `carried` columns and each referenced
        view's values."""
        selects = [f"p.{quoted(c)}" for c in carried]
        joins = []
        where = "true"
        for i, view in referenced:
            alias = f"s{i}"
            values = ", ".join(f"{quoted(column)} AS {quoted(feature)}" for column, feature in view.columns)
            inside = "true"
            if i == main:
                reference = quoted(_reference(i))
                if block is None:
                    inside, where = "false", f"{reference} IS NULL"
                else:
                    lo, hi = block
                    inside = f"file_row_number >= {lo} AND file_row_number < {hi}"
                    where = f"{reference} >= {lo} AND {reference} < {hi}"
            source = (
                f"SELECT file_row_number AS {SOURCE_ROW}, {values} "
                f"FROM read_parquet({literal(view.path)}, file_row_number = true) WHERE {inside}"
            )
            joins.append(f"LEFT JOIN ({source}) AS {alias} ON {alias}.{SOURCE_ROW} = p.{_reference(i)}")
            selects += [f"{alias}.{quoted(feature)}" for _, feature in view.columns]
        partial = f"SELECT * FROM ({rows}) WHERE {where}"
        return f"SELECT {', '.join(selects)} FROM ({partial}) AS p {' '.join(joins)}"

    def _on_demand_inputs(self) -> list[str]:
        """The features the on-demand views read from feature views."""
        return [
            feature.name
            for view, _ in self.plan.on_demand
            for source in view.source_feature_view_projections.values()
            for feature in source.features
        ]

    def _assemble(self, partial: pa.Table, completed: pa.Table | None, keys: list[str]) -> pa.Table:
        """The partial rows with the completed columns, in the service's column order."""
        wanted = [*keys, *(c for c in self.plan.features if c not in keys)]
        if completed is not None:
            if completed.num_rows != partial.num_rows:
                raise RuntimeError(f"{completed.num_rows} completed rows for {partial.num_rows} joined ones")
            for name in completed.column_names:
                if name != POSITION and name not in partial.column_names:
                    partial = partial.append_column(name, completed[name])
        return partial.select(wanted)


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
    """For the block, the service's point-in-time join of entity rows (AsOfJoin) on one DuckDB
    connection within `config`'s memory, threads and spill folder, which also holds its copies of
    the sources."""
    import shutil
    import tempfile

    from models.features.engine import connect

    plan = plan_join(store, service)
    if config.temp_directory is not None:
        # one fixed folder, so that what a killed build left there goes when the next one starts
        folder = Path(config.temp_directory) / "point-in-time"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="point-in-time-"))
    try:
        with connect(config) as con:
            yield AsOfJoin(con, plan, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
