"""The pipeline's stages as plain functions: each reads the previous stage's output from disk and
returns a small JSON-able summary. Airflow tasks, the CLI and the tests all call these."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.contract import (
    CATEGORY_VIEW,
    EVENT_TIMESTAMP,
    ID_COLUMNS,
    ITEM_VIEW,
    LABEL,
    LABEL_WINDOW,
    MODEL_FEATURE_SERVICE,
    RECENT_VIEW,
    USER_ID,
    USER_VIEW,
)
from models.features.store import write_offline
from models.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Id columns: Wide&Deep hashes them into embeddings and crosses; XGBoost reads only the numeric
# features of the FeatureService.
CATEGORICAL_COLUMNS: tuple[str, ...] = ID_COLUMNS


def _paths(settings: Settings) -> dict[str, Path]:
    return {
        "training": settings.datasets_dir / "training_set.parquet",
        "evaluation": settings.models_dir / "candidates" / "evaluation.json",
    }


def _interval(settings: Settings, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """A stage's data interval: the one given (an Airflow run's), else the whole configured window."""
    return start or settings.window_start, end or settings.window_end


def ingest(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    """Raw CSV + the live event log -> canonical events, one lake partition per day of the interval.

    Every line of the CSV is kept (validation judges it): a row belongs to the day of its time, and
    a row without a usable time to the window's first or last day. An event both in the CSV and in
    the log, or logged twice, is kept once.
    """
    from feature_repo.contract import EVENT_COLUMNS
    from models.data.events import SOURCE_ROW, load_events
    from models.data.event_log import EventLog
    from models.data.lake import INGESTED, day_of_rows, days_of, write_partition

    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    days = days_of(start, end, settings.timezone)
    events = load_events(settings.raw_events)
    partition = day_of_rows(events, settings)
    events, partition = events[partition.isin(days)], partition[partition.isin(days)]
    logged = EventLog(settings.event_log_dir).read(
        max(start, settings.window_start), min(end, settings.window_end)
    )
    duplicates = 0
    if len(logged):
        logged = logged[list(EVENT_COLUMNS)].astype(
            {c: "Int64" for c in ("user_id", "item_id", "category_id")}
        )
        logged.insert(0, SOURCE_ROW, -np.arange(1, len(logged) + 1))  # negative: a row of the event log
        # one timestamp type on both sides, or the concatenation falls back to objects
        logged[EVENT_TIMESTAMP] = pd.to_datetime(logged[EVENT_TIMESTAMP], utc=True).astype(
            events[EVENT_TIMESTAMP].dtype
        )
        before = len(events) + len(logged)
        events = pd.concat([events, logged], ignore_index=True)
        partition = pd.concat([partition, day_of_rows(logged, settings)], ignore_index=True)
        first_seen = ~events.duplicated(list(EVENT_COLUMNS), keep="first")
        events, partition = events[first_seen], partition[first_seen]
        duplicates = before - len(events)
    per_day = {}
    for day in days:
        rows = events[partition == day]
        write_partition(rows, settings, INGESTED, day)
        per_day[f"{day:%Y-%m-%d}"] = len(rows)
    log.info("ingested %d rows (%d from the event log) into %d days", len(events), len(logged), len(days))
    return {
        "source": str(settings.raw_events),
        "rows": len(events),
        "days": per_day,
        "event_log_rows": len(logged),
        "duplicates_dropped": duplicates,
    }


def validate(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    """The GX suite over each day's batch: bad rows to quarantine, accepted rows to the lake.

    A day that breaks the suite gets no accepted partition (an older one is removed) and the stage
    raises DataValidationError after every day has its report, so nothing downstream reads it.
    """
    from models.data.lake import ACCEPTED, INGESTED, partition_name, read_events, remove_partition, write_partition
    from models.data.validation import DataValidationError, raise_for_failures, validate_events, write_outcome

    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    totals = {"input_rows": 0, "accepted_rows": 0, "quarantined_rows": 0}
    days, broken = {}, []
    for day in _days(settings, start, end):
        batch = read_events(settings, INGESTED, day, day + pd.Timedelta(days=1))
        outcome = validate_events(
            batch, day, day + pd.Timedelta(days=1), settings.max_bad_row_fraction, settings.data_dir
        )
        report = write_outcome(outcome, settings.quarantine_dir / partition_name(day))
        summary = {k: v for k, v in outcome.summary().items() if k != "statistics"}
        days[f"{day:%Y-%m-%d}"] = {**summary, "report": str(report)}
        for key in totals:
            totals[key] += summary[key]
        if outcome.success:
            write_partition(outcome.accepted, settings, ACCEPTED, day)
        else:
            remove_partition(settings, ACCEPTED, day)
            broken.append((day, outcome, report))
    docs = data_docs_index(settings)
    log.info("validation: %s", json.dumps(totals))
    log.info("Great Expectations Data Docs: %s", docs)
    for day, outcome, report in broken:
        try:
            raise_for_failures(outcome, report)
        except DataValidationError as error:
            raise DataValidationError(
                f"{day:%Y-%m-%d}: {error} (Data Docs: {docs}; {len(broken)} of {len(days)} days broken)"
            ) from None
    return {**totals, "success": True, "days": days, "data_docs": docs}


def data_docs_index(settings: Settings) -> str:
    """Where the Great Expectations Data Docs of every validated batch are."""
    return (settings.gx_dir / "uncommitted/data_docs/local_site/index.html").as_uri()


def validation_totals(settings: Settings | None = None) -> dict[str, Any]:
    """Input, accepted and quarantined rows over every validated day (the reports in quarantine/)."""
    settings = settings or get_settings()
    totals = {"input_rows": 0, "accepted_rows": 0, "quarantined_rows": 0, "days": 0, "failed_days": []}
    for report in sorted(settings.quarantine_dir.glob("date=*/report.json")):
        summary = json.loads(report.read_text())
        for key in ("input_rows", "accepted_rows", "quarantined_rows"):
            totals[key] += summary[key]
        totals["days"] += 1
        if not summary["success"]:
            totals["failed_days"].append(report.parent.name.removeprefix("date="))
    return totals


def _days(settings: Settings, start: datetime, end: datetime) -> list[pd.Timestamp]:
    from models.data.lake import days_of

    return days_of(start, end, settings.timezone)


def apply_features(settings: Settings | None = None) -> dict[str, Any]:
    from models.features.store import apply_repo

    settings = settings or get_settings()
    return {"feature_services": apply_repo(settings)}


def build_features(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    """The interval's daily user/item/category snapshots and the users' short-term state, written
    into the offline sources the Feast repo declares in place of the interval's earlier rows."""
    from feature_repo.contract import RECENT_STATE_DELAY
    from models.features.store import open_store, source_path, upsert_offline
    from models.features.batch import (
        RECENT_LOOKBACK,
        SNAPSHOT_LOOKAHEAD,
        SNAPSHOT_LOOKBACK,
        category_snapshots,
        item_snapshots,
        recent_activity_between,
        snapshots_between,
        user_snapshots,
    )
    from models.data.lake import ACCEPTED, missing_days, read_events

    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    missing = missing_days(settings, ACCEPTED, start, end)
    if missing:
        raise FileNotFoundError(f"No accepted events for {', '.join(missing)}: validate those days first")
    days = _days(settings, start, end)
    first, last = days[0], days[-1] + pd.Timedelta(days=1)
    events = read_events(
        settings,
        ACCEPTED,
        first - max(SNAPSHOT_LOOKBACK, RECENT_LOOKBACK),
        last + SNAPSHOT_LOOKAHEAD,
    )
    store = open_store(settings)
    rows = {}
    for view, build in (
        (USER_VIEW, user_snapshots),
        (ITEM_VIEW, item_snapshots),
        (CATEGORY_VIEW, category_snapshots),
    ):
        frame = snapshots_between(build, events, first, last, settings.timezone)
        rows[view] = upsert_offline(frame, source_path(store, view), first, last, include_end=True)
    rows[RECENT_VIEW] = upsert_offline(
        recent_activity_between(events, first, last),
        source_path(store, RECENT_VIEW),
        first + RECENT_STATE_DELAY,
        last + RECENT_STATE_DELAY,
        include_end=False,
    )
    return {"rows": rows, "days": len(days), "events_read": len(events)}


