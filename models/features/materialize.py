"""Materialization into the online store in bounded memory, at Taobao's size.

Feast's own `materialize` reads every row of the interval into one table, sorts it in pandas and
turns every value into a protobuf object before it writes: its memory grows with the rows (9.5 GB
for 1 M entities) and it writes about 12 k rows/s. This writes the same rows, as Feast would:

* **Which rows.** Per feature view, the newest row of each entity key stamped in [start, end]
  (both included), read from the view's Parquet source by DuckDB and handed over in record batches
  of `batch_rows`, with DuckDB's memory capped (it spills to disk beyond). Ties on the timestamp go
  to the newest created timestamp, then to the first row in the file; Feast's own sort leaves the
  order of rows that tie on both unspecified.
* **How they are written.** Into Redis, each batch in one pipeline with the bytes Feast's
  RedisOnlineStore writes (its key, field hashes and value encoding, computed per column rather than
  per value), skipping an entity whose stored row is as new or newer, as Feast does; the first row
  of every batch is also encoded by Feast itself and compared, so a Feast release that changes the
  layout fails here instead of writing rows it cannot read. Into any other online store (SQLite, the
  embedded default) each batch goes through the provider's `online_write_batch` after Feast's own
  conversion, which is what Feast's materialization calls.
* **The registry.** Each view's interval is recorded with `apply_materialization`, so that
  `feast materialize-incremental` and the registry stay as after Feast's own materialize.

A view this reader does not cover (its source not a local Parquet FileSource, or one with a field
mapping; a view without entities) is materialized by Feast's own `materialize`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import compress, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from models.features.sql import quoted

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

# How often a long view reports its progress.
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class ViewMaterialized:
    """One view's materialization: the entity rows read and written, and how long it took."""

    view: str
    rows: int  # entity rows in the interval (the newest row of each entity)
    written: int  # rows written: those the store did not hold as new or newer
    seconds: float
    path: str  # "batches" (this module) or "feast" (Feast's own materialize)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Columns:
    keys: list[str]
    features: list[str]
    timestamp: str
    created: str  # "" when the source has no created timestamp


def materialize(
    store: FeatureStore,
    start: datetime,
    end: datetime,
    *,
    views: list[str] | None = None,
    batch_rows: int = 50_000,
    duckdb_memory_mb: int = 2048,
    progress: Callable[[str], None] | None = None,
) -> list[ViewMaterialized]:
    """Load the newest row per entity stamped in [start, end] of every online feature view (or of
    `views`) into the online store, one bounded batch at a time, and record the interval in the
    registry. Returns what each view did; `progress` (default: the log) gets a line per view and,
    on long views, every PROGRESS_EVERY_S."""
    start, end = _aware(start), _aware(end)
    if start > end:
        raise ValueError(f"The given start {start} is after the given end {end}")
    say = progress or log.info
    done = []
    for view in _views_to_materialize(store, views):
        began = time.monotonic()
        source = _parquet_source(store, view)
        if source is None or not view.entity_columns:
            say(f"{view.name}: not a keyed view on a local Parquet file; Feast's own materialize")
            store.materialize(start_date=start, end_date=end, feature_views=[view.name])
            done.append(ViewMaterialized(view.name, 0, 0, time.monotonic() - began, "feast"))
            continue
        columns = _columns(store, view)
        write = _writer(store, view, columns)
        rows = written = 0
        reported = began
        for batch in latest_rows(source, columns, start, end, batch_rows, duckdb_memory_mb):
            written += write(batch)
            rows += batch.num_rows
            if time.monotonic() - reported >= PROGRESS_EVERY_S:
                reported = time.monotonic()
                say(f"{view.name}: {rows:,} rows, {rows / (reported - began):,.0f} rows/s")
        store.registry.apply_materialization(view, store.project, start, end)
        result = ViewMaterialized(view.name, rows, written, time.monotonic() - began, "batches")
        say(
            f"{view.name}: {rows:,} rows ({written:,} written) in {result.seconds:.1f} s, "
            f"{result.rows_per_s:,.0f} rows/s"
        )
        done.append(result)
    _precompute_services(store, [d.view for d in done])
    return done


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _views_to_materialize(store: FeatureStore, names: list[str] | None) -> list[FeatureView]:
    """The views Feast's materialize takes: every online, enabled (stream) feature view, or those named."""
    from feast.errors import FeatureViewNotFoundException

    if names is not None:
        views = []
        for name in names:
            try:
                views.append(store.get_feature_view(name))
            except FeatureViewNotFoundException:  # a stream feature view, or Feast's error for none
                views.append(store.get_stream_feature_view(name))
        return views
    every = [*store.list_feature_views(), *store.list_stream_feature_views()]
    chosen = [v for v in every if v.online and getattr(v, "enabled", True)]
    written_on_demand = [
        v.name for v in store.list_on_demand_feature_views() if getattr(v, "write_to_online_store", False)
    ]
    if written_on_demand:
        raise ValueError(
            f"On-demand views written to the online store ({', '.join(written_on_demand)}) "
            "are materialized by Feast's own materialize only"
        )
    return chosen


