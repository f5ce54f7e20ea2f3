"""The pipeline's stages as plain functions: each reads the previous stage's output from disk and
returns a small JSON-able summary. Airflow tasks, the CLI and the tests all call these."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.contract import (
    CATEGORY_VIEW,
    ITEM_VIEW,
    LABEL,
    LABEL_WINDOW,
    RANKER_FEATURE_SERVICE,
    RECENT_VIEW,
    USER_VIEW,
)
from models.feature_store import write_offline
from models.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _paths(settings: Settings) -> dict[str, Path]:
    return {
        "ingested": settings.lake_dir / "ingested_events.parquet",
        "accepted": settings.lake_dir / "accepted_events.parquet",
        "training": settings.datasets_dir / "training_set.parquet",
        "model": settings.models_dir / "xgb_candidate.ubj",
        "model_meta": settings.models_dir / "xgb_candidate.json",
        "evaluation": settings.models_dir / "xgb_candidate_evaluation.json",
    }


def ingest(settings: Settings | None = None) -> dict[str, Any]:
    """Raw CSV + the live event log (events inside the window) -> canonical events.

    Every line of the CSV is kept (validation judges them); an event both in the CSV and in the log,
    or logged twice, is kept once.
    """
    from feature_repo.contract import EVENT_COLUMNS
    from models.events import SOURCE_ROW, load_events
    from models.ingest import EventLog

    settings = settings or get_settings()
    events = load_events(settings.raw_events)
    logged = EventLog(settings.event_log_dir).read(settings.window_start, settings.window_end)
    if len(logged):
        logged = logged[list(EVENT_COLUMNS)].astype(
            {c: "Int64" for c in ("user_id", "item_id", "category_id")}
        )
        logged.insert(0, SOURCE_ROW, -np.arange(1, len(logged) + 1))  # negative: a row of the event log
        before = len(events) + len(logged)
        events = pd.concat([events, logged], ignore_index=True)
        events = events[~events.duplicated(list(EVENT_COLUMNS), keep="first")].reset_index(drop=True)
        duplicates = before - len(events)
    else:
        duplicates = 0
    write_offline(events, _paths(settings)["ingested"])
    log.info(
        "ingested %d rows from %s and %d from the event log", len(events), settings.raw_events, len(logged)
    )
    return {
        "source": str(settings.raw_events),
        "rows": len(events),
        "event_log_rows": len(logged),
        "duplicates_dropped": duplicates,
    }


def validate(settings: Settings | None = None) -> dict[str, Any]:
    """GX suite over the batch: bad rows to quarantine, a broken batch raises DataValidationError."""
    from models.validate import raise_for_failures, validate_events, write_outcome

    settings = settings or get_settings()
    events = pd.read_parquet(_paths(settings)["ingested"])
    outcome = validate_events(
        events, settings.window_start, settings.window_end, settings.max_bad_row_fraction
    )
    report = write_outcome(outcome, settings.quarantine_dir)
    summary = {**outcome.summary(), "report": str(report)}
    log.info("validation: %s", json.dumps({k: v for k, v in summary.items() if k != "statistics"}))
    raise_for_failures(outcome, report)
    write_offline(outcome.accepted, _paths(settings)["accepted"])
    return summary


def apply_features(settings: Settings | None = None) -> dict[str, Any]:
    from models.feature_store import apply_repo

    settings = settings or get_settings()
    return {"feature_services": apply_repo(settings)}


def build_features(settings: Settings | None = None) -> dict[str, Any]:
    """Daily user/item/category snapshots and the users' short-term state, into the offline sources
    the Feast repo declares."""
    from models.feature_store import open_store, source_path, write_offline_batches
    from models.features import (
        DayGrid,
        category_snapshots,
        item_snapshots,
        recent_activity_batches,
        recent_activity_schema,
        user_snapshots,
    )

    settings = settings or get_settings()
    events = pd.read_parquet(_paths(settings)["accepted"])
    grid = DayGrid.covering(settings.window_start, settings.window_end, settings.timezone)
    store = open_store(settings)
    rows = {}
    for view, build in (
        (USER_VIEW, user_snapshots),
        (ITEM_VIEW, item_snapshots),
        (CATEGORY_VIEW, category_snapshots),
    ):
        frame = build(events, grid)
        write_offline(frame, source_path(store, view))
        rows[view] = len(frame)
    path = write_offline_batches(
        recent_activity_batches(events), recent_activity_schema(), source_path(store, RECENT_VIEW)
    )
    rows[RECENT_VIEW] = _parquet_rows(path)
    return {"rows": rows, "events": len(events), "snapshots": len(grid.snapshot_times)}


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def materialize(settings: Settings | None = None) -> dict[str, Any]:
    """Load the newest snapshot of every entity into the online store."""
    from models.feature_store import materialize as feast_materialize
    from models.feature_store import open_store

    settings = settings or get_settings()
    store = open_store(settings)
    feast_materialize(store, settings.window_start, settings.window_end)
    return {"start": settings.window_start.isoformat(), "end": settings.window_end.isoformat()}


def build_training_set(settings: Settings | None = None) -> dict[str, Any]:
    """Label page views and join their features point-in-time through the FeatureService."""
    from models.dataset import join_features
    from models.feature_store import open_store
    from models.labels import label_page_views

    settings = settings or get_settings()
    events = pd.read_parquet(_paths(settings)["accepted"])
    labelled = label_page_views(events, LABEL_WINDOW, settings.window_end)
    store = open_store(settings)
    frame = join_features(store, labelled, store.get_feature_service(RANKER_FEATURE_SERVICE))
    write_offline(frame, _paths(settings)["training"])
    return {
        "rows": len(frame),
        "positives": int(frame[LABEL].sum()),
        "positive_rate": float(frame[LABEL].mean()),
    }


def _split(settings: Settings):
    from models.dataset import split_by_time

    frame = pd.read_parquet(_paths(settings)["training"])
    return split_by_time(frame, settings.valid_start, settings.test_start)


def _service_binding(settings: Settings) -> tuple[list[str], str]:
    from models.feature_store import feature_names, fingerprint, open_store

    service = open_store(settings).get_feature_service(RANKER_FEATURE_SERVICE)
    return feature_names(service), fingerprint(service)


def train(settings: Settings | None = None) -> dict[str, Any]:
    """XGBoost on the training days, early-stopped on the validation day."""
    from models.dataset import feature_matrix
    from models.device import resolve_device
    from models.xgb import train_xgb

    settings = settings or get_settings()
    split = _split(settings)
    features, _ = _service_binding(settings)
    device = resolve_device(settings.device)
    trained = train_xgb(
        feature_matrix(split.train, features),
        split.train[LABEL].to_numpy(),
        feature_matrix(split.valid, features),
        split.valid[LABEL].to_numpy(),
        features,
        device=device,
        seed=settings.seed,
    )
    paths = _paths(settings)
    paths["model"].parent.mkdir(parents=True, exist_ok=True)
    trained.model.save_model(paths["model"])
    meta = {
        "features": features,
        "params": dict(trained.params),
        "best_iteration": trained.best_iteration,
        "history": trained.history,
        "rows": {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)},
        "device": device,
    }
    paths["model_meta"].write_text(json.dumps(meta, indent=2))
    return {k: meta[k] for k in ("best_iteration", "rows", "device")}


def _load_candidate(settings: Settings):
    import xgboost as xgb

    from models.xgb import TrainedXGB

    paths = _paths(settings)
    meta = json.loads(paths["model_meta"].read_text())
    model = xgb.XGBClassifier()
    model.load_model(paths["model"])
    return TrainedXGB(model, meta["features"], meta["params"], meta["best_iteration"], meta["history"]), meta


def evaluate(settings: Settings | None = None) -> dict[str, Any]:
    """AUC and logloss on the test window, for the model and the popularity baseline."""
    from models.dataset import feature_matrix
    from models.evaluate import PopularityBaseline, ctr_metrics
    from models.xgb import predict_ctr

    settings = settings or get_settings()
    split = _split(settings)
    trained, _ = _load_candidate(settings)
    y_test = split.test[LABEL].to_numpy()
    model = ctr_metrics(y_test, predict_ctr(trained.model, feature_matrix(split.test, trained.features)))
    baseline = PopularityBaseline().fit(split.train, split.train[LABEL].to_numpy())
    popularity = ctr_metrics(y_test, baseline.predict(split.test))
    result = {
        **{f"test_{k}": v for k, v in model.items()},
        **{f"popularity_{k}": v for k, v in popularity.items() if k in ("auc", "logloss")},
        "auc_gain_over_popularity": model["auc"] - popularity["auc"],
    }
    _paths(settings)["evaluation"].write_text(json.dumps(result, indent=2))
    log.info("evaluation: %s", json.dumps(result))
    return result


def register(settings: Settings | None = None) -> dict[str, Any]:
    """Log the candidate to MLflow as `challenger`; promote it to `champion` if it beats the champion."""
    from models.dataset import feature_matrix
    from models.registry import log_candidate, promote_if_better

    settings = settings or get_settings()
    paths = _paths(settings)
    trained, meta = _load_candidate(settings)
    metrics = json.loads(paths["evaluation"].read_text())
    features, fingerprint = _service_binding(settings)
    if features != trained.features:
        raise RuntimeError(
            f"The candidate was trained on {trained.features} but {RANKER_FEATURE_SERVICE} now serves "
            f"{features}; retrain before registering"
        )
    split = _split(settings)
    x_test, y_test = feature_matrix(split.test, features), split.test[LABEL].to_numpy()
    lineage = {
        "source": str(settings.raw_events),
        "window": [settings.window_start.isoformat(), settings.window_end.isoformat()],
        "valid_start": settings.valid_start.isoformat(),
        "test_start": settings.test_start.isoformat(),
        "rows": meta["rows"],
        "label": f"pv followed by cart/fav/buy of the same item by the same user within {LABEL_WINDOW}",
        "feature_service": RANKER_FEATURE_SERVICE,
        "device": meta["device"],
    }
    numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)}
    version = log_candidate(
        settings, trained, x_test, y_test, numeric, lineage, RANKER_FEATURE_SERVICE, fingerprint
    )
    return promote_if_better(settings, version, metrics["test_auc"], x_test, y_test, fingerprint)


STAGES = [
    ingest,
    validate,
    apply_features,
    build_features,
    materialize,
    build_training_set,
    train,
    evaluate,
    register,
]


def run_all(settings: Settings | None = None) -> dict[str, Any]:
    """Every stage in order, without Airflow (the DAG runs the same functions)."""
    settings = settings or get_settings()
    results = {}
    for stage in STAGES:
        log.info("== %s", stage.__name__)
        results[stage.__name__] = stage(settings)
    return results