def materialize(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    """Load the interval's feature rows, and any newer ones, into the online store: re-running an
    old day never leaves older values online than the newest day processed."""
    from feature_repo.contract import RECENT_STATE_DELAY
    from models.features.store import materialize as feast_materialize
    from models.features.store import open_store
    from models.data.lake import ACCEPTED, partitions

    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    first = _days(settings, start, end)[0]
    present = partitions(settings, ACCEPTED)
    newest = max([pd.Timestamp(end), *(d + pd.Timedelta(days=1) for d in present)])
    until = newest + RECENT_STATE_DELAY
    feast_materialize(open_store(settings), first.to_pydatetime(), until.to_pydatetime())
    return {"start": first.isoformat(), "end": until.isoformat()}


def training_readiness(settings: Settings | None = None) -> dict[str, Any]:
    """Whether every day of the training window has accepted events (the training DAG waits for it)."""
    from models.data.lake import ACCEPTED, missing_days

    settings = settings or get_settings()
    missing = missing_days(settings, ACCEPTED, settings.window_start, settings.window_end)
    return {"ready": not missing, "missing_days": missing}


def build_candidates(settings: Settings | None = None) -> dict[str, Any]:
    """Co-visitation, per-category and per-hour popularity lists for /recommend, from all accepted
    events; the ranker loads them at start."""
    from models.retrieval.candidates import build_candidates_stage

    return build_candidates_stage(settings or get_settings())


def build_training_set(settings: Settings | None = None) -> dict[str, Any]:
    """Label page views and join their features point-in-time through the models' FeatureService
    (request-time features computed as if each view had been ranked at its own time)."""
    from models.features.training_set import join_features
    from models.features.store import open_store
    from models.data.labels import label_page_views
    from models.data.lake import ACCEPTED, read_events

    settings = settings or get_settings()
    readiness = training_readiness(settings)
    if not readiness["ready"]:
        raise FileNotFoundError(
            "The training window has days without accepted events: " + ", ".join(readiness["missing_days"])
        )
    events = read_events(settings, ACCEPTED, settings.window_start, settings.window_end)
    labelled = label_page_views(events, LABEL_WINDOW, settings.window_end)
    store = open_store(settings)
    frame = join_features(store, labelled, store.get_feature_service(MODEL_FEATURE_SERVICE))
    write_offline(frame, _paths(settings)["training"])
    return {
        "rows": len(frame),
        "positives": int(frame[LABEL].sum()),
        "positive_rate": float(frame[LABEL].mean()),
    }


def _split(settings: Settings):
    from models.features.training_set import split_by_time

    frame = pd.read_parquet(_paths(settings)["training"])
    return split_by_time(frame, settings.valid_start, settings.test_start)


def _service_binding(settings: Settings) -> tuple[list[str], str]:
    """The models' FeatureService: its numeric features and fingerprint, from the Feast registry."""
    from models.features.store import feature_names, fingerprint, open_store

    service = open_store(settings).get_feature_service(MODEL_FEATURE_SERVICE)
    numeric = [name for name in feature_names(service) if name not in CATEGORICAL_COLUMNS]
    return numeric, fingerprint(service)


def _wide_deep_spec(features: list[str], frame: pd.DataFrame):
    from models.kinds.wide_deep import DEFAULT_CROSSES, WideDeepSpec

    categorical = [c for c in CATEGORICAL_COLUMNS if c in frame.columns]
    return WideDeepSpec.for_columns(features, categorical, DEFAULT_CROSSES)


def _candidate_dir(settings: Settings, kind: str) -> Path:
    return settings.models_dir / "candidates" / kind


def _train_meta(settings: Settings, split, device: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "rows": {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)},
        "device": device,
        "train_seconds": round(seconds, 3),
        "seed": settings.seed,
        **extra,
    }


