"""The project's use of Feast: apply the repo, write its offline sources, materialize, read lists.

Feast stays the one reader and writer of the stores; this module only chooses what to call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from models.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore
    from feast.repo_config import RepoConfig


def load_config(settings: Settings) -> RepoConfig:
    """feature_store.yaml with its ${VARS} filled in from the settings (stores, registry, cache TTL)."""
    import yaml
    from feast.repo_config import FeastConfigError, RepoConfig
    from pydantic import ValidationError

    try:
        config = RepoConfig(**yaml.safe_load(settings.feast_yaml_text()))
    except ValidationError as exc:
        raise FeastConfigError(exc, settings.feast_yaml) from exc
    config.repo_path = settings.feast_repo
    return config


def open_store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.feast_repo), config=load_config(settings))


def fail_fast(store: FeatureStore) -> FeatureStore:
    """For request paths: a Redis online store answers or fails at once. redis-py otherwise retries
    a refused or dropped connection with back-off for ~10 s, so a read outlives the caller's deadline
    and, after Redis restarts, keeps the caller's threads asleep well after it is back. Other online
    stores are left as they are."""
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType

    config = store.config.online_store
    if isinstance(config, RedisOnlineStoreConfig) and config.redis_type == RedisType.redis:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Feast keeps one client per online store; this sets the retry policy of its connections.
        client = store._get_provider().online_store._get_client(config)
        client.set_retry(Retry(NoBackoff(), 0))
    return store


@contextlib.contextmanager
def _inside_repo(repo: Path) -> Iterator[None]:
    """Feast imports repo files as top-level modules from the repo folder, as `feast apply` does.

    Undo the working-directory and import-path changes afterwards, and forget the repo's modules
    so the next apply in this process reads the files again.
    """
    cwd, path, modules = os.getcwd(), list(sys.path), set(sys.modules)
    sys.path.insert(0, str(repo))
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(str(repo)):
                del sys.modules[name]


def apply_repo(settings: Settings) -> list[str]:
    """`feast apply` on feature_repo/, in process; returns the feature services now registered."""
    from feast.repo_operations import apply_total

    config = load_config(settings)
    _make_local_dirs(config, settings.feast_repo)
    with _inside_repo(settings.feast_repo):
        apply_total(config, settings.feast_repo, skip_source_validation=True)
    store = open_store(settings)
    return sorted(service.name for service in store.list_feature_services())


def _make_local_dirs(config, repo: Path) -> None:
    """File registries and SQLite stores need their folder to exist; remote stores need nothing."""
    registry = getattr(config.registry, "path", "") or ""
    online = getattr(config.online_store, "path", None) if config.online_store else None
    for location in (registry, online):
        if location and "://" not in str(location):
            (repo / location).parent.mkdir(parents=True, exist_ok=True)


def source_path(store: FeatureStore, feature_view: str) -> Path:
    """Where a feature view's offline FileSource lives, as declared in feature_repo/data_sources.py."""
    from feast.errors import FeatureViewNotFoundException
    from feast.infra.offline_stores.file_source import FileSource

    try:
        view = store.get_feature_view(feature_view)
    except FeatureViewNotFoundException:
        view = store.get_stream_feature_view(feature_view)
    source = view.batch_source
    return Path(FileSource.get_uri_for_file_path(store.repo_path, source.path)).resolve()


def write_offline(frame: pd.DataFrame, path: Path) -> Path:
    """Replace an offline source atomically: a reader sees the old file or the new one, never half.

    Timestamps are stored with microsecond precision, which every offline store reads (DuckDB
    cannot cast nanosecond time-zone-aware timestamps).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    stamps = {
        c: frame[c].dt.as_unit("us") for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)
    }
    frame.assign(**stamps).to_parquet(partial, index=False)
    partial.replace(path)
    return path


def write_offline_batches(batches, schema, path: Path) -> Path:
    """Like write_offline, for a source produced in Arrow record batches (bounded memory)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with pq.ParquetWriter(partial, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    partial.replace(path)
    return path


def upsert_offline(table, path: Path, start: datetime, end: datetime, *, include_end: bool) -> int:
    """Replace the rows of an offline source stamped in [start, end] (or [start, end)) by `table`,
    atomically; returns the rows it wrote. A day's run owns exactly its stamps, so running it
    again, or running days out of order, gives the same file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from feature_repo.contract import EVENT_TIMESTAMP

    if isinstance(table, pd.DataFrame):
        stamps = {
            c: table[c].dt.as_unit("us")
            for c in table.columns
            if isinstance(table[c].dtype, pd.DatetimeTZDtype)
        }
        table = pa.Table.from_pandas(table.assign(**stamps), preserve_index=False)
    written = table.num_rows
    if path.exists():
        old = pq.read_table(path)
        stamp = old[EVENT_TIMESTAMP]
        lo = pa.scalar(pd.Timestamp(start).tz_convert("UTC"), stamp.type)
        hi = pa.scalar(pd.Timestamp(end).tz_convert("UTC"), stamp.type)
        after = pc.greater(stamp, hi) if include_end else pc.greater_equal(stamp, hi)
        old = old.filter(pc.or_(pc.less(stamp, lo), after))
        table = pa.concat_tables([old, table.select(old.column_names).cast(old.schema)])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.replace(path)
    return written


def materialize(store: FeatureStore, start: datetime, end: datetime) -> None:
    store.materialize(start_date=start, end_date=end)


def feature_names(service: FeatureService) -> list[str]:
    """The service's features in the order the models use them."""
    return [f.name for projection in service.feature_view_projections for f in projection.features]


def fingerprint(service: FeatureService) -> str:
    """A short hash of the service's name and feature list, recorded with every model trained on it."""
    payload = (
        service.name
        + "|"
        + ",".join(
            f"{projection.name}:{f.name}:{f.dtype}"
            for projection in service.feature_view_projections
            for f in projection.features
        )
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def historical_features(
    store: FeatureStore, entity_rows: pd.DataFrame, service: FeatureService
) -> pd.DataFrame:
    """Point-in-time join of `entity_rows` (keys + event_timestamp + anything else) with the service."""
    return store.get_historical_features(entity_df=entity_rows, features=service).to_df()


def online_features(
    store: FeatureStore, service: FeatureService, rows: list[dict[str, int]]
) -> dict[str, list]:
    return store.get_online_features(features=service, entity_rows=rows).to_dict()
