"""The pipeline's stages, wired: each reads its inputs, calls its stage's package for every step
and writes its outputs, returning a typed summary (models.stage_results). Airflow tasks, the CLI
and the tests all call these; the work itself lives in models.data, models.features,
models.retrieval, models.training, models.evaluation and models.monitoring. One short function per
stage, read top to bottom in the order a full run takes them: hence its length.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import pandas as pd

from feature_repo.contract import (
    BEHAVIOR,
    CATEGORY_VIEW,
    EVENT_TIMESTAMP,
    ID_COLUMNS,
    ITEM_ID,
    ITEM_VIEW,
    LABEL,
    LABEL_WINDOW,
    MODEL_FEATURE_SERVICE,
    RECENT_STATE_DELAY,
    RECENT_VIEW,
    USER_ID,
    USER_VIEW,
)
from models.data import lake
from models.data.ingestion import ingest_to_lake
from models.data.labels import label_page_views
from models.data.validation import DataValidationError, raise_for_failures, validate_partition
from models.evaluation import report
from models.evaluation.metrics import ctr_metrics
from models.evaluation.promotion import log_candidate, promote_if_better
from models.features import batch
from models.features import store as feast_store
from models.features.engine import EngineConfig
from models.features.point_in_time import duckdb_join
from models.features.training_set import (
    Split,
    bounded_duckdb,
    chunk_bounds,
    join_features,
    read_sampling,
    split_by_time,
    streamed_split,
    write_chunks,
)
from models.kinds import KINDS
from models.monitoring.readout import Thresholds, file_readout, raise_for_breaches
from models.registry import CHAMPION, NoChampionError, load_by_alias, model_name
from models.retrieval.build import build_and_save_index
from models.retrieval.index import CandidateIndex
from models.scoring import WIDE_DEEP, XGBOOST, ScoringModel, load_saved
from models.settings import Settings, get_settings
from models.stage_results import (
    Applied,
    CandidatesBuilt,
    FeaturesBuilt,
    Ingested,
    Materialized,
    Monitored,
    Readiness,
    Trained,
    TrainingSetBuilt,
    Validated,
    ValidationTotals,
)
from models.training.device import choose_device
from models.training.fit import Placement, lineage, train_kind
from models.training.warm_start import continue_champion

log = logging.getLogger(__name__)

# Id columns: Wide&Deep hashes them into embeddings and crosses; XGBoost reads only the numeric
# features of the FeatureService.
CATEGORICAL_COLUMNS: tuple[str, ...] = ID_COLUMNS


def _interval(settings: Settings, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """A stage's data interval: the one given (an Airflow run's), else the whole configured window."""
    return start or settings.window_start, end or settings.window_end


def _days(settings: Settings, start: datetime, end: datetime) -> list[pd.Timestamp]:
    return lake.days_of(start, end, settings.timezone)


# --- data ------------------------------------------------------------------------------------


def ingest(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> Ingested:
    """Raw CSV + the live event log -> canonical events, one lake partition per day of the interval
    (models.data.ingestion says which rows go where), read and written in bounded batches."""
    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    counts = ingest_to_lake(settings, start, end)
    log.info(
        "ingested %d rows (%d from the event log) into %d days",
        counts.rows,
        counts.event_log_rows,
        len(counts.per_day),
    )
    return Ingested(
        str(settings.raw_events),
        counts.rows,
        counts.per_day,
        counts.event_log_rows,
        counts.duplicates_dropped,
    )


def validate(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> Validated:
    """The GX suite over each day's batch: bad rows to quarantine, accepted rows to the lake.

    A day that breaks the suite gets no accepted partition (an older one is removed) and the stage
    raises DataValidationError after every day has its report, so nothing downstream reads it.
    """
    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    totals = {"input_rows": 0, "accepted_rows": 0, "quarantined_rows": 0}
    days, broken = {}, []
    for day in _days(settings, start, end):
        verdict, report_path = validate_partition(settings, day)
        summary = {k: v for k, v in verdict.summary().items() if k != "statistics"}
        days[f"{day:%Y-%m-%d}"] = {**summary, "report": str(report_path)}
        for key in totals:
            totals[key] += summary[key]
        if not verdict.success:
            broken.append((day, verdict, report_path))
    docs = data_docs_index(settings)
    log.info("validation: %s", json.dumps(totals))
    log.info("Great Expectations Data Docs: %s", docs)
    for day, verdict, report_path in broken:
        try:
            raise_for_failures(verdict, report_path)
        except DataValidationError as error:
            raise DataValidationError(
                f"{day:%Y-%m-%d}: {error} (Data Docs: {docs}; {len(broken)} of {len(days)} days broken)"
            ) from None
    return Validated(**totals, success=True, days=days, data_docs=docs)


def data_docs_index(settings: Settings) -> str:
    """Where the Great Expectations Data Docs of every validated batch are."""
    return settings.paths.data_docs.as_uri()


def validation_totals(settings: Settings | None = None) -> ValidationTotals:
    """Input, accepted and quarantined rows over every validated day (the reports in quarantine/)."""
    settings = settings or get_settings()
    counts = {"input_rows": 0, "accepted_rows": 0, "quarantined_rows": 0}
    failed, reports = [], sorted(settings.paths.quarantine.glob("date=*/report.json"))
    for path in reports:
        summary = json.loads(path.read_text())
        for key in counts:
            counts[key] += summary[key]
        if not summary["success"]:
            failed.append(path.parent.name.removeprefix("date="))
    return ValidationTotals(**counts, days=len(reports), failed_days=failed)


# --- features --------------------------------------------------------------------------------


def apply_features(settings: Settings | None = None) -> Applied:
    """`feast apply` of feature_repo/ against the configured stores."""
    return Applied(feast_store.apply_repo(settings or get_settings()))


def build_features(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> FeaturesBuilt:
    """The interval's daily user/item/category snapshots and the users' short-term state, written
    into the offline sources the Feast repo declares in place of the interval's earlier rows."""
    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    missing = lake.missing_days(settings, lake.ACCEPTED, start, end)
    if missing:
        raise FileNotFoundError(f"No accepted events for {', '.join(missing)}: validate those days first")
    days = _days(settings, start, end)
    first, last = days[0], days[-1] + pd.Timedelta(days=1)
    lookback = max(batch.SNAPSHOT_LOOKBACK, batch.RECENT_LOOKBACK)
    lo = (first - lookback).tz_convert(settings.timezone).normalize()
    until = last + batch.SNAPSHOT_LOOKAHEAD
    files = [
        lake.partition_path(settings, lake.ACCEPTED, day)
        for day in lake.partitions(settings, lake.ACCEPTED)
        if lo <= day < until
    ]
    store = feast_store.open_store(settings)
    sources = {
        view: feast_store.source_path(store, view)
        for view in (USER_VIEW, ITEM_VIEW, CATEGORY_VIEW, RECENT_VIEW)
    }
    if settings.engine == "spark":
        from models import spark
        from models.features import spark_engine

        rows, events = spark_engine.build_interval(
            spark.session(settings), files, first, last, settings.timezone, sources
        )
    else:
        rows, events = batch.build_interval(
            files, first, last, settings.timezone, sources, EngineConfig.from_settings(settings)
        )
    return FeaturesBuilt(rows, len(days), events)