def train_xgboost(settings: Settings | None = None) -> dict[str, Any]:
    """XGBoost on the training days, early-stopped on the validation day; GPU when present."""
    import time

    from models.features.training_set import feature_matrix
    from models.training.device import resolve_device
    from models.scoring import XGBOOST, ScoringModel
    from models.kinds.xgb import train_xgb

    settings = settings or get_settings()
    split = _split(settings)
    features, _ = _service_binding(settings)
    device = resolve_device(settings.device)
    started = time.perf_counter()
    trained = train_xgb(
        feature_matrix(split.train, features),
        split.train[LABEL].to_numpy(),
        feature_matrix(split.valid, features),
        split.valid[LABEL].to_numpy(),
        features,
        device=device,
        seed=settings.seed,
    )
    meta = _train_meta(
        settings,
        split,
        device,
        time.perf_counter() - started,
        features=features,
        params=trained.params,
        best_iteration=trained.best_iteration,
        history=trained.history,
    )
    ScoringModel(XGBOOST, trained.model, features, meta).save(_candidate_dir(settings, XGBOOST))
    log.info("xgboost: best round %d, %.1f s on %s", trained.best_iteration, meta["train_seconds"], device)
    return {k: meta[k] for k in ("best_iteration", "rows", "device", "train_seconds")}


