"""All configuration, read from environment variables with documented defaults.

Reading settings has no side effects: nothing is created, no URI is set globally. Every variable
is listed in `.env.example`; the embedded profile needs none of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

from feature_repo.contract import FEAST_YAML_VARIABLE, SHOP_TIMEZONE, effective_yaml_data_dir
from feature_repo.contract import data_dir as configured_data_dir
from models.paths import DataPaths

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_SHARED_EVENTS = PROJECT_ROOT.parent / "shared/data/taobao_userbehavior/userbehavior_user_slice.csv"
_SAMPLE_EVENTS = PROJECT_ROOT / "data/sample/userbehavior_user_slice.csv.gz"
# The shortest CTR_API_TOKEN / CTR_USER_ID_KEY accepted: shorter ones can be guessed.
MIN_SECRET_LENGTH = 16
# The variables that choose Feast's stores for the project. Each one that is set replaces its part of
# feature_store.yaml (models/features/store.py); unset, the file's value stands.
FEAST_STORE_VARIABLES = (
    "CTR_FEAST_REGISTRY",
    "CTR_FEAST_REGISTRY_TTL_S",
    "CTR_ONLINE_STORE",
    "CTR_REDIS_CONNECTION",
    "CTR_FEAST_ONLINE_STORE",
)


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a whole number") from exc


def _feast_yaml(feast_repo: Path, data_dir: Path) -> Path:
    """The feature_store.yaml the project reads: CTR_FEAST_YAML, else the file Feast's own
    FEAST_FS_YAML_FILE_PATH names (so that both read the same one), else the repo's. A file the
    project wrote for a data dir (models/features/store.py) is its output, never its input."""
    default = feast_repo / "feature_store.yaml"
    chosen = _env("CTR_FEAST_YAML", "")
    named = _env(FEAST_YAML_VARIABLE, "")
    if named and effective_yaml_data_dir(named) is not None:
        named = ""
    if chosen and named and Path(chosen).resolve() != Path(named).resolve():
        raise ValueError(
            f"CTR_FEAST_YAML={chosen} and {FEAST_YAML_VARIABLE}={named} name different files: the feast "
            f"CLI would read other stores than the project. Set one of them, or point "
            f"{FEAST_YAML_VARIABLE} at the file the project writes, {DataPaths.under(data_dir).feast_yaml}"
        )
    path = Path(chosen or named or default).resolve()
    if not path.is_file():
        variable = "CTR_FEAST_YAML" if chosen else FEAST_YAML_VARIABLE if named else "CTR_FEAST_REPO"
        raise ValueError(f"{variable}: no feature_store.yaml at {path}")
    return path


def _timestamp(name: str, default: str) -> datetime:
    raw = _env(name, default)
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not an ISO-8601 timestamp") from exc
    if value.tzinfo is None:
        raise ValueError(f"{name}={raw!r} needs a UTC offset, e.g. 2017-11-25T00:00:00+08:00")
    return value


@dataclass(frozen=True)
class Settings:
    """One snapshot of the environment; build it with `get_settings()`."""

    data_dir: Path
    paths: DataPaths  # every path under the data dir (models/paths.py)
    raw_events: Path
    window_start: datetime
    window_end: datetime
    valid_start: datetime
    test_start: datetime
    timezone: str
    max_bad_row_fraction: float
    ingest_batch_rows: int  # rows read, validated and written at a time by ingest and validate
    feast_repo: Path
    feast_yaml: Path  # the feature_store.yaml the project starts from (models/features/store.py)
    mlflow_tracking_uri: str
    experiment: str
    xgb_model_name: str
    wide_deep_model_name: str
    served_model_name: str
    promotion_min_auc_gain: float
    max_calibration_error: float
    max_prediction_bias: float
    scoring_budget_ms: float
    baseline_rows: int
    diagnostic_rows: int
    max_candidates: int
    max_recommendations: int
    challenger_share: float
    model_reload_s: float
    ranker_workers: int
    feature_timeout_ms: float
    http_keep_alive_s: int
    item_cache_ttl_s: float
    unknown_item_ttl_s: float
    item_cache_items: int
    warm_items: int
    device: str
    seed: int
    online_store: str
    redis_connection: str
    feast_registry: str  # a file path, or a URL Feast reads (s3://, gs://, postgresql://…)
    feast_registry_ttl_s: int
    feast_set: frozenset[str]  # the FEAST_STORE_VARIABLES set in the environment
    materialize_batch_rows: int  # entity rows per batch written to the online store
    materialize_memory_mb: int  # DuckDB's memory for picking each entity's newest row
    ingest_max_events: int
    ingest_url: str
    ingest_retry_s: float
    ingest_store_timeout_ms: float
    service_url: str
    alert_webhook: str
    monitor_max_psi: float
    monitor_min_coverage: float
    monitor_min_online_auc: float
    monitor_max_fallback_share: float
    monitor_min_requests: int
    # Secrets: kept out of repr() so that printing or logging settings never shows them.
    api_token: str = field(repr=False)
    user_id_key: str = field(repr=False)
    promotion_key: str = field(repr=False)
    max_request_bytes: int
    ingest_max_request_bytes: int
    # DuckDB's limits for the batch feature job and the candidate build: memory cap, threads, spill folder.
    duckdb_memory_limit: str
    duckdb_threads: int
    duckdb_temp_dir: Path
    duckdb_max_temp_size: str | None = None  # most it may spill there (DuckDB's size syntax)
    # The training set: negatives of the training and validation days kept at this rate (1.0: all),
    # and labelled views joined through Feast at most this many at a time.
    negative_sample_rate: float = 1.0
    training_chunk_rows: int = 200_000
    # How the training set joins features point-in-time: "duckdb" (ASOF joins planned from the
    # FeatureService, models/features/point_in_time.py) or "feast" (get_historical_features).
    training_join: str = "duckdb"
    # The engine of the batch stages: "local" (DuckDB in this process) or "spark" (Spark jobs on
    # CTR_SPARK_MASTER with the CTR_SPARK_CONF settings, models/spark.py).
    engine: str = "local"
    spark_master: str = "local[2]"
    spark_conf: tuple[tuple[str, str], ...] = ()

    # Paths under the data dir, by their older names; `paths` has them all.
    @property
    def lake_dir(self) -> Path:
        return self.paths.lake

    @property
    def quarantine_dir(self) -> Path:
        return self.paths.quarantine

    @property
    def gx_dir(self) -> Path:
        return self.paths.gx

    @property
    def datasets_dir(self) -> Path:
        return self.paths.datasets

    @property
    def models_dir(self) -> Path:
        return self.paths.models

    @property
    def airflow_home(self) -> Path:
        return self.paths.airflow

    @property
    def serving_log_dir(self) -> Path:
        return self.paths.serving_log

    @property
    def candidates_dir(self) -> Path:
        return self.paths.candidates

    @property
    def event_log_dir(self) -> Path:
        return self.paths.event_log

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.paths.mlflow_artifacts

    @cached_property
    def feast_online_store(self) -> str:
        """The `online_store:` mapping of feature_store.yaml, as one line of YAML.

        CTR_FEAST_ONLINE_STORE, when set, is used as it is (any store Feast supports); otherwise it
        follows CTR_ONLINE_STORE: SQLite under the data dir, or Redis at CTR_REDIS_CONNECTION.
        """
        explicit = _env("CTR_FEAST_ONLINE_STORE", "")
        if explicit:
            return explicit
        if self.online_store == "redis":
            return json.dumps({"type": "redis", "connection_string": self.redis_connection})
        return json.dumps({"type": "sqlite", "path": str(self.paths.feast_online_db)})

    def feast_variables(self) -> dict[str, str]:
        """The project's Feast settings with their values, defaults included: what each of the
        `${VARS}` of these names in a feature_store.yaml stands for."""
        return {
            "CTR_FEAST_REGISTRY": self.feast_registry,
            "CTR_FEAST_REGISTRY_TTL_S": str(self.feast_registry_ttl_s),
            "CTR_FEAST_ONLINE_STORE": self.feast_online_store,
            "CTR_REDIS_CONNECTION": self.redis_connection,
        }


def _spark_conf(text: str) -> tuple[tuple[str, str], ...]:
    """CTR_SPARK_CONF's space-separated key=value pairs, in order."""
    pairs = []
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("spark.") or not value:
            raise ValueError(
                f"CTR_SPARK_CONF: {item!r} is not a Spark setting: expected space-separated "
                "spark.name=value pairs, e.g. spark.executor.memory=4g"
            )
        pairs.append((key, value))
    return tuple(pairs)


