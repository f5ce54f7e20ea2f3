"""The promotion gate's signed record: what makes a version servable, and every way a record that
someone who can only write to MLflow could make is refused."""

from __future__ import annotations

import json
import stat

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from models.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_PROMOTION_RECORD,
    PromotionKeyError,
    UnpromotedVersionError,
    check_record,
    promotion_key,
    promotion_record,
    sign_record,
)

KEY = b"k" * 32
METRICS = {"auc": 0.661963, "test_auc": 0.661963, "test_logloss": 0.1234567891234}
RUN_METRICS = {**METRICS, "popularity_auc": 0.6}


def _version(number: str = "3", record: dict | None = None, **tags: str) -> ModelVersion:
    base = {
        "feature_service": "ctr_ranker_realtime_v1",
        "feature_service_fingerprint": "abc123",
        "test_auc": "0.661963",
        **tags,
    }
    if record is not None:
        base[TAG_PROMOTION_RECORD] = json.dumps(record)
    return ModelVersion(
        name="ctr-xgboost",
        version=number,
        creation_timestamp=0,
        run_id="run-1",
        source="models:/m-1",
        tags=[ModelVersionTag(k, v) for k, v in base.items()],
    )


def _record(alias: str = CHAMPION, key: bytes = KEY, number: str = "3", **changes) -> dict:
    record = promotion_record(
        "ctr-xgboost", _version(number), alias, METRICS, key, "2026-12-01T00:00:00+00:00"
    )
    if changes:
        record = sign_record({**record, **changes}, key)
    return record


def _refusal(version: ModelVersion, alias: str = CHAMPION, metrics: dict | None = RUN_METRICS) -> str:
    with pytest.raises(UnpromotedVersionError) as refused:
        check_record(version, alias, KEY, metrics)
    return refused.value.reason


def test_a_gate_record_admits_its_version_for_its_alias():
    check_record(_version(record=_record()), CHAMPION, KEY, RUN_METRICS)
    check_record(_version(record=_record()), CHALLENGER, KEY, RUN_METRICS)  # a champion may challenge
    check_record(_version(record=_record(CHALLENGER)), CHALLENGER, KEY, RUN_METRICS)


def test_a_version_the_gate_did_not_admit_is_refused():
    assert _refusal(_version()) == "missing"
    assert _refusal(_version(record=_record(CHALLENGER)), CHAMPION) == "alias"  # sane, not better
    assert _refusal(_version(**{TAG_PROMOTION_RECORD: "{not json"})) == "malformed"


def test_a_forged_or_edited_record_is_refused():
    assert _refusal(_version(record=_record(key=b"x" * 32))) == "signature"  # another key
    edited = {**_record(CHALLENGER), "alias": CHAMPION}  # promoted by hand, old signature
    assert _refusal(_version(record=edited)) == "signature"
    assert _refusal(_version(record={**_record(), "hmac": ""})) == "signature"
    assert _refusal(_version(record={k: v for k, v in _record().items() if k != "hmac"})) == "malformed"


def test_a_genuine_record_on_another_version_or_with_other_metrics_is_refused():
    # The record of v3, signed with the right key, copied onto v4
    assert _refusal(_version("4", record=_record())) == "mismatch"
    # Signed with the key (a key holder's mistake), but not what the version's run measured
    better = _record(metrics={**METRICS, "auc": 0.9, "test_auc": 0.9})
    assert _refusal(_version(record=better)) == "mismatch"
    assert _refusal(_version(record=_record(), test_auc="0.700000")) == "mismatch"
    assert _refusal(_version(record=_record()), metrics={**RUN_METRICS, "test_logloss": 0.2}) == "mismatch"
    other_features = _version(record=_record(), feature_service_fingerprint="def456")
    assert _refusal(other_features) == "mismatch"
    with pytest.raises(UnpromotedVersionError, match="fingerprint 'abc123' != 'def456'"):
        check_record(other_features, CHAMPION, KEY, RUN_METRICS)


def test_the_embedded_key_is_made_once_beside_the_registry_readable_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CTR_PROMOTION_KEY", raising=False)
    from models.settings import get_settings

    settings = get_settings()
    key = promotion_key(settings)
    path = tmp_path / "mlflow/promotion.key"
    assert len(key) == 64 and path.read_text().strip().encode() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert promotion_key(get_settings()) == key  # the same key for every later reader
    path.chmod(0o644)
    with pytest.raises(PromotionKeyError, match="readable by others"):
        promotion_key(settings)
    path.chmod(0o600)
    path.write_text("")  # cut short: never taken for a key
    with pytest.raises(PromotionKeyError, match="holds no key"):
        promotion_key(settings)


def test_a_tracking_server_needs_the_shared_key(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.delenv("CTR_PROMOTION_KEY", raising=False)
    from models.settings import get_settings

    with pytest.raises(PromotionKeyError, match="CTR_PROMOTION_KEY is not set"):
        promotion_key(get_settings())
    monkeypatch.setenv("CTR_PROMOTION_KEY", "short")
    with pytest.raises(ValueError, match="CTR_PROMOTION_KEY is too short"):
        get_settings()
    monkeypatch.setenv("CTR_PROMOTION_KEY", "s" * 40)
    assert promotion_key(get_settings()) == b"s" * 40
    assert "s" * 40 not in repr(get_settings())
    assert not (tmp_path / "mlflow").exists()