def train_wide_deep(settings: Settings | None = None) -> dict[str, Any]:
    """Keras Wide&Deep on the same rows; mixed precision and large batches on a GPU."""
    from models.training.device import resolve_device
    from models.scoring import WIDE_DEEP, ScoringModel
    from models.kinds.wide_deep import train_wide_deep as fit

    settings = settings or get_settings()
    split = _split(settings)
    features, _ = _service_binding(settings)
    spec = _wide_deep_spec(features, split.train)
    device = resolve_device(settings.device)
    gpu = {"mixed_precision": True, "batch_size": 8192} if device == "cuda" else {}
    trained = fit(
        split.train,
        split.train[LABEL].to_numpy(),
        split.valid,
        split.valid[LABEL].to_numpy(),
        spec,
        seed=settings.seed,
        **gpu,
    )
    meta = _train_meta(
        settings,
        split,
        device,
        trained.train_seconds,
        features=features,
        params=trained.params,
        best_epoch=trained.best_epoch,
        history=trained.history,
        examples_per_second=round(trained.examples_per_second),
        categorical=list(spec.categorical),
        crosses=[list(pair) for pair in spec.crosses],
    )
    ScoringModel(WIDE_DEEP, trained.model, features, meta, spec).save(_candidate_dir(settings, WIDE_DEEP))
    log.info(
        "wide_deep: best epoch %d, %.1f s on %s (%.0f examples/s)",
        trained.best_epoch,
        trained.train_seconds,
        device,
        trained.examples_per_second,
    )
    return {k: meta[k] for k in ("best_epoch", "rows", "device", "train_seconds", "examples_per_second")}


def _trained_candidates(settings: Settings) -> dict[str, Any]:
    from models.scoring import KINDS, load_saved

    found = {}
    for kind in KINDS:
        folder = _candidate_dir(settings, kind)
        if (folder / "meta.json").exists():
            found[kind] = load_saved(folder)
    if not found:
        raise FileNotFoundError(
            f"No trained candidate under {settings.models_dir / 'candidates'}; run train first"
        )
    return found


def _baselines(settings: Settings, split, features: list[str]) -> dict[str, Any]:
    from models.evaluation.metrics import LogisticBaseline, PopularityBaseline

    y = split.train[LABEL].to_numpy()
    return {
        "popularity": PopularityBaseline().fit(split.train, y),
        "logistic_regression": LogisticBaseline(features, seed=settings.seed).fit(split.train, y),
    }


def _format_table(rows: dict[str, dict[str, float]]) -> str:
    columns = ["auc", "logloss", "ece", "gauc", "ndcg_at_10", "hitrate_at_10"]
    lines = [f"{'model':<22}" + "".join(f"{c:>14}" for c in columns)]
    for name, metrics in rows.items():
        lines.append(f"{name:<22}" + "".join(f"{metrics[c]:>14.4f}" for c in columns))
    return "\n".join(lines)


def evaluate(settings: Settings | None = None) -> dict[str, Any]:
    """Every trained model and both baselines on the test window: AUC, logloss, calibration and
    per-user ranking quality (GAUC, NDCG@10, HitRate@10)."""
    from models.evaluation.metrics import ctr_metrics

    settings = settings or get_settings()
    split = _split(settings)
    features, _ = _service_binding(settings)
    y, users = split.test[LABEL].to_numpy(), split.test[USER_ID].to_numpy()
    scored = {kind: model.predict(split.test) for kind, model in _trained_candidates(settings).items()}
    scored |= {name: base.predict(split.test) for name, base in _baselines(settings, split, features).items()}
    table = {name: ctr_metrics(y, p, users) for name, p in scored.items()}
    _paths(settings)["evaluation"].parent.mkdir(parents=True, exist_ok=True)
    _paths(settings)["evaluation"].write_text(json.dumps(table, indent=2))
    log.info("test window, %d rows:\n%s", len(y), _format_table(table))
    best_baseline = max(table["popularity"]["auc"], table["logistic_regression"]["auc"])
    return {
        name: {k: round(v, 5) for k, v in m.items() if k in ("auc", "logloss", "ece", "gauc", "ndcg_at_10")}
        for name, m in table.items()
    } | {"best_baseline_auc": best_baseline}