def default_raw_events() -> Path:
    """The shared Taobao slice when present, else the copy committed under data/sample/."""
    return _SHARED_EVENTS if _SHARED_EVENTS.exists() else _SAMPLE_EVENTS


def get_settings() -> Settings:
    data_dir = configured_data_dir()  # CTR_DATA_DIR, read as the feature repo reads it
    default = DataPaths.under(data_dir)
    # Folders a variable of their own moves out of the data dir.
    paths = DataPaths.under(
        data_dir,
        serving_log=Path(_env("CTR_SERVING_LOG", str(default.serving_log))).resolve(),
        candidates=Path(_env("CTR_CANDIDATES_DIR", str(default.candidates))).resolve(),
        event_log=Path(_env("CTR_EVENT_LOG", str(default.event_log))).resolve(),
        mlflow_artifacts=Path(_env("CTR_MLFLOW_ARTIFACTS", str(default.mlflow_artifacts))),
        airflow=Path(_env("AIRFLOW_HOME", str(default.airflow))),
    )
    feast_repo = Path(_env("CTR_FEAST_REPO", str(PROJECT_ROOT / "feature_repo"))).resolve()
    feast_yaml = _feast_yaml(feast_repo, data_dir)
    ingest_max_events = int(_env("CTR_INGEST_MAX_EVENTS", "10000"))
    settings = Settings(
        data_dir=data_dir,
        paths=paths,
        raw_events=Path(_env("CTR_RAW_EVENTS", str(default_raw_events()))),
        # The dataset's official period, in Beijing time: 2017-11-25 .. 2017-12-03 inclusive.
        window_start=_timestamp("CTR_WINDOW_START", "2017-11-25T00:00:00+08:00"),
        window_end=_timestamp("CTR_WINDOW_END", "2017-12-04T00:00:00+08:00"),
        valid_start=_timestamp("CTR_VALID_START", "2017-12-01T00:00:00+08:00"),
        test_start=_timestamp("CTR_TEST_START", "2017-12-02T00:00:00+08:00"),
        timezone=_env("CTR_TIMEZONE", SHOP_TIMEZONE),
        max_bad_row_fraction=float(_env("CTR_MAX_BAD_ROW_FRACTION", "0.01")),
        # Ingest and validate take a day's rows this many at a time, so their memory is bounded by
        # it (about 1 GB per million rows), not by the day; the verdict is still the whole day's.
        ingest_batch_rows=_integer("CTR_INGEST_BATCH_ROWS", _env("CTR_INGEST_BATCH_ROWS", "1000000")),
        feast_repo=feast_repo,
        feast_yaml=feast_yaml,
        mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{paths.mlflow_db}"),
        experiment=_env("CTR_EXPERIMENT", "ctr-ranking"),
        xgb_model_name=_env("CTR_XGB_MODEL_NAME", "ctr-xgboost"),
        wide_deep_model_name=_env("CTR_WIDE_DEEP_MODEL_NAME", "ctr-wide-deep"),
        # The registered model the ranking service scores with (its `champion` alias).
        served_model_name=_env("CTR_SERVED_MODEL", _env("CTR_XGB_MODEL_NAME", "ctr-xgboost")),
        promotion_min_auc_gain=float(_env("CTR_PROMOTION_MIN_AUC_GAIN", "0.0")),
        # Sanity checks of the promotion gate: a model failing any one is never promoted.
        max_calibration_error=float(_env("CTR_MAX_CALIBRATION_ERROR", "0.02")),
        max_prediction_bias=float(_env("CTR_MAX_PREDICTION_BIAS", "1.5")),
        scoring_budget_ms=float(_env("CTR_SCORING_BUDGET_MS", "50")),
        # Evaluation scores every test row, block by block; these bound what it holds whole: the
        # training rows the baselines are fitted on, and the test rows of the plots, importances
        # and the registered artifact's check (seeded samples when there are more).
        baseline_rows=int(_env("CTR_BASELINE_ROWS", "1000000")),
        diagnostic_rows=int(_env("CTR_DIAGNOSTIC_ROWS", "50000")),
        max_candidates=int(_env("CTR_MAX_CANDIDATES", "500")),
        max_recommendations=int(_env("CTR_MAX_RECOMMENDATIONS", "100")),
        # Share of users (stable hash of the user id) scored by the `challenger` alias, when one exists.
        challenger_share=float(_env("CTR_CHALLENGER_SHARE", "0.1")),
        model_reload_s=float(_env("CTR_MODEL_RELOAD_S", "15")),
        # Processes of `ctr serve`: each holds its models and item cache and reloads on its own
        # tick; one Python process ranks a request at a time per core it can hold the GIL on.
        ranker_workers=_integer("CTR_RANKER_WORKERS", _env("CTR_RANKER_WORKERS", "1")),
        feature_timeout_ms=float(_env("CTR_FEATURE_TIMEOUT_MS", "200")),
        # `ctr serve` and `ctr ingest` keep an idle client connection open this long. It must exceed
        # the idle timeout of any proxy pooling connections to them (nginx, cloud load balancers:
        # often 60 s): uvicorn's own 5 s lets the server close a connection as a request arrives on it.
        http_keep_alive_s=int(_env("CTR_HTTP_KEEP_ALIVE_S", "75")),
        # Item features change only when a batch is materialized, and the ranker empties its item
        # cache when the registry records one; this bounds the age of a cached row all the same.
        item_cache_ttl_s=float(_env("CTR_ITEM_CACHE_TTL_S", "600")),
        # An item the store has no row for is read again after this long (at most the TTL above), so
        # that a store filled while the ranker runs (a materialization) is served within seconds.
        unknown_item_ttl_s=float(_env("CTR_UNKNOWN_ITEM_TTL_S", "2")),
        # Items whose rows each ranker process keeps, ~300 bytes each with the shipped features: the
        # share of a request's candidates it finds cached grows with it.
        item_cache_items=_integer("CTR_ITEM_CACHE_ITEMS", _env("CTR_ITEM_CACHE_ITEMS", "1000000")),
        # The most popular items are re-read ahead of their expiry, so requests rarely miss them.
        warm_items=int(_env("CTR_WARM_ITEMS", "1000")),
        device=_env("CTR_DEVICE", "auto"),
        seed=int(_env("CTR_SEED", "42")),
        online_store=_env("CTR_ONLINE_STORE", "sqlite").lower(),
        redis_connection=_env("CTR_REDIS_CONNECTION", "127.0.0.1:6379"),
        feast_registry=_env("CTR_FEAST_REGISTRY", str(paths.feast_registry)),
        feast_registry_ttl_s=_integer("CTR_FEAST_REGISTRY_TTL_S", _env("CTR_FEAST_REGISTRY_TTL_S", "10")),
        feast_set=frozenset(name for name in FEAST_STORE_VARIABLES if _env(name, "")),
        # Materialization (models/features/materialize.py) holds one batch of rows at a time, and
        # DuckDB at most this much memory (it spills to a temporary folder beyond), at any size.
        materialize_batch_rows=_integer(
            "CTR_MATERIALIZE_BATCH_ROWS", _env("CTR_MATERIALIZE_BATCH_ROWS", "50000")
        ),
        materialize_memory_mb=_integer(
            "CTR_MATERIALIZE_MEMORY_MB", _env("CTR_MATERIALIZE_MEMORY_MB", "2048")
        ),
        ingest_max_events=ingest_max_events,
        ingest_url=_env("CTR_INGEST_URL", "http://127.0.0.1:3001"),
        # Events taken while the online store was down are logged, then applied this often until it is back.
        ingest_retry_s=float(_env("CTR_INGEST_RETRY_S", "2")),
        # An online-store read or push of the ingest service that takes longer counts as the store being down.
        ingest_store_timeout_ms=float(_env("CTR_INGEST_STORE_TIMEOUT_MS", "2000")),
        # The running ranker the deployment DAG tells to reload; empty: none to tell.
        service_url=_env("CTR_SERVICE_URL", ""),
        # Failed tasks and crossed monitoring thresholds are POSTed here as JSON; empty: log and file only.
        alert_webhook=_env("CTR_ALERT_WEBHOOK", ""),
        # The daily monitoring run alerts when a served feature drifts past this PSI from training,
        # too little of the catalogue is served, a variant's online AUC is too low, too many
        # requests fall back to popularity, or fewer requests than this were served (0 turns that
        # check off). A PSI above 0.25 is the usual reading of a real population shift.
        # models/monitoring/readout.py reads these as `Thresholds.from_settings`.
        monitor_max_psi=float(_env("CTR_MONITOR_MAX_PSI", "0.25")),
        monitor_min_coverage=float(_env("CTR_MONITOR_MIN_COVERAGE", "0.01")),
        monitor_min_online_auc=float(_env("CTR_MONITOR_MIN_ONLINE_AUC", "0.55")),
        monitor_max_fallback_share=float(_env("CTR_MONITOR_MAX_FALLBACK_SHARE", "0.05")),
        monitor_min_requests=int(_env("CTR_MONITOR_MIN_REQUESTS", "1")),
        # Bearer token the write endpoints (ingest POST /events, ranker POST /reload) require; empty: open.
        api_token=_env("CTR_API_TOKEN", ""),
        # Key of the user-id pseudonyms (models/data/privacy.py); empty: user ids are kept as the
        # shop sends them.
        user_id_key=_env("CTR_USER_ID_KEY", ""),
        # HMAC key of the promotion gate's record on each version it admits, which the ranker checks
        # before serving a version (models/registry.py); empty: a key file beside the embedded SQLite
        # registry, made on first use. Required with an MLflow tracking server.
        promotion_key=_env("CTR_PROMOTION_KEY", ""),
        # Larger request bodies get a 413 before they are parsed: the ranker's, and the ingest
        # service's (by default room for CTR_INGEST_MAX_EVENTS events of up to 512 bytes each).
        max_request_bytes=int(_env("CTR_MAX_REQUEST_BYTES", str(2**20))),
        ingest_max_request_bytes=int(
            _env("CTR_INGEST_MAX_REQUEST_BYTES", str(max(2**20, 512 * ingest_max_events)))
        ),
        # The batch feature job and the candidate build run on DuckDB within this much memory
        # (DuckDB's own size syntax, e.g. 4GB or 75%), spilling beyond it to CTR_DUCKDB_TEMP_DIR,
        # with this many threads.
        duckdb_memory_limit=_env("CTR_DUCKDB_MEMORY_LIMIT", "4GB"),
        duckdb_threads=_integer("CTR_DUCKDB_THREADS", _env("CTR_DUCKDB_THREADS", str(os.cpu_count() or 1))),
        duckdb_temp_dir=Path(_env("CTR_DUCKDB_TEMP_DIR", str(data_dir / "tmp/duckdb"))).resolve(),
        # A cap on that spill (e.g. 20GB): a run that would pass it fails instead of filling the disk.
        duckdb_max_temp_size=_env("CTR_DUCKDB_MAX_TEMP_SIZE", "") or None,
        # Negative downsampling of the training set's training and validation days (never the test
        # days), deterministic for CTR_SEED; the models' probabilities are corrected for it inside
        # the saved models. 1.0 keeps every row. The Feast join takes CTR_TRAINING_CHUNK_ROWS
        # labelled views at a time on a DuckDB held to CTR_DUCKDB_MEMORY_LIMIT, which bounds the
        # build's memory (one 100,000-view chunk of 10 M SYNTHETIC events: ~3 GiB).
        negative_sample_rate=float(_env("CTR_NEGATIVE_SAMPLE_RATE", "1.0")),
        training_chunk_rows=_integer("CTR_TRAINING_CHUNK_ROWS", _env("CTR_TRAINING_CHUNK_ROWS", "200000")),
        # duckdb: the service's views joined by DuckDB ASOF joins from their files, the on-demand
        # views by their own transformations: the same rows and values as Feast's DuckDB offline
        # store, with time and memory that grow with the rows rather than rows x rows per entity.
        # feast: Feast's get_historical_features (any offline store).
        training_join=_env("CTR_TRAINING_JOIN", "duckdb"),
        # local: every batch stage on this machine (DuckDB); spark: the feature job (and the stages
        # that follow it onto Spark) as Spark jobs on CTR_SPARK_MASTER: local[N] runs Spark inside
        # this machine, spark://host:7077 a standalone cluster, k8s://... Kubernetes. CTR_SPARK_CONF
        # adds Spark settings as space-separated key=value pairs, e.g.
        # "spark.executor.memory=4g spark.sql.shuffle.partitions=64"; Spark's own spark-defaults.conf
        # (SPARK_CONF_DIR) applies too.
        engine=_env("CTR_ENGINE", "local").lower(),
        spark_master=_env("CTR_SPARK_MASTER", "local[2]"),
        spark_conf=_spark_conf(_env("CTR_SPARK_CONF", "")),
    )
    if settings.engine not in ("local", "spark"):
        raise ValueError(f"CTR_ENGINE={settings.engine!r}: expected local or spark")
    if settings.training_join not in ("duckdb", "feast"):
        raise ValueError(f"CTR_TRAINING_JOIN={settings.training_join!r}: expected duckdb or feast")
    if settings.online_store not in ("sqlite", "redis"):
        raise ValueError(f"CTR_ONLINE_STORE={settings.online_store!r}: expected sqlite or redis")
    if settings.ingest_batch_rows < 1:
        raise ValueError(f"CTR_INGEST_BATCH_ROWS={settings.ingest_batch_rows}: expected 1 or more")
    if settings.ranker_workers < 1:
        raise ValueError(f"CTR_RANKER_WORKERS={settings.ranker_workers}: expected 1 or more")
    if settings.feast_registry_ttl_s < 0:
        raise ValueError(f"CTR_FEAST_REGISTRY_TTL_S={settings.feast_registry_ttl_s}: expected 0 or more")
    if "CTR_FEAST_ONLINE_STORE" in settings.feast_set:
        _check_online_store_mapping(_env("CTR_FEAST_ONLINE_STORE", ""))
    if not 0.0 <= settings.challenger_share <= 1.0:
        raise ValueError(f"CTR_CHALLENGER_SHARE={settings.challenger_share}: expected a share in [0, 1]")
    if settings.user_id_key and len(settings.user_id_key) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"CTR_USER_ID_KEY is too short: use at least {MIN_SECRET_LENGTH} random characters, "
            "e.g. from `python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    if settings.api_token and len(settings.api_token) < MIN_SECRET_LENGTH:
        raise ValueError(f"CTR_API_TOKEN is too short: use at least {MIN_SECRET_LENGTH} random characters")
    if settings.promotion_key and len(settings.promotion_key) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"CTR_PROMOTION_KEY is too short: use at least {MIN_SECRET_LENGTH} random characters"
        )
    for name, value in (
        ("CTR_ITEM_CACHE_TTL_S", settings.item_cache_ttl_s),
        ("CTR_UNKNOWN_ITEM_TTL_S", settings.unknown_item_ttl_s),
    ):
        if value < 0:
            raise ValueError(f"{name}={value:g}: expected 0 or more seconds")
    for name, value in (
        ("CTR_ITEM_CACHE_ITEMS", settings.item_cache_items),
        ("CTR_MATERIALIZE_BATCH_ROWS", settings.materialize_batch_rows),
        ("CTR_MATERIALIZE_MEMORY_MB", settings.materialize_memory_mb),
    ):
        if value <= 0:
            raise ValueError(f"{name}={value}: expected a positive number")
    if not 0.0 < settings.negative_sample_rate <= 1.0:
        rate = settings.negative_sample_rate
        raise ValueError(f"CTR_NEGATIVE_SAMPLE_RATE={rate:g}: expected a rate in (0, 1]")
    if settings.training_chunk_rows <= 0:
        chunk = settings.training_chunk_rows
        raise ValueError(f"CTR_TRAINING_CHUNK_ROWS={chunk}: expected a positive number")
    if settings.http_keep_alive_s <= 0:
        raise ValueError(f"CTR_HTTP_KEEP_ALIVE_S={settings.http_keep_alive_s}: expected a positive number")
    for name, value in (
        ("CTR_MAX_REQUEST_BYTES", settings.max_request_bytes),
        ("CTR_INGEST_MAX_REQUEST_BYTES", settings.ingest_max_request_bytes),
    ):
        if value <= 0:
            raise ValueError(f"{name}={value}: expected a positive number of bytes")
    if not settings.window_start < settings.valid_start < settings.test_start < settings.window_end:
        raise ValueError(
            "Expected CTR_WINDOW_START < CTR_VALID_START < CTR_TEST_START < CTR_WINDOW_END, got "
            f"{settings.window_start} / {settings.valid_start} / "
            f"{settings.test_start} / {settings.window_end}"
        )
    return settings