def _parquet_source(store: FeatureStore, view: FeatureView) -> Path | None:
    """The local Parquet file of the view's batch source, if this reader covers it."""
    from feast.data_format import ParquetFormat
    from feast.infra.offline_stores.file_source import FileSource

    source = view.batch_source
    if not isinstance(source, FileSource) or source.field_mapping:
        return None
    if source.file_format is not None and not isinstance(source.file_format, ParquetFormat):
        return None
    uri = FileSource.get_uri_for_file_path(store.repo_path, source.path)
    if "://" in uri and not uri.startswith("file://"):
        return None
    path = Path(uri.removeprefix("file://"))
    return None if path.is_dir() else path


def _columns(store: FeatureStore, view: FeatureView) -> _Columns:
    source = view.batch_source
    return _Columns(
        keys=[c.name for c in view.entity_columns],
        features=[f.name for f in view.features],
        timestamp=source.timestamp_field,
        created=source.created_timestamp_column or "",
    )


def latest_rows(
    path: Path,
    columns: _Columns,
    start: datetime,
    end: datetime,
    batch_rows: int,
    memory_mb: int,
) -> Iterator[pa.RecordBatch]:
    """The newest row per entity key stamped in [start, end], in record batches of at most
    `batch_rows`: DuckDB over the Parquet file, its memory capped at `memory_mb` (it spills beyond)."""
    import duckdb

    if not path.exists():
        raise FileNotFoundError(f"No offline source at {path}: build the features first")
    wanted = [*columns.keys, *columns.features, columns.timestamp]
    if columns.created:
        wanted.append(columns.created)
    stamp = quoted(columns.timestamp)
    # The newest row: the latest timestamp, then the latest created time (none counts as oldest),
    # then the first in the file.
    newest = [f"epoch_us({stamp})"]
    if columns.created:
        newest.append(f"coalesce(epoch_us({quoted(columns.created)}), {-(2**63) + 1})")
    newest.append("-file_row_number")
    order = ", ".join(f"k{i} := {expression}" for i, expression in enumerate(newest))
    # Two reads of the file: the keys and times alone pick each entity's newest row, then only those
    # rows are read whole. Ordering every row with its values (a window over a source of lists, the
    # recent-activity state) costs several times more than reading them.
    query = f"""
        WITH chosen AS (
            SELECT arg_max(file_row_number, struct_pack({order})) AS __row
            FROM read_parquet(?, file_row_number = true)
            WHERE epoch_us({stamp}) BETWEEN ? AND ?
            GROUP BY {", ".join(quoted(k) for k in columns.keys)}
        )
        SELECT {", ".join(quoted(c) for c in wanted)}
        FROM read_parquet(?, file_row_number = true) AS source
        SEMI JOIN chosen ON source.file_row_number = chosen.__row
    """
    with tempfile.TemporaryDirectory(prefix="ctr-materialize-") as spill:
        connection = duckdb.connect(config={"memory_limit": f"{memory_mb}MB", "temp_directory": spill})
        try:
            connection.execute("SET TimeZone = 'UTC'")
            connection.execute("SET preserve_insertion_order = false")
            bounds = [_epoch_us(start), _epoch_us(end)]
            # A relation, not a DB-API result, so that DuckDB streams the rows instead of copying them all.
            params = [str(path), *bounds, str(path)]
            reader = connection.sql(query, params=params).to_arrow_reader(batch_rows)
            for batch in reader:
                if batch.num_rows:
                    yield batch
        finally:
            connection.close()


def _epoch_us(when: datetime) -> int:
    delta = when.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --- writers ---------------------------------------------------------------------------------------