def _lineage(settings: Settings, meta: dict[str, Any], training: str) -> dict[str, Any]:
    return {
        "source": str(settings.raw_events),
        "window": [settings.window_start.isoformat(), settings.window_end.isoformat()],
        "valid_start": settings.valid_start.isoformat(),
        "test_start": settings.test_start.isoformat(),
        "rows": meta["rows"],
        "label": f"pv followed by cart/fav/buy of the same item by the same user within {LABEL_WINDOW}",
        "feature_service": MODEL_FEATURE_SERVICE,
        "device": meta["device"],
        "training": training,
    }


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)}


def register(settings: Settings | None = None) -> dict[str, Any]:
    """Log each candidate to MLflow as `challenger` of its registered model, then promote it to
    `champion` only if it passes the sanity checks and beats that model's champion."""
    from models.registry import log_candidate, promote_if_better

    settings = settings or get_settings()
    table = json.loads(_paths(settings)["evaluation"].read_text())
    features, fingerprint = _service_binding(settings)
    split = _split(settings)
    y = split.test[LABEL].to_numpy()
    decisions = {}
    for kind, model in _trained_candidates(settings).items():
        if model.features != features:
            raise RuntimeError(
                f"The {kind} candidate was trained on {model.features} but {MODEL_FEATURE_SERVICE} now "
                f"serves {features}; retrain before registering"
            )
        metrics = {f"test_{k}": v for k, v in _numeric(table[kind]).items()} | {"auc": table[kind]["auc"]}
        metrics |= {f"{base}_auc": table[base]["auc"] for base in ("popularity", "logistic_regression")}
        version = log_candidate(
            settings,
            model,
            split.test,
            y,
            metrics,
            _lineage(settings, model.meta, "full"),
            MODEL_FEATURE_SERVICE,
            fingerprint,
        )
        decisions[kind] = promote_if_better(
            settings, model, version, table[kind], split.test, y, fingerprint, table["popularity"]["auc"]
        )
        log.info("%s v%s: %s", kind, version, decisions[kind]["reason"])
    return decisions