def _check_online_store_mapping(raw: str) -> None:
    import yaml

    try:
        mapping = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"CTR_FEAST_ONLINE_STORE is not valid YAML: {exc}") from exc
    if not isinstance(mapping, dict) or "type" not in mapping:
        raise ValueError(
            f"CTR_FEAST_ONLINE_STORE={raw!r}: expected an online_store mapping with a type, "
            'e.g. {type: redis, connection_string: "redis:6379"}'
        )


CELERY_EXECUTOR = "CeleryExecutor"
# Where the Celery profile's broker is unless AIRFLOW__CELERY__BROKER_URL says otherwise: a local
# redis-server, database 0 (the Feast online store, when in the same Redis, uses another).
DEFAULT_CELERY_BROKER = "redis://127.0.0.1:6379/0"
# Airflow records for a task the host that `[core] hostname_callable` names; the Celery profile's
# callable answers CTR_WORKER_NAME, so two workers on one machine are told apart.
WORKER_HOSTNAME_CALLABLE = "models.ops.celery_workers.worker_hostname"
# The embedded profile's scheduler, DAG processor, API server and a user's `airflow` commands all
# write the one SQLite metadata file. A writer waits this long for another's lock before SQLite
# answers "database is locked" (Python's default is 5 s, which a busy scheduler outlasts).
AIRFLOW_SQLITE_BUSY_TIMEOUT_S = 60.0
AIRFLOW_SQLITE_CONNECT_ARGS = {"timeout": AIRFLOW_SQLITE_BUSY_TIMEOUT_S}