def _writer(store: FeatureStore, view: FeatureView, columns: _Columns) -> Callable[[pa.RecordBatch], int]:
    """A function writing one batch into the store's online store; returns the rows written."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    provider = store._get_provider()
    if isinstance(provider.online_store, RedisOnlineStore):
        return _RedisWriter(store, view, columns)
    return _FeastWriter(store, view)


class _FeastWriter:
    """Feast's own conversion and the provider's online_write_batch, one batch at a time."""

    def __init__(self, store: FeatureStore, view: FeatureView) -> None:
        self.store, self.view = store, view
        self.provider = store._get_provider()
        self.join_keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}

    def __call__(self, batch: pa.RecordBatch) -> int:
        rows = _feast_rows(batch, self.view, self.join_keys)
        self.provider.online_write_batch(self.store.config, self.view, rows, progress=None)
        return len(rows)


def _feast_rows(batch: pa.RecordBatch, view: FeatureView, join_keys: dict) -> list:
    """Feast's own conversion of a batch into (entity key, values, timestamp, created) rows."""
    from feast.utils import _convert_arrow_to_proto

    return _convert_arrow_to_proto(batch, view, join_keys)


class _RedisWriter:
    """RedisOnlineStore.online_write_batch's writes, encoded per column: one HSET per entity of the
    `_ts:<view>` field and a murmur3 field per feature, in one pipeline per batch."""

    def __init__(self, store: FeatureStore, view: FeatureView, columns: _Columns) -> None:
        from feast.infra.online_stores.helpers import _mmh3
        from feast.infra.online_stores.redis import _versioned_fv_name

        self.store, self.view, self.columns = store, view, columns
        self.config = store.config
        online = store._get_provider().online_store
        self.client = online._get_client(self.config.online_store)
        name = _versioned_fv_name(view, self.config)
        self.ts_field = f"_ts:{name}"
        self.fields = [(f.name, _mmh3(f"{name}:{f.name}"), f.dtype.to_value_type()) for f in view.features]
        self.join_keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
        self.ttl = self.config.online_store.key_ttl_seconds
        self.check_stored = not self.config.online_store.skip_dedup

    def __call__(self, batch: pa.RecordBatch) -> int:
        keys = self._keys(batch)
        stamps, nanos = _timestamps(batch.column(self.columns.timestamp))
        values = [_encoded(batch.column(name), value_type) for name, _, value_type in self.fields]
        self._check_against_feast(batch, keys, stamps, values)
        keep = self._newer_than_stored(keys, nanos) if self.check_stored else repeat(True)
        interleaved = [repeat(self.ts_field), stamps]
        for (_, field, _), column in zip(self.fields, values, strict=True):
            interleaved += [repeat(field), column]
        commands: list[tuple] = []
        for key, *pairs in compress(zip(keys, *interleaved, strict=False), keep):
            commands.append(("HSET", key, *pairs))
            if self.ttl:
                commands.append(("EXPIRE", key, self.ttl))
        _pipelined(self.client, commands)
        written = len(commands) // (2 if self.ttl else 1)
        return written

    def _keys(self, batch: pa.RecordBatch) -> list[bytes]:
        """Feast's Redis keys (serialized entity key + project), per column for one Int64 join key."""
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.value_type import ValueType

        version = self.config.entity_key_serialization_version
        project = self.config.project
        (key, value_type), *others = self.join_keys.items()
        column = batch.column(key)
        if others or value_type != ValueType.INT64 or column.null_count:
            rows = _feast_rows(batch, self.view, self.join_keys)
            return [_redis_key(project, entity_key, version) for entity_key, *_ in rows]
        probe = _redis_key(project, EntityKey(join_keys=[key], entity_values=[Value(int64_val=0)]), version)
        suffix = project.encode("utf-8")
        prefix = probe[: len(probe) - 8 - len(suffix)]
        ids = np.ascontiguousarray(column.to_numpy(zero_copy_only=False), dtype="<i8")
        return _fixed_width([prefix, ids, suffix], len(ids))

    def _newer_than_stored(self, keys: list[bytes], nanos: np.ndarray) -> list[bool]:
        """Per row, whether its timestamp is newer than the entity's stored one (Feast skips the
        others: an older batch never overwrites a newer push)."""
        from google.protobuf.timestamp_pb2 import Timestamp

        stored = _pipelined(self.client, [("HGET", key, self.ts_field) for key in keys])
        parsed: dict[bytes, int] = {}
        for previous in set(stored) - {None, b""}:
            ts = Timestamp()
            ts.ParseFromString(previous)
            parsed[previous] = ts.seconds * 1_000_000_000 + ts.nanos
        return [
            not previous or new > parsed[previous]
            for previous, new in zip(stored, nanos.tolist(), strict=True)
        ]

    def _check_against_feast(self, batch, keys, stamps, values) -> None:
        """The batch's first row as Feast's own online_write_batch would encode it: equal, or fail."""
        from feast import utils
        from feast.infra.online_stores.helpers import _redis_key
        from google.protobuf.timestamp_pb2 import Timestamp

        entity_key, features, timestamp, _ = _feast_rows(batch.slice(0, 1), self.view, self.join_keys)[0]
        ts = Timestamp()
        ts.FromDatetime(utils.make_tzaware(timestamp))
        expected = [
            _redis_key(self.config.project, entity_key, self.config.entity_key_serialization_version),
            ts.SerializeToString(),
            *(features[name].SerializeToString() for name, _, _ in self.fields),
        ]
        ours = [keys[0], stamps[0], *(column[0] for column in values)]
        if ours != expected:
            raise RuntimeError(
                f"{self.view.name}: the Redis rows encoded here differ from Feast's own encoding; "
                "this Feast release needs Feast's own materialize (store.materialize)"
            )