def monitor(
    settings: Settings | None = None, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    """The serving log of [start, end) joined with what shoppers did next (accepted events and the
    live event log up to LABEL_WINDOW later): A/B readout, drift against the training set, catalogue
    coverage; logged to MLflow. Threshold breaches are listed, `check_thresholds` raises them."""
    from models.retrieval.candidates import CandidateIndex
    from models.data.event_log import EventLog
    from models.data.lake import ACCEPTED, read_events
    from models.monitoring.readout import Thresholds
    from models.monitoring.readout import monitor as readout
    from models.monitoring.serving_log import read_serving_log

    settings = settings or get_settings()
    start, end = _interval(settings, start, end)
    served = read_serving_log(settings.serving_log_dir, start, end)
    until = pd.Timestamp(end) + LABEL_WINDOW
    columns = [USER_ID, "item_id", "behavior", EVENT_TIMESTAMP]
    events = pd.concat(
        [
            read_events(settings, ACCEPTED, start, until)[columns],
            EventLog(settings.event_log_dir).read(start, until.to_pydatetime())[columns],
        ],
        ignore_index=True,
    ).drop_duplicates()
    training_path = _paths(settings)["training"]
    training = pd.read_parquet(training_path) if training_path.exists() else pd.DataFrame()
    try:
        catalogue = CandidateIndex.load(settings.candidates_dir).summary()["items"]
    except FileNotFoundError:
        catalogue = int(events["item_id"].nunique()) or 1
    thresholds = Thresholds(
        max_psi=settings.monitor_max_psi,
        min_coverage=settings.monitor_min_coverage,
        min_online_auc=settings.monitor_min_online_auc,
        max_fallback_share=settings.monitor_max_fallback_share,
        min_requests=settings.monitor_min_requests,
    )
    summary = readout(settings, served, events, training, catalogue, thresholds)
    log.info("monitoring %s .. %s: %d rows, breaches: %s", start, end, len(served), summary["breaches"])
    return summary


def check_thresholds(summary: dict[str, Any]) -> dict[str, Any]:
    """Raise MonitoringAlert listing every crossed threshold (the failure callback alerts)."""
    from models.monitoring.readout import raise_for_breaches

    raise_for_breaches(summary.get("breaches") or [])
    return {"breaches": 0}


def new_champions(decisions: dict[str, Any]) -> dict[str, str]:
    """Registered model -> version, for each model whose `champion` alias moved in this register."""
    return {d["model"]: d["version"] for d in decisions.values() if d.get("champion_changed")}


def warm_start(settings: Settings | None = None) -> dict[str, Any]:
    """Continuous learning: continue each champion on the newest partition (the validation day,
    which full training only used to stop early), then evaluate and gate it exactly like a full
    retrain. A registry without a champion of a kind skips that kind."""
    from models.evaluation.metrics import PopularityBaseline, ctr_metrics
    from models.registry import (
        CHAMPION,
        NoChampionError,
        load_by_alias,
        log_candidate,
        model_name,
        promote_if_better,
    )
    from models.scoring import WIDE_DEEP, XGBOOST, ScoringModel

    settings = settings or get_settings()
    split = _split(settings)
    features, fingerprint = _service_binding(settings)
    newest = split.valid.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)
    cut = int(len(newest) * 0.8)
    fit_rows, stop_rows = newest.iloc[:cut], newest.iloc[cut:]
    y_fit, y_stop = fit_rows[LABEL].to_numpy(), stop_rows[LABEL].to_numpy()
    y, users = split.test[LABEL].to_numpy(), split.test[USER_ID].to_numpy()
    popularity_auc = ctr_metrics(
        y, PopularityBaseline().fit(split.train, split.train[LABEL]).predict(split.test)
    )["auc"]
    results: dict[str, Any] = {}
    for kind in (XGBOOST, WIDE_DEEP):
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
        if kind == XGBOOST:
            from models.features.training_set import feature_matrix
            from models.kinds.xgb import continue_xgb

            trained = continue_xgb(
                champion.scorer.model,
                feature_matrix(fit_rows, features),
                y_fit,
                feature_matrix(stop_rows, features),
                y_stop,
                features,
                seed=settings.seed,
            )
            native, extra = (
                trained.model,
                {"best_iteration": trained.best_iteration, "params": trained.params},
            )
            history = trained.history
        else:
            from models.kinds.wide_deep import TrainedWideDeep, continue_training

            base = TrainedWideDeep(champion.scorer.model, champion.scorer.spec, {}, 0)
            trained = continue_training(base, fit_rows, y_fit, stop_rows, y_stop)
            native, extra, history = (
                trained.model,
                {"best_epoch": trained.best_epoch, "params": trained.params},
                trained.history,
            )
        meta = {
            "features": features,
            "rows": {"train": len(fit_rows), "valid": len(stop_rows), "test": len(split.test)},
            "device": "continued from champion",
            "continued_from": champion.version,
            "history": history,
            **extra,
        }
        model = ScoringModel(kind, native, features, meta, champion.scorer.spec)
        metrics = ctr_metrics(y, model.predict(split.test), users)
        version = log_candidate(
            settings,
            model,
            split.test,
            y,
            {f"test_{k}": v for k, v in _numeric(metrics).items()} | {"auc": metrics["auc"]},
            _lineage(settings, meta, "warm_start"),
            MODEL_FEATURE_SERVICE,
            fingerprint,
            training="warm_start",
        )
        decision = promote_if_better(
            settings, model, version, metrics, split.test, y, fingerprint, popularity_auc
        )
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


def run_all(settings: Settings | None = None) -> dict[str, Any]:
    """Every stage in order, without Airflow (the DAG runs the same functions)."""
    settings = settings or get_settings()
    results = {}
    for stage in STAGES:
        log.info("== %s", stage.__name__)
        results[stage.__name__] = stage(settings)
    return results