def worker_name() -> str:
    """CTR_WORKER_NAME: the name this Celery worker goes by (its `--celery-hostname`); empty for
    every other process, which then goes by its machine's name."""
    return _env("CTR_WORKER_NAME", "")


def airflow_environment(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for running Airflow on this project; values already set in `environ` win.

    Embedded profile: SQLite metadata DB under the data dir, whose writers wait for each other's
    locks (AIRFLOW_SQLITE_BUSY_TIMEOUT_S), the project's dags/ folder, API server on loopback.
    Set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN and AIRFLOW__CORE__EXECUTOR for
    Postgres and Celery. With AIRFLOW__CORE__EXECUTOR=CeleryExecutor the Celery profile's
    defaults are added: the broker (AIRFLOW__CELERY__BROKER_URL, a local Redis), the result
    backend in the metadata DB (AIRFLOW__CELERY__RESULT_BACKEND = db+ the metadata DB's URL),
    queue `default` for every task not sent elsewhere, 4 tasks at a time per worker, and the
    worker names as the hosts Airflow records.
    """
    environ = dict(os.environ if environ is None else environ)
    defaults = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    }
    if (environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").strip() or "sqlite").startswith("sqlite"):
        for key in ("SQL_ALCHEMY_CONNECT_ARGS", "SQL_ALCHEMY_CONNECT_ARGS_ASYNC"):
            defaults[f"AIRFLOW__DATABASE__{key}"] = "models.settings.AIRFLOW_SQLITE_CONNECT_ARGS"
    if environ.get("AIRFLOW__CORE__EXECUTOR", "").strip() == CELERY_EXECUTOR:
        defaults.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": DEFAULT_CELERY_BROKER,
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": WORKER_HOSTNAME_CALLABLE,
            }
        )
        metadata_db = environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").strip()
        if metadata_db:
            defaults["AIRFLOW__CELERY__RESULT_BACKEND"] = f"db+{metadata_db}"
    return {**environ, **{k: v for k, v in defaults.items() if not environ.get(k)}}