def _pipelined(client: Any, commands: list[tuple]) -> list:
    """The replies to `commands`, sent in one pipeline. On a plain Redis or Sentinel client the
    commands are packed by hiredis and sent on one pooled connection at once (redis-py's Pipeline
    spends more per command than Redis does); a cluster client uses its own pipeline."""
    if not commands:
        return []
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()
    connection = pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands(commands))
        return [connection.read_response() for _ in commands]
    except BaseException:
        connection.disconnect()  # replies may be left unread: the connection is not reused as it is
        raise
    finally:
        pool.release(connection)


def _fixed_width(parts: list[Any], n: int) -> list[bytes]:
    """n byte strings, each the concatenation of `parts` (bytes constants or per-row arrays)."""
    widths = [len(p) if isinstance(p, bytes) else p.dtype.itemsize for p in parts]
    grid = np.empty((n, sum(widths)), dtype=np.uint8)
    at = 0
    for part, width in zip(parts, widths, strict=True):
        if isinstance(part, bytes):
            grid[:, at : at + width] = np.frombuffer(part, dtype=np.uint8)
        else:
            grid[:, at : at + width] = part.reshape(n, 1).view(np.uint8).reshape(n, width)
        at += width
    flat = grid.tobytes()
    width = grid.shape[1]
    return [flat[i : i + width] for i in range(0, n * width, width)]


def _timestamps(column: pa.Array) -> tuple[list[bytes], np.ndarray]:
    """Feast's serialized Timestamp of each row, and its nanoseconds since the epoch."""
    import pandas as pd
    from feast import utils
    from google.protobuf.timestamp_pb2 import Timestamp

    if column.null_count:
        raise ValueError("A row without an event timestamp cannot be materialized")
    micros = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    unique, inverse = np.unique(micros, return_inverse=True)
    encoded, nanos = [], []
    for value in unique.tolist():
        ts = Timestamp()
        ts.FromDatetime(utils.make_tzaware(pd.Timestamp(value, unit="us", tz="UTC").to_pydatetime()))
        encoded.append(ts.SerializeToString())
        nanos.append(ts.seconds * 1_000_000_000 + ts.nanos)
    return np.asarray(encoded, dtype=object)[inverse].tolist(), np.asarray(nanos, dtype=np.int64)[inverse]


# Value.float_val is field 6 of feast.types.Value, a fixed32: tag byte (6 << 3) | 5.
_FLOAT_TAG = bytes([(6 << 3) | 5])


def _encoded(column: pa.Array, value_type) -> list[bytes]:
    """Each row's serialized feast Value, as Feast's conversion writes it: float32 columns encoded
    as arrays; other scalars converted by Feast once per distinct value; the rest (lists) per row."""
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    if value_type == ValueType.FLOAT and pa.types.is_floating(column.type):
        values = column.cast(pa.float32()).to_numpy(zero_copy_only=False).astype("<f4")
        encoded = _fixed_width([_FLOAT_TAG, values], len(values))
        missing = np.isnan(values)
        for i in np.flatnonzero(missing).tolist():
            encoded[i] = b""
        return encoded
    values = column.to_numpy(zero_copy_only=False)
    kind = column.type
    scalar = pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_string(kind)
    if scalar and not column.null_count:
        unique, inverse = np.unique(values, return_inverse=True)
        protos = python_values_to_proto_values(unique, value_type)
        return np.asarray([p.SerializeToString() for p in protos], dtype=object)[inverse].tolist()
    return [p.SerializeToString() for p in python_values_to_proto_values(values, value_type)]


def _precompute_services(store: FeatureStore, views: list[str]) -> None:
    """What Feast's materialize does last: recompute the services marked to precompute online."""
    for service in store.list_feature_services():
        touched = {p.name for p in service.feature_view_projections} & set(views)
        if getattr(service, "precompute_online", False) and touched:
            try:
                store.precompute_feature_service(service.name)
            except Exception:  # as Feast: a failed precomputation does not fail the materialization
                log.warning("Failed to precompute vectors for service %r", service.name, exc_info=True)
