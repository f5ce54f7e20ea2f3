"""Training one model kind on the training set: the kind fits, this records what it was trained
on (rows, device, time, seed, features) so that every saved model says how it was made."""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict, dataclass
from typing import Any

from feature_repo.contract import LABEL_WINDOW, MODEL_FEATURE_SERVICE
from models.data.synth import is_synthetic
from models.features.training_set import Split
from models.kinds import kind_of
from models.kinds.base import Fitted
from models.scoring import ScoringModel
from models.settings import Settings
from models.training.device import DeviceChoice

log = logging.getLogger(__name__)

LABEL_DEFINITION = f"pv followed by cart/fav/buy of the same item by the same user within {LABEL_WINDOW}"


# MLflow tags (and keys of the model's meta["placement"]) saying where a model was trained.
TAG_WORKER_HOST = "worker_host"
TAG_WORKER_QUEUE = "worker_queue"
TAG_DEVICE = "device"
TAG_DEVICE_REQUESTED = "device_requested"
TAG_DEVICE_REASON = "device_reason"
NO_QUEUE = "none (not run by Airflow)"


@dataclass(frozen=True)
class Placement:
    """Where a model was trained: the worker host and the Airflow queue of the task that trained
    it, and the device with the reason it was chosen. A GPU worker that trained on the CPU shows
    here, in the task log and in the MLflow run, never only in a worker's own output."""

    worker_host: str
    worker_queue: str
    device: str
    device_requested: str
    device_reason: str

    @classmethod
    def of(cls, choice: DeviceChoice, host: str = "", queue: str = "") -> Placement:
        """`host` and `queue` as Airflow recorded them for the task; outside Airflow, this
        machine's name and no queue."""
        return cls(
            host or socket.getfqdn(), queue or NO_QUEUE, choice.device, choice.requested, choice.reason
        )

    def tags(self) -> dict[str, str]:
        return asdict(self)


def placement_tags(meta: dict[str, Any]) -> dict[str, str]:
    """The placement a model's meta records, as MLflow tags ({} for a model without one)."""
    return {key: str(value) for key, value in (meta.get("placement") or {}).items()}


# Key of the negative keep rate in a model's meta, its params (an MLflow param) and its lineage.
NEGATIVE_SAMPLE_RATE = "negative_sample_rate"


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
    kind: str,
    split: Split,
    features: list[str],
    device: str,
    seed: int,
    placement: Placement | None = None,
    negative_sample_rate: float = 1.0,
) -> tuple[ScoringModel, dict[str, Any]]:
    """Fit `kind` on the split's training days (frames or Rows streamed from Parquet),
    early-stopped on its validation day; returns the model and the kind's own summary of the fit
    (best round or epoch, throughput). `placement`, when given, is logged before the fit and saved
    in the model's meta. Rows whose negatives were kept at `negative_sample_rate` < 1 give a model
    whose probabilities are corrected inside it (ModelKind.correct_sampling) to the unsampled rate."""
    if placement is not None:
        where = f"{kind} on worker {placement.worker_host} (queue {placement.worker_queue}), device {device}"
        if placement.device_requested == "cuda" and device != "cuda":
            log.warning("%s: %s", where, placement.device_reason)
        else:
            log.info("%s: %s", where, placement.device_reason)
    adapter = kind_of(kind)
    fitted = adapter.fit(split.train, split.valid, features, device=device, seed=seed)
    facts: dict[str, Any] = {"placement": placement.tags()} if placement is not None else {}
    if negative_sample_rate < 1.0:
        fitted.model = adapter.correct_sampling(fitted.model, negative_sample_rate)
        fitted.params = {**fitted.params, NEGATIVE_SAMPLE_RATE: negative_sample_rate}
        facts[NEGATIVE_SAMPLE_RATE] = negative_sample_rate
    meta = training_meta(
        fitted,
        features,
        rows=split_rows(split),
        device=device,
        train_seconds=round(fitted.seconds, 3),
        seed=seed,
        **facts,
    )
    log.info("%s: %s, %.1f s on %s", kind, fitted.summary, fitted.seconds, device)
    return ScoringModel(kind, fitted.model, features, meta, fitted.spec), dict(fitted.summary)


def lineage(settings: Settings, meta: dict[str, Any], training: str) -> dict[str, Any]:
    """Where a model's training rows came from, logged with its MLflow run."""
    return {
        "source": str(settings.raw_events),
        # SYNTHETIC data (ctr synth) says so wherever a model trained on it is shown
        "synthetic": is_synthetic(settings.raw_events),
        "window": [settings.window_start.isoformat(), settings.window_end.isoformat()],
        "valid_start": settings.valid_start.isoformat(),
        "test_start": settings.test_start.isoformat(),
        "rows": meta["rows"],
        "label": LABEL_DEFINITION,
        "feature_service": MODEL_FEATURE_SERVICE,
        "device": meta["device"],
        NEGATIVE_SAMPLE_RATE: meta.get(NEGATIVE_SAMPLE_RATE, 1.0),
        **({"placement": meta["placement"]} if meta.get("placement") else {}),
        "training": training,
    }
