"""The promotion gate on a real MLflow registry (SQLite in a temporary folder): only a sane model
that beats the champion on the same test rows ever becomes `champion`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.evaluation.metrics import ctr_metrics
from models.kinds.xgb import train_xgb
from models.scoring import XGBOOST, ScoringModel

pytestmark = pytest.mark.integration

FEATURES = ["item_pv_7d", "user_cart_7d", "noise"]
FINGERPRINT = "test-fingerprint"


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 300, n),
            "item_pv_7d": rng.poisson(np.exp(rng.normal(2, 1.5, n))).astype(float),
            "user_cart_7d": rng.poisson(1, n).astype(float),
            "noise": rng.normal(size=n),
        }
    )
    logit = -4 + 0.7 * np.log1p(frame["item_pv_7d"]) + 0.5 * frame["user_cart_7d"]
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


TRAIN, VALID, TEST = _rows(20_000, 0), _rows(5_000, 1), _rows(8_000, 2)


def _model(features: list[str], **params) -> ScoringModel:
    from models.features.training_set import feature_matrix

    trained = train_xgb(
        feature_matrix(TRAIN, features),
        TRAIN["label"].to_numpy(),
        feature_matrix(VALID, features),
        VALID["label"].to_numpy(),
        features,
        **params,
    )
    meta = {"features": features, "params": trained.params, "history": trained.history}
    return ScoringModel(XGBOOST, trained.model, features, meta)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from models.settings import get_settings

    return get_settings


def _submit(settings, model: ScoringModel) -> dict:
    from models.evaluation.promotion import log_candidate, promote_if_better

    y = TEST["label"].to_numpy()
    metrics = ctr_metrics(y, model.predict(TEST), TEST["user_id"].to_numpy())
    version = log_candidate(settings, model, TEST, y, metrics, {"rows": len(TRAIN)}, "svc_v1", FINGERPRINT)
    popularity_auc = 0.55
    return promote_if_better(settings, model, version, metrics, TEST, y, FINGERPRINT, popularity_auc)


def test_first_model_is_promoted_and_a_worse_or_equal_one_never_is(registry):
    from models.registry import CHALLENGER, client, load_by_alias

    settings = registry()
    first = _submit(settings, _model(FEATURES))
    assert first["promoted"] and first["reason"].startswith("first model in an empty registry")

    # Trained without the strongest feature: lower AUC on the same rows.
    worse = _submit(settings, _model(["user_cart_7d", "noise"]))
    assert not worse["promoted"] and worse["candidate_auc"] < worse["champion_auc"]
    equal = _submit(settings, _model(FEATURES))
    assert not equal["promoted"] and "<= required" in equal["reason"]

    champion = load_by_alias(settings, name="ctr-xgboost")
    assert champion.version == "1"
    tracking = client(settings)
    assert str(tracking.get_model_version_by_alias("ctr-xgboost", CHALLENGER).version) == "3"
    assert "<= required" in tracking.get_model_version("ctr-xgboost", "2").tags["promotion"]
    # The champion as loaded back scores exactly as the model that was logged.
    np.testing.assert_allclose(champion.predict(TEST), _model(FEATURES).predict(TEST), rtol=1e-6)


def test_a_model_with_good_auc_but_inflated_probabilities_is_not_promoted(registry):
    settings = registry()
    _submit(settings, _model(FEATURES))
    # Up-weighting positives 30x ranks as well but predicts rates far above the observed ones.
    decision = _submit(settings, _model(FEATURES, scale_pos_weight=30.0))
    assert decision["candidate_auc"] > 0.7
    assert not decision["promoted"]
    assert "calibration error" in decision["reason"]
    assert "mean prediction / positive rate" in decision["reason"]
    # It serves no user either: the challenger alias is taken away.
    from models.registry import CHALLENGER, client

    aliases = client(settings).get_registered_model("ctr-xgboost").aliases
    assert CHALLENGER not in aliases


def test_a_model_over_the_latency_budget_is_not_promoted(registry, monkeypatch):
    monkeypatch.setenv("CTR_SCORING_BUDGET_MS", "0.001")
    decision = _submit(registry(), _model(FEATURES))
    assert not decision["promoted"] and "CTR_SCORING_BUDGET_MS" in decision["reason"]


def test_nan_scores_and_a_model_no_better_than_popularity_fail_the_sanity_checks(registry):
    from models.evaluation.promotion import sanity_failures

    model = _model(FEATURES)
    y = TEST["label"].to_numpy()
    scores = model.predict(TEST)
    metrics = ctr_metrics(y, scores)
    scores[:7] = np.nan
    failures = sanity_failures(registry(), model, TEST, metrics, scores, popularity_auc=0.99)
    assert any("7 of 8000 test scores are NaN" in f for f in failures)
    assert any("does not beat the popularity baseline 0.9900" in f for f in failures)


def test_a_version_whose_artifact_cannot_be_loaded_is_never_promoted(registry):
    import shutil
    from pathlib import Path
    from urllib.parse import urlparse

    from models.evaluation.promotion import log_candidate, promote_if_better
    from models.registry import CHALLENGER, client

    settings = registry()
    model = _model(FEATURES)
    y = TEST["label"].to_numpy()
    metrics = ctr_metrics(y, model.predict(TEST), TEST["user_id"].to_numpy())
    version = log_candidate(settings, model, TEST, y, metrics, {"rows": len(TRAIN)}, "svc_v1", FINGERPRINT)
    tracking = client(settings)
    # The artifact store lost the model files (a failed upload, a wiped bucket).
    source = tracking.get_model_version_download_uri("ctr-xgboost", version)
    shutil.rmtree(Path(urlparse(source).path))

    decision = promote_if_better(settings, model, version, metrics, TEST, y, FINGERPRINT, 0.55)
    assert not decision["promoted"]
    assert f"the registered artifact of ctr-xgboost v{version} cannot be loaded" in decision["reason"]
    aliases = tracking.get_registered_model("ctr-xgboost").aliases
    assert "champion" not in aliases and CHALLENGER not in aliases


def test_a_version_that_only_the_project_could_load_is_never_promoted(registry):
    """The native file is intact, so the service's own loader works; but the scoring code shipped
    with the version is gone, so `mlflow.pyfunc` consumers could not use it."""
    from pathlib import Path
    from urllib.parse import urlparse

    from models.evaluation.promotion import log_candidate, promote_if_better
    from models.registry import client, load_version

    settings = registry()
    model = _model(FEATURES)
    y = TEST["label"].to_numpy()
    metrics = ctr_metrics(y, model.predict(TEST), TEST["user_id"].to_numpy())
    version = log_candidate(settings, model, TEST, y, metrics, {"rows": len(TRAIN)}, "svc_v1", FINGERPRINT)
    source = Path(urlparse(client(settings).get_model_version_download_uri("ctr-xgboost", version)).path)
    (source / "code/models/scoring.py").unlink()
    load_version(settings, "ctr-xgboost", version).predict(TEST)  # the service could still load it

    decision = promote_if_better(settings, model, version, metrics, TEST, y, FINGERPRINT, 0.55)
    assert not decision["promoted"]
    assert f"ctr-xgboost v{version} cannot be loaded and scored through mlflow.pyfunc" in decision["reason"]
