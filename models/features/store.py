"""The project's use of Feast: apply the repo, write its offline sources, materialize, read lists.

Feast stays the one reader and writer of the stores; this module only chooses what to call.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from feature_repo.contract import (
    DEFAULT_DATA_DIR,
    EFFECTIVE_YAML_MARKER,
    FEAST_YAML_VARIABLE,
    effective_yaml_data_dir,
)
from models.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore
    from feast.repo_config import RepoConfig

    from models.features.materialize import ViewMaterialized

logger = logging.getLogger(__name__)


# A `${VAR}` or `$VAR` in a feature_store.yaml, as Feast's os.path.expandvars finds them.
_REFERENCE = re.compile(r"\$(\w+)|\$\{([^}]*)\}")


def _reference(name: str) -> str:
    return "${" + name + "}"


def _is_local(path: object) -> bool:
    return isinstance(path, str) and bool(path) and "://" not in path and "$" not in path


def _local_path(settings: Settings, path: str) -> str:
    """A local path of the file as Feast resolves it (relative to the repo); one under the default
    data dir var/ moves to the configured data dir, as every default path of the project.

    A path that stays is kept as the file writes it: Feast records the online store's path as
    given, in the registry, and `feast apply` treats another spelling of the same file as a moved
    store (it drops the tables there). So the project and the plain CLI must spell it alike."""
    where = (Path(path) if Path(path).is_absolute() else settings.feast_repo / path).resolve()
    if where.is_relative_to(DEFAULT_DATA_DIR) and settings.data_dir != DEFAULT_DATA_DIR:
        return str(settings.data_dir / where.relative_to(DEFAULT_DATA_DIR))
    return path


def _online_store(settings: Settings, current: object) -> object:
    """The online_store the set variables choose, from the file's `current` one."""
    chosen = settings.feast_set
    if "CTR_FEAST_ONLINE_STORE" in chosen:
        return _reference("CTR_FEAST_ONLINE_STORE")
    mapping = dict(current) if isinstance(current, dict) else None
    kind = settings.online_store
    if "CTR_ONLINE_STORE" in chosen and (mapping is None or mapping.get("type", "sqlite") != kind):
        mapping = {"type": kind}  # another kind of store: none of the file's options apply
    if mapping is None:
        return current
    kind = mapping.get("type", "sqlite")
    if kind == "redis":
        if "CTR_REDIS_CONNECTION" in chosen:
            mapping["connection_string"] = _reference("CTR_REDIS_CONNECTION")
        else:
            mapping.setdefault("connection_string", settings.redis_connection)
    elif kind == "sqlite":
        path = mapping.get("path")
        if path is None:
            mapping["path"] = str(settings.paths.feast_online_db)
        elif _is_local(path):
            mapping["path"] = _local_path(settings, path)
    return mapping


