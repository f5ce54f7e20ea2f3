"""The MLflow registry as the service reads it: the tracking client, registered model names,
and loading a version by alias with its feature binding.

One registered model per model kind (`ctr-xgboost`, `ctr-wide-deep`), each with its own
`champion` and `challenger`. Every version records the FeatureService it was trained with (name
and fingerprint), so a server can read exactly the features the model expects. Models are stored
in their kind's safe format (XGBoost UBJ, Keras `.keras` in safe mode): nothing is ever
unpickled. Logging and promoting versions is in models.evaluation.promotion.

The promotion gate writes a record on every version it admits (tag `promotion_record`): the
model, version, run, artifact source, FeatureService and its fingerprint, the test-window
metrics, the alias it was admitted for, and an HMAC-SHA256 over all of it with the promotion key
(CTR_PROMOTION_KEY, or a key file beside the embedded SQLite registry). The service serves a
version only when that record is there, is signed with the key and matches the version
(`check_record`): whoever can only write to MLflow can move an alias, but cannot make the
service serve what the gate did not admit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.kinds import kind_of
from models.kinds.packaging import load_native
from models.scoring import XGBOOST, ScoringModel, wrap
from models.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_KIND = "model_kind"
TAG_FEATURE_SERVICE = "feature_service"
TAG_FINGERPRINT = "feature_service_fingerprint"
TAG_FEATURES = "features"
TAG_TRAINING = "training"
# "true" on a model trained on SYNTHETIC data (ctr synth), "false" on real data
TAG_SYNTHETIC = "data.synthetic"
TAG_PROMOTION_RECORD = "promotion_record"
TAG_TEST_AUC = "test_auc"
RECORD_VERSION = 1
PROMOTION_KEY_FILE = "promotion.key"  # beside an embedded SQLite registry, when CTR_PROMOTION_KEY is empty
# Per alias, the records that let a version serve under it: a champion may also be a challenger.
ADMITS = {CHAMPION: {CHAMPION}, CHALLENGER: {CHAMPION, CHALLENGER}}


class NoChampionError(LookupError):
    """The registry has no version with the asked-for alias yet."""


class PromotionKeyError(RuntimeError):
    """No usable promotion key: the gate cannot sign records, nor the service check them."""


class UnpromotedVersionError(RuntimeError):
    """A version the promotion gate did not admit for this alias, or whose record does not match
    it; `reason` is one of missing, malformed, signature, mismatch, alias (the metrics label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ServedModel:
    scorer: ScoringModel
    name: str
    version: str
    feature_service: str
    fingerprint: str

    @property
    def kind(self) -> str:
        return self.scorer.kind

    @property
    def features(self) -> list[str]:
        return self.scorer.features

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.scorer.predict(frame)


def model_name(settings: Settings, kind: str) -> str:
    """The registered model name of a model kind."""
    return getattr(settings, kind_of(kind).registered_name_setting)


def client(settings: Settings):
    """An MlflowClient on the configured tracking store; creates the experiment on first use."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        settings.paths.mlflow.mkdir(parents=True, exist_ok=True)
    tracking = MlflowClient(settings.mlflow_tracking_uri)
    if tracking.get_experiment_by_name(settings.experiment) is None:
        settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
        tracking.create_experiment(
            settings.experiment, artifact_location=settings.mlflow_artifact_root.resolve().as_uri()
        )
    mlflow.set_experiment(settings.experiment)
    return tracking


# --- the promotion record --------------------------------------------------------------------


def _local_registry_dir(tracking_uri: str) -> Path | None:
    """The folder of an embedded registry (sqlite:///file.db, a file store), None for a server."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent
    if tracking_uri.startswith("file:"):
        from urllib.parse import urlparse

        return Path(urlparse(tracking_uri).path)
    if "://" not in tracking_uri:
        return Path(tracking_uri)
    return None


def promotion_key(settings: Settings) -> bytes:
    """The key of the promotion records: CTR_PROMOTION_KEY; else, for an embedded registry only, a
    random key made once in `promotion.key` beside it (mode 0600), which copies of the registry
    folder carry along. A tracking server's clients must share CTR_PROMOTION_KEY (a secret)."""
    if settings.promotion_key:
        return settings.promotion_key.encode()
    folder = _local_registry_dir(settings.mlflow_tracking_uri)
    if folder is None:
        raise PromotionKeyError(
            f"CTR_PROMOTION_KEY is not set: with an MLflow tracking server ({settings.mlflow_tracking_uri}) "
            "the promotion gate and the ranking service must share it, from a secret "
            "(python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    path = folder / PROMOTION_KEY_FILE
    folder.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PromotionKeyError(
                f"{path} is readable by others (mode {mode:o}): chmod 600 it, or set CTR_PROMOTION_KEY"
            ) from None
        key = path.read_text().strip()
        for _ in range(20):  # another process may have created it and not written it yet
            if len(key) >= 32:
                return key.encode()
            time.sleep(0.05)
            key = path.read_text().strip()
        raise PromotionKeyError(f"{path} holds no key: remove it to make a new one") from None
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode()


def _canonical(fields: dict[str, Any]) -> bytes:
    """One byte string per record: sorted keys, no spaces, floats as Python writes them back exactly."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def sign_record(fields: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The record with its HMAC-SHA256 over the canonical form of every other field."""
    body = {k: v for k, v in fields.items() if k != "hmac"}
    return {**body, "hmac": hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()}


def promotion_record(
    name: str,
    version: Any,
    alias: str,
    metrics: dict[str, float],
    key: bytes,
    decided_at: str,
) -> dict[str, Any]:
    """The gate's signed record for `version` (an MLflow ModelVersion), admitted for `alias`."""
    return sign_record(
        {
            "record": RECORD_VERSION,
            "model": name,
            "version": str(version.version),
            "alias": alias,
            "run_id": version.run_id,
            "source": version.source,
            "feature_service": version.tags.get(TAG_FEATURE_SERVICE),
            "fingerprint": version.tags.get(TAG_FINGERPRINT),
            "metrics": {k: float(v) for k, v in sorted(metrics.items())},
            "decided_at": decided_at,
        },
        key,
    )


def _same(a: Any, b: Any) -> bool:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_record(version: Any, alias: str, key: bytes, run_metrics: dict[str, float] | None = None) -> None:
    """Raise UnpromotedVersionError unless `version` (an MLflow ModelVersion) carries a record that
    is signed with `key`, admits it for `alias`, and matches it: name, version, run, source,
    FeatureService and fingerprint, the test AUC on the version and, when given, every metric of
    the record as its run logged it."""
    label = f"{version.name} v{version.version}"
    raw = version.tags.get(TAG_PROMOTION_RECORD)
    if not raw:
        raise UnpromotedVersionError(
            "missing", f"{label} has no promotion record: the promotion gate did not admit it"
        )
    try:
        record = json.loads(raw)
        signature = record["hmac"]
        wanted = sign_record(record, key)["hmac"]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UnpromotedVersionError(
            "malformed", f"{label}: its promotion record is unreadable ({exc})"
        ) from exc
    if not isinstance(signature, str) or not hmac.compare_digest(signature, wanted):
        raise UnpromotedVersionError(
            "signature",
            f"{label}: its promotion record is not signed with the promotion key (CTR_PROMOTION_KEY): "
            "forged, or written with another key",
        )
    expected = {
        "model": version.name,
        "version": str(version.version),
        "run_id": version.run_id,
        "source": version.source,
        "feature_service": version.tags.get(TAG_FEATURE_SERVICE),
        "fingerprint": version.tags.get(TAG_FINGERPRINT),
    }
    differ = [f"{k} {record.get(k)!r} != {v!r}" for k, v in expected.items() if record.get(k) != v]
    metrics = record.get("metrics") or {}
    auc = metrics.get("auc") if isinstance(metrics, dict) else None
    if not isinstance(auc, int | float) or f"{auc:.6f}" != version.tags.get(TAG_TEST_AUC):
        differ.append(f"test AUC {auc!r} != the version's {version.tags.get(TAG_TEST_AUC)!r}")
    for metric, value in metrics.items():
        if run_metrics is not None and not _same(value, run_metrics.get(metric)):
            differ.append(f"metric {metric} {value!r} != the run's {run_metrics.get(metric)!r}")
    if differ:
        raise UnpromotedVersionError(
            "mismatch", f"{label}: its promotion record does not match the version: " + "; ".join(differ)
        )
    if record.get("alias") not in ADMITS.get(alias, set()):
        raise UnpromotedVersionError(
            "alias",
            f"{label} has alias '{alias}', but the promotion gate admitted it as {record.get('alias')!r}",
        )


# --- loading ---------------------------------------------------------------------------------


def load_by_alias(settings: Settings, alias: str = CHAMPION, name: str | None = None) -> ServedModel:
    """Load a registered version by alias (native model, safe formats) with its feature binding."""
    name = name or settings.served_model_name
    return _load(name, aliased_version(settings, alias, name))


def aliased_version(settings: Settings, alias: str = CHAMPION, name: str | None = None) -> Any:
    """The registered version an alias points to, or NoChampionError saying what to run."""
    from mlflow.exceptions import MlflowException

    name = name or settings.served_model_name
    try:
        return client(settings).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise NoChampionError(
            f"No model version of '{name}' has alias '{alias}' in {settings.mlflow_tracking_uri}; "
            "run the training pipeline first (make demo, or the ctr_features then ctr_training DAGs)"
        ) from exc


def load_version(settings: Settings, name: str, version: str) -> ServedModel:
    """Load one registered version exactly as the service would (without the record check: the
    gate loads a version before it decides)."""
    return _load(name, client(settings).get_model_version(name, version))


def load_promoted(settings: Settings, version: Any, alias: str) -> ServedModel:
    """Load `version` (an MLflow ModelVersion, as the alias resolved it) only if the promotion gate
    admitted it for `alias`: its record is checked before anything is downloaded."""
    key = promotion_key(settings)
    check_record(version, alias, key)  # the record alone first: no call for a version without one
    check_record(version, alias, key, logged_metrics(settings, version.run_id))
    return _load(version.name, version)


def logged_metrics(settings: Settings, run_id: str | None) -> dict[str, float]:
    """The metrics a version's run logged (empty without a run)."""
    if not run_id:
        return {}
    return dict(client(settings).get_run(run_id).data.metrics)


def _load(name: str, version: Any) -> ServedModel:
    kind = version.tags.get(TAG_KIND, XGBOOST)
    native = load_native(f"models:/{name}/{version.version}", kind)
    meta = {"features": version.tags[TAG_FEATURES].split(",")}
    return ServedModel(
        scorer=wrap(kind, native, meta),
        name=name,
        version=str(version.version),
        feature_service=version.tags[TAG_FEATURE_SERVICE],
        fingerprint=version.tags[TAG_FINGERPRINT],
    )
