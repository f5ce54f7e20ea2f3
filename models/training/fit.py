"""Training one model kind on the training set: the kind fits, this records what it was trained
on (rows, device, time, seed, features) so that every saved model says how it was made."""

from __future__ import annotations

import logging
from typing import Any

from feature_repo.contract import LABEL_WINDOW, MODEL_FEATURE_SERVICE
from models.features.training_set import Split
from models.kinds import kind_of
from models.kinds.base import Fitted
from models.scoring import ScoringModel
from models.settings import Settings

log = logging.getLogger(__name__)

LABEL_DEFINITION = f"pv followed by cart/fav/buy of the same item by the same user within {LABEL_WINDOW}"


def split_rows(split: Split) -> dict[str, int]:
    return {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)}


def training_meta(fitted: Fitted, features: list[str], **facts: Any) -> dict[str, Any]:
    """The meta saved with a model: the given facts, its features and what its fit reported."""
    return {
        **facts,
        "features": features,
        "params": fitted.params,
        **fitted.summary,
        "history": fitted.history,
        **fitted.record,
    }


def train_kind(
    kind: str, split: Split, features: list[str], device: str, seed: int
) -> tuple[ScoringModel, dict[str, Any]]:
    """Fit `kind` on the split's training days, early-stopped on its validation day; returns the
    model and the kind's own summary of the fit (best round or epoch, throughput)."""
    fitted = kind_of(kind).fit(split.train, split.valid, features, device=device, seed=seed)
    meta = training_meta(
        fitted,
        features,
        rows=split_rows(split),
        device=device,
        train_seconds=round(fitted.seconds, 3),
        seed=seed,
    )
    log.info("%s: %s, %.1f s on %s", kind, fitted.summary, fitted.seconds, device)
    return ScoringModel(kind, fitted.model, features, meta, fitted.spec), dict(fitted.summary)


def lineage(settings: Settings, meta: dict[str, Any], training: str) -> dict[str, Any]:
    """Where a model's training rows came from, logged with its MLflow run."""
    return {
        "source": str(settings.raw_events),
        "window": [settings.window_start.isoformat(), settings.window_end.isoformat()],
        "valid_start": settings.valid_start.isoformat(),
        "test_start": settings.test_start.isoformat(),
        "rows": meta["rows"],
        "label": LABEL_DEFINITION,
        "feature_service": MODEL_FEATURE_SERVICE,
        "device": meta["device"],
        "training": training,
    }