def materialize(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> Materialized:
    """Load the interval's feature rows, and any newer ones, into the online store: re-running an
    old day never leaves older values online than the newest day processed. Bounded batches, with
    rows/s per view in the log (models/features/materialize.py)."""
    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    first = _days(settings, start, end)[0]
    present = lake.partitions(settings, lake.ACCEPTED)
    newest = max([pd.Timestamp(end), *(d + pd.Timedelta(days=1) for d in present)])
    until = newest + RECENT_STATE_DELAY
    feast_store.materialize(
        feast_store.open_store(settings),
        first.to_pydatetime(),
        until.to_pydatetime(),
        batch_rows=settings.materialize_batch_rows,
        memory_mb=settings.materialize_memory_mb,
    )
    return Materialized(first.isoformat(), until.isoformat())


def build_candidates(settings: Settings | None = None) -> CandidatesBuilt:
    """Co-visitation, per-category and per-hour popularity lists for /recommend, from all accepted
    events; the ranker loads them at start."""
    summary = dict(build_and_save_index(settings or get_settings()))
    path, seconds = summary.pop("path"), summary.pop("seconds")  # the builder times itself
    return CandidatesBuilt(index=summary, path=path, seconds=seconds)


# --- training set and training ---------------------------------------------------------------


def training_readiness(settings: Settings | None = None) -> Readiness:
    """Whether every day of the training window has accepted events (the training DAG waits for it)."""
    settings = settings or get_settings()
    missing = lake.missing_days(settings, lake.ACCEPTED, settings.window_start, settings.window_end)
    return Readiness(not missing, missing)


def build_training_set(settings: Settings | None = None) -> TrainingSetBuilt:
    """Label page views and join their features point-in-time through the models' FeatureService
    (request-time features computed as if each view had been ranked at its own time)."""
    settings = settings or get_settings()
    readiness = training_readiness(settings)
    if not readiness.ready:
        raise FileNotFoundError(
            "The training window has days without accepted events: " + ", ".join(readiness.missing_days)
        )
    store = feast_store.open_store(settings)
    service = store.get_feature_service(MODEL_FEATURE_SERVICE)
    days = _days(settings, settings.window_start, settings.window_end)
    cuts = (settings.valid_start, settings.test_start)
    if settings.training_join == "duckdb":
        joining = duckdb_join(store, service, EngineConfig.from_settings(settings))
    else:
        joining = bounded_duckdb(
            settings.duckdb_memory_limit, settings.duckdb_threads, settings.duckdb_temp_dir
        )
    with joining as via:
        via, complete = via.in_two_steps() if via is not None else (None, None)
        written = write_chunks(
            (
                (start, end, _labelled_views(settings, start, end))
                for start, end in chunk_bounds(days, settings.window_end, cuts)
            ),
            lambda rows: join_features(store, rows, service, via),
            settings.paths.training_set,
            valid_start=settings.valid_start,
            test_start=settings.test_start,
            negative_rate=settings.negative_sample_rate,
            seed=settings.seed,
            chunk_rows=settings.training_chunk_rows,
            complete=complete,
        )
    rows, positives = sum(c.rows for c in written), sum(c.positives for c in written)
    log.info(
        "training set: %d rows (%d labelled views, negatives of the training and validation days "
        "kept at %g) in %d chunks, joined by %s",
        rows,
        sum(c.views for c in written),
        settings.negative_sample_rate,
        len(written),
        settings.training_join,
    )
    return TrainingSetBuilt(rows, positives, positives / rows if rows else 0.0)


def _labelled_views(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The labelled page views of [start, end), from the events of [start, end + LABEL_WINDOW):
    all a label looks at, so the labels are those of the whole window."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    until = end + LABEL_WINDOW
    files = [
        lake.partition_path(settings, lake.ACCEPTED, day)
        for day in lake.partitions(settings, lake.ACCEPTED)
        if start.normalize() <= day < until
    ]
    ts = pc.field(EVENT_TIMESTAMP)
    table = ds.dataset([str(f) for f in files]).to_table(
        columns=[USER_ID, ITEM_ID, BEHAVIOR, EVENT_TIMESTAMP],
        filter=(ts >= start.to_pydatetime()) & (ts < until.to_pydatetime()),
    )
    labelled = label_page_views(table.to_pandas(), LABEL_WINDOW, settings.window_end)
    views = labelled[EVENT_TIMESTAMP]
    return labelled[(views >= start) & (views < end)]


def _split(settings: Settings) -> Split:
    """The training set's days as frames (evaluation, registration and warm start)."""
    frame = pd.read_parquet(settings.paths.training_set)
    return split_by_time(frame, settings.valid_start, settings.test_start)


def _service_binding(settings: Settings) -> tuple[list[str], str]:
    """The models' FeatureService: its numeric features and fingerprint, from the Feast registry."""
    service = feast_store.open_store(settings).get_feature_service(MODEL_FEATURE_SERVICE)
    numeric = [name for name in feast_store.feature_names(service) if name not in CATEGORICAL_COLUMNS]
    return numeric, feast_store.fingerprint(service)


def train(kind: str, settings: Settings | None = None, host: str = "", queue: str = "") -> Trained:
    """Train one model kind on the training days, early-stopped on the validation day; GPU when
    present. The model waits under the models dir for evaluate and register. `host` and `queue`
    are the worker and queue Airflow ran the task on, recorded with the model and the device."""
    settings = settings or get_settings()
    features, _ = _service_binding(settings)
    choice = choose_device(settings.device)
    placement = Placement.of(choice, host, queue)
    folder = settings.paths.training_set
    model, summary = train_kind(
        kind,
        streamed_split(folder),
        features,
        choice.device,
        settings.seed,
        placement,
        negative_sample_rate=read_sampling(folder)["negative_sample_rate"],
    )
    model.save(settings.paths.trained_model_dir(kind))
    return Trained(kind, model.meta["rows"], model.meta["device"], model.meta["train_seconds"], summary)


def train_xgboost(settings: Settings | None = None, host: str = "", queue: str = "") -> Trained:
    """XGBoost on the training days, early-stopped on the validation day; GPU when present."""
    return train(XGBOOST, settings, host, queue)


def train_wide_deep(settings: Settings | None = None, host: str = "", queue: str = "") -> Trained:
    """Keras Wide&Deep on the same rows; mixed precision and large batches on a GPU."""
    return train(WIDE_DEEP, settings, host, queue)


def _trained_models(settings: Settings) -> dict[str, ScoringModel]:
    found = {}
    for kind in KINDS:
        folder = settings.paths.trained_model_dir(kind)
        if (folder / "meta.json").exists():
            found[kind] = load_saved(folder)
    if not found:
        raise FileNotFoundError(f"No trained model under {settings.paths.trained_models}; run train first")
    return found


# --- evaluation and registration -------------------------------------------------------------


def evaluate(settings: Settings | None = None) -> dict[str, Any]:
    """Every trained model and both baselines on the test window: AUC, logloss, calibration and
    per-user ranking quality (GAUC, NDCG@10, HitRate@10)."""
    settings = settings or get_settings()
    split = streamed_split(settings.paths.training_set)
    features, _ = _service_binding(settings)
    models = _trained_models(settings)
    sampling = read_sampling(settings.paths.training_set)["negative_sample_rate"]
    table = report.test_table(split, models, features, settings.seed, settings.baseline_rows, sampling)
    settings.paths.evaluation.parent.mkdir(parents=True, exist_ok=True)
    settings.paths.evaluation.write_text(json.dumps(table, indent=2))
    log.info("test window, %d rows:\n%s", len(split.test), report.format_table(table))
    best_baseline = max(table[base]["auc"] for base in report.BASELINES)
    return report.summarise(table) | {"best_baseline_auc": best_baseline}


def register(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Log each trained model to MLflow as `challenger` of its registered model, then promote it
    to `champion` only if it passes the sanity checks and beats that model's champion.
    Returns the gate's decision per kind."""
    settings = settings or get_settings()
    table = json.loads(settings.paths.evaluation.read_text())
    features, fingerprint = _service_binding(settings)
    test = streamed_split(settings.paths.training_set).test
    y = test.column(LABEL)
    decisions = {}
    for kind, model in _trained_models(settings).items():
        if model.features != features:
            raise RuntimeError(
                f"The {kind} model was trained on {model.features} but {MODEL_FEATURE_SERVICE} now "
                f"serves {features}; retrain before registering"
            )
        version = log_candidate(
            settings,
            model,
            test,
            y,
            report.run_metrics(table[kind], table),
            lineage(settings, model.meta, "full"),
            MODEL_FEATURE_SERVICE,
            fingerprint,
        )
        decisions[kind] = promote_if_better(
            settings, model, version, table[kind], test, y, fingerprint, table[report.POPULARITY]["auc"]
        )
        log.info("%s v%s: %s", kind, version, decisions[kind]["reason"])
    return decisions


def new_champions(decisions: dict[str, Any]) -> dict[str, str]:
    """Registered model -> version, for each model whose `champion` alias moved in this register."""
    return {d["model"]: d["version"] for d in decisions.values() if d.get("champion_changed")}


def warm_start(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Continuous learning: continue each champion on the newest partition (models.training.
    warm_start), then evaluate and gate it exactly like a full retrain. A registry without a
    champion of a kind skips that kind."""
    settings = settings or get_settings()
    split = _split(settings)
    _, fingerprint = _service_binding(settings)
    y, users = split.test[LABEL].to_numpy(), split.test[USER_ID].to_numpy()
    floor = report.popularity_auc(split)
    results: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        try:
            champion = load_by_alias(settings, CHAMPION, model_name(settings, kind))
        except NoChampionError as exc:
            results[kind] = {"skipped": str(exc)}
            continue
        if champion.fingerprint != fingerprint:
            results[kind] = {"skipped": "the champion was trained on another feature list; retrain fully"}
            continue
        # Before training: fine-tuning changes the loaded Keras model in place.
        champion_metrics = ctr_metrics(y, champion.predict(split.test), users)
        model = continue_champion(champion, split, settings.seed)
        metrics = ctr_metrics(y, model.predict(split.test), users)
        version = log_candidate(
            settings,
            model,
            split.test,
            y,
            report.run_metrics(metrics),
            lineage(settings, model.meta, "warm_start"),
            MODEL_FEATURE_SERVICE,
            fingerprint,
            training="warm_start",
        )
        decision = promote_if_better(settings, model, version, metrics, split.test, y, fingerprint, floor)
        results[kind] = {
            "champion_version": champion.version,
            "champion_auc": champion_metrics["auc"],
            "warm_start_auc": metrics["auc"],
            "warm_start_logloss": metrics["logloss"],
            "champion_logloss": champion_metrics["logloss"],
            **decision,
        }
        log.info("%s warm start v%s: %s", kind, version, decision["reason"])
    return results


# --- monitoring ------------------------------------------------------------------------------


def monitor(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> Monitored:
    """The serving log of [start, end) joined with what shoppers did next (accepted events and the
    live event log up to LABEL_WINDOW later): A/B readout, drift against the training set, catalogue
    coverage; logged to MLflow. Threshold breaches are listed, `check_thresholds` raises them."""
    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    try:
        catalogue: int | None = CandidateIndex.load(settings.paths.candidates).summary()["items"]
    except FileNotFoundError:
        catalogue = None  # the items of the window's events
    summary = file_readout(settings, start, end, catalogue, Thresholds.from_settings(settings))
    log.info("monitoring %s .. %s: %d rows, breaches: %s", start, end, summary["rows"], summary["breaches"])
    return Monitored(**summary)


def check_thresholds(summary: Monitored | dict[str, Any]) -> dict[str, Any]:
    """Raise MonitoringAlert listing every crossed threshold (the failure callback alerts)."""
    raise_for_breaches(summary.get("breaches") or [])
    return {"breaches": 0}


STAGES = [
    ingest,
    validate,
    apply_features,
    build_features,
    materialize,
    build_candidates,
    build_training_set,
    train_xgboost,
    train_wide_deep,
    evaluate,
    register,
]


# Run on demand (CLI, DAG params), not part of a full run.
EXTRA_STAGES = [warm_start]


def as_json(result: Any) -> Any:
    """A stage's result as JSON-able data (what an Airflow task returns, what `ctr run` prints)."""
    return result.to_dict() if hasattr(result, "to_dict") else result


def run_all(settings: Settings | None = None) -> dict[str, Any]:
    """Every stage in order, without Airflow (the DAG runs the same functions)."""
    settings = settings or get_settings()
    results = {}
    for stage in STAGES:
        log.info("== %s", stage.__name__)
        results[stage.__name__] = stage(settings)
    return results