def effective_yaml(settings: Settings) -> str:
    """The feature_store.yaml of the project's stores, as the text Feast reads.

    It is `settings.feast_yaml` (the repo's file, unless CTR_FEAST_YAML or FEAST_FS_YAML_FILE_PATH
    name another) with
    * its local registry and SQLite paths made absolute, those under the default data dir var/
      moved to CTR_DATA_DIR;
    * each store variable that is set in place of its part of the file: CTR_FEAST_REGISTRY the file
      registry's path, CTR_FEAST_REGISTRY_TTL_S its cache TTL, CTR_FEAST_ONLINE_STORE the whole
      online_store, else CTR_ONLINE_STORE its kind (SQLite in the data dir, or Redis) and
      CTR_REDIS_CONNECTION a Redis store's connection string;
    * a `${VAR}` of one of those settings that is not set replaced by the setting's default.
    A variable the environment sets is written as a `${VAR}` reference, as the file's other
    variables are kept: Feast fills them in from the environment when it loads the file, so no
    secret is copied into it.
    """
    import yaml

    defaults = {k: v for k, v in settings.feast_variables().items() if k not in settings.feast_set}

    def default(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return defaults.get(name, match.group(0))

    source = settings.feast_yaml
    config = yaml.safe_load(_REFERENCE.sub(default, source.read_text()))
    if not isinstance(config, dict):
        raise ValueError(f"{source} is not a feature_store.yaml (a mapping of Feast settings)")
    registry = config.get("registry")
    registry = {"path": registry} if isinstance(registry, str) else dict(registry or {})
    if registry.get("registry_type", "file") == "file":
        if "CTR_FEAST_REGISTRY" in settings.feast_set:
            registry["path"] = _reference("CTR_FEAST_REGISTRY")
        elif _is_local(registry.get("path")):
            registry["path"] = _local_path(settings, registry["path"])
    if "CTR_FEAST_REGISTRY_TTL_S" in settings.feast_set:
        registry["cache_ttl_seconds"] = _reference("CTR_FEAST_REGISTRY_TTL_S")
    config["registry"] = registry
    config["online_store"] = _online_store(settings, config.get("online_store"))
    header = [
        f"{EFFECTIVE_YAML_MARKER}{settings.data_dir}",
        f"# Written by the project from {source}, with the stores its environment chose.",
        "# Feast's CLI, FeatureStore(repo_path=...) and `feast serve` read the project's stores through it:",
        f"#   export {FEAST_YAML_VARIABLE}={settings.paths.feast_yaml}",
        "# What the environment set is left as a reference, filled in by Feast when it loads the file.",
        "# Rewritten by `ctr feast-yaml`, `ctr feast ...` and the apply_features stage: do not edit.",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False)


def expand(text: str, source: Path) -> str:
    """`text` with its `${VARS}` filled in from the environment, as Feast does; a variable that is
    not set is an error naming it (Feast would pass the `${VAR}` on as a value)."""
    missing = sorted(
        {
            m.group(1) or m.group(2)
            for line in text.splitlines()
            if not line.lstrip().startswith("#")
            for m in _REFERENCE.finditer(line)
            if not os.environ.get(m.group(1) or m.group(2), "").strip()
        }
    )
    if missing:
        raise ValueError(f"{source} needs {', '.join(missing)}, which the environment does not set")
    return os.path.expandvars(text)


def load_config(settings: Settings) -> RepoConfig:
    """The project's Feast configuration: effective_yaml() as Feast would load it."""
    import yaml
    from feast.repo_config import FeastConfigError, RepoConfig
    from pydantic import ValidationError

    text = effective_yaml(settings)
    try:
        config = RepoConfig(**yaml.safe_load(expand(text, settings.feast_yaml)))
    except ValidationError as exc:
        raise FeastConfigError(exc, settings.feast_yaml) from exc
    config.repo_path = settings.feast_repo
    _warn_if_feast_reads_another(settings, text)
    return config


def _warn_if_feast_reads_another(settings: Settings, text: str) -> None:
    """Feast's own tools in this environment would read other stores: say so (once per load)."""
    named = os.environ.get(FEAST_YAML_VARIABLE, "").strip()
    if not named or effective_yaml_data_dir(named) is None:
        return
    with contextlib.suppress(OSError):
        if Path(named).read_text() != text:
            logger.warning(
                "%s=%s was written for other stores than these settings choose (data dir %s): "
                "`export %s=$(ctr feast-yaml)` points Feast at these",
                FEAST_YAML_VARIABLE,
                named,
                settings.data_dir,
                FEAST_YAML_VARIABLE,
            )


@contextlib.contextmanager
def _without_feast_yaml_variable() -> Iterator[None]:
    """The project applies with its own configuration, not the file Feast's variable names: the feature
    repo's check of that variable (feature_repo/contract.py) is for Feast's CLI, so hide it here."""
    named = os.environ.pop(FEAST_YAML_VARIABLE, None)
    try:
        yield
    finally:
        if named is not None:
            os.environ[FEAST_YAML_VARIABLE] = named


def write_effective_yaml(settings: Settings) -> Path:
    """Write effective_yaml() to <data dir>/feast/feature_store.yaml (atomically, when it changed):
    the file FEAST_FS_YAML_FILE_PATH points Feast's own tools at. Returns its path."""
    text = effective_yaml(settings)
    expand(text, settings.feast_yaml)  # a missing variable fails here, not later in Feast
    target = settings.paths.feast_yaml
    with contextlib.suppress(OSError):
        if target.read_text() == text:
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(target)
    return target


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


def push_online(store: FeatureStore, push_source: str, frame: pd.DataFrame) -> None:
    """Write `frame` to the online store of every feature view the push source feeds: what
    `FeatureStore.push(..., to=PushMode.ONLINE)` writes, for a fraction of its cost.

    Feast 0.67's `push` ends by looking for feature services that precompute online vectors, and
    that lookup bypasses the registry cache: every push re-reads the registry file and replaces the
    cached copy, so that the next lookups rebuild every view from it. That was half an ingest call.
    None of this repo's services precompute, so the rest of `push` is all there is to do.
    """
    from feast.data_source import PushSource

    views = [*store.list_feature_views(allow_cache=True), *store.list_stream_feature_views(allow_cache=True)]
    fed = [
        view.name
        for view in views
        if isinstance(view.stream_source, PushSource) and view.stream_source.name == push_source
    ]
    if not fed:
        raise ValueError(f"no feature view reads the push source {push_source!r}")
    for name in fed:
        store.write_to_online_store(name, frame, allow_registry_cache=True)


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
    """`feast apply` on feature_repo/, in process; returns the feature services now registered.
    Writes the effective feature_store.yaml first, for Feast's own tools (write_effective_yaml)."""
    write_effective_yaml(settings)
    config = load_config(settings)
    _make_local_dirs(config, settings.feast_repo)
    with _without_feast_yaml_variable():
        _forget_sqlite_tables_elsewhere(config, settings.feast_repo)
        with _inside_repo(settings.feast_repo):
            _drop_views_of_another_kind(config, settings.feast_repo)
        with _inside_repo(settings.feast_repo):
            _apply_total(config, settings.feast_repo)
    store = open_store(settings)
    return sorted(service.name for service in store.list_feature_services())


def _apply_total(config: RepoConfig, repo: Path) -> None:
    """`feast apply`'s own steps, with each parsed view given the materialization intervals its
    registered copy holds. The registry keeps them through an apply anyway; without them, Feast 0.67
    takes every materialized view for changed and prints its whole data source, of which only the
    creation times differ, as an update."""
    from feast.repo_operations import (
        _get_repo_contents,
        _get_store_and_registry,
        apply_total_with_repo_instance,
    )

    os.chdir(repo)
    contents = _get_repo_contents(repo, config.project, config)
    store, registry = _get_store_and_registry(config)
    for view in [*contents.feature_views, *contents.stream_feature_views]:
        try:
            registered = registry.get_any_feature_view(view.name, config.project, allow_cache=False)
        except Exception:  # not registered yet, or a registry that cannot say
            continue
        view.materialization_intervals = list(getattr(registered, "materialization_intervals", []))
    print(f"Applying changes for project {config.project}")
    apply_total_with_repo_instance(store, config.project, registry, contents, skip_source_validation=True)


def _forget_sqlite_tables_elsewhere(config: RepoConfig, repo: Path) -> list[str]:
    """Forget, in the registry, SQLite tables recorded at another path than the configured store's.

    `feast apply` compares the tables it needs with those the registry records, by name; for one
    recorded at another path (a registry applied with the same file spelled another way, or copied
    from another data dir) Feast 0.67 drops the recorded table and creates nothing, so the online
    store would lose the table, or another data dir its rows. Forgotten, the table is created where
    the configuration says (CREATE TABLE IF NOT EXISTS: rows already there stay). Returns the
    tables forgotten."""
    from feast import FeatureStore
    from feast.infra.infra_object import Infra
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    if config.online_store is None or getattr(config.online_store, "type", "") != "sqlite":
        return []
    store = FeatureStore(repo_path=str(repo), config=config)
    path = SqliteOnlineStore._get_db_path(config)  # the path Feast records for the tables
    try:
        infra = store.registry.get_infra(config.project)
    except Exception:  # no registry yet
        return []
    kept, forgotten = [], []
    for obj in infra.infra_objects:
        (kept if getattr(obj, "path", path) == path else forgotten).append(obj)
    if forgotten:
        logger.info("registry: forgetting %d SQLite tables recorded outside %s", len(forgotten), path)
        store.registry.update_infra(Infra(infra_objects=kept), config.project, commit=True)
    return [obj.name for obj in forgotten]


def _drop_views_of_another_kind(config: RepoConfig, repo: Path) -> list[str]:
    """Feast refuses to change the kind of a registered view in one apply (ConflictingFeatureViewNames):
    a view the repo now declares as another kind (user_recent_activity, once a StreamFeatureView, is
    a FeatureView on its push source) is deleted from the registry first. Its online rows stay: the
    store keeps the table of a view that is applied again. Returns the views deleted."""
    from feast import FeatureStore
    from feast.errors import FeatureViewNotFoundException
    from feast.repo_operations import parse_repo

    contents = parse_repo(repo)
    declared = [*contents.feature_views, *contents.stream_feature_views, *contents.on_demand_feature_views]
    registry = FeatureStore(repo_path=str(repo), config=config).registry
    dropped = []
    for view in declared:
        try:
            registered = registry.get_any_feature_view(view.name, config.project, allow_cache=False)
        except FeatureViewNotFoundException:
            continue
        if type(registered) is not type(view):
            logger.info("%s changes from %s to %s", view.name, type(registered).__name__, type(view).__name__)
            registry.delete_feature_view(view.name, config.project, commit=True)
            dropped.append(view.name)
    return dropped


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
    with_microsecond_stamps(frame).to_parquet(partial, index=False)
    partial.replace(path)
    return path


def with_microsecond_stamps(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its time-zone-aware timestamps in microseconds, as the offline sources and the
    lake store them."""
    stamps = {
        c: frame[c].dt.as_unit("us") for c in frame.columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)
    }
    return frame.assign(**stamps)


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


def materialize(
    store: FeatureStore, start: datetime, end: datetime, *, batch_rows: int = 50_000, memory_mb: int = 2048
) -> list[ViewMaterialized]:
    """Load each online view's newest row per entity stamped in [start, end] into the online store
    and record the interval in the registry: what Feast's own materialize writes, read and written
    in batches of `batch_rows` so that memory stays flat at any size (models/features/materialize.py).
    Logs rows/s per view."""
    from models.features import materialize as batches

    return batches.materialize(store, start, end, batch_rows=batch_rows, duckdb_memory_mb=memory_mb)


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


def feature_service_rows(repo: Path) -> list[str]:
    """The README's rows for the repo's FeatureServices, written from the services themselves (as
    `feast apply` loads them), so the documented feature lists cannot drift from what is served:
    per service its entity keys and, per view, which of the view's features it takes."""
    from feast import OnDemandFeatureView
    from feast.repo_operations import parse_repo

    with _inside_repo(repo):
        contents = parse_repo(repo)
    views = {v.name: v for v in [*contents.feature_views, *contents.stream_feature_views]}
    on_demand = {v.name: v for v in contents.on_demand_feature_views}
    entities = {e.name: e.join_key for e in contents.entities}
    rows = []
    for service in contents.feature_services:
        keys: list[str] = []
        parts = []
        for projection in service.feature_view_projections:
            view = views.get(projection.name) or on_demand[projection.name]
            if isinstance(view, OnDemandFeatureView):
                for source in view.source_feature_view_projections.values():
                    keys += [entities[e] for e in views[source.name].entities]
                for request in view.source_request_sources.values():
                    keys += [field.name for field in request.schema]
            else:
                keys += [entities[e] for e in view.entities]
            taken = [f.name for f in projection.features]
            declared = [f.name for f in view.features]
            left_out = [name for name in declared if name not in taken]
            kind = "on demand: " if isinstance(view, OnDemandFeatureView) else ""
            if left_out:
                listed = ", ".join(f"`{name}`" for name in left_out)
                which = f"{len(taken)} of {len(declared)}, all but {listed}"
            else:
                which = f"all {len(taken)}"
            parts.append(f"`{projection.name}` ({kind}{which})")
        unique_keys = ", ".join(dict.fromkeys(keys))
        rows.append(f"| **`{service.name}`** | {unique_keys} | {'; '.join(parts)} |")
    return rows
