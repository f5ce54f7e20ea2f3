"""Every model kind behind one protocol: each fits, saves, loads back to the same scores and
explains itself; and a new kind, one that reads a behaviour sequence (lists of recent item ids),
works through scoring, explanations, the registry's naming and the test table without any of
them changing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_repo.contract import ITEM_ID, LABEL, RECENT_ITEMS, USER_ID
from models import explain, registry, scoring
from models.evaluation import report
from models.features.training_set import Split
from models.kinds import KINDS, kind_of
from models.kinds.base import Fitted, logit
from models.training.fit import train_kind

FEATURES = ["item_pv_7d", "user_cart_7d"]


def _rows(n: int, seed: int) -> pd.DataFrame:
    """Purchase intent driven by item popularity and by the item being in the user's recent items."""
    rng = np.random.default_rng(seed)
    items = rng.integers(1, 400, n)
    recent = [list(rng.integers(1, 400, 5)) + ([int(i)] if rng.random() < 0.3 else []) for i in items]
    seen = np.array([int(i) in r for i, r in zip(items, recent, strict=True)])
    views = rng.poisson(np.exp(rng.normal(2, 1.2, n))).astype(np.float32)
    p = 1 / (1 + np.exp(-(-3 + 0.7 * np.log1p(views) + 1.5 * seen)))
    return pd.DataFrame(
        {
            USER_ID: rng.integers(1_000, 1_300, n),
            ITEM_ID: items,
            "category_id": items % 17,
            "item_pv_7d": views,
            "user_cart_7d": rng.poisson(1, n).astype(np.float32),
            RECENT_ITEMS: recent,
            LABEL: (rng.random(n) < p).astype(np.int8),
        }
    )


SPLIT = Split(train=_rows(6_000, 0), valid=_rows(2_000, 1), test=_rows(2_000, 2))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_fits_saves_loads_to_the_same_scores_and_explains(kind, tmp_path):
    model, summary = train_kind(kind, SPLIT, FEATURES, device="cpu", seed=3)
    assert model.meta["rows"] == {"train": 6_000, "valid": 2_000, "test": 2_000}
    assert model.meta["features"] == FEATURES and model.meta["device"] == "cpu"
    assert summary and set(summary) <= set(model.meta)
    scores = model.predict(SPLIT.test)
    auc = report.ctr_metrics(SPLIT.test[LABEL].to_numpy(), scores)["auc"]
    assert auc > 0.6, (kind, auc)  # it learnt popularity

    model.save(tmp_path / kind)
    loaded = scoring.load_saved(tmp_path / kind)
    assert loaded.kind == kind and loaded.features == FEATURES
    np.testing.assert_allclose(loaded.predict(SPLIT.test), scores, rtol=1e-6)
    # request-sized frames score the same as whole sets
    np.testing.assert_allclose(loaded.predict(SPLIT.test.head(100)), scores[:100], rtol=1e-5, atol=1e-7)

    top = explain.top_contributions(loaded, SPLIT.test.head(3), top=1)
    assert [len(t) for t in top] == [1, 1, 1] and {t[0]["feature"] for t in top} <= set(FEATURES)


def test_an_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model kind 'gbdt'.*xgboost.*wide_deep"):
        kind_of("gbdt")
    with pytest.raises(ValueError, match="unknown model kind"):
        scoring.wrap("gbdt", object(), {})


class RecentItemKind:
    """A behaviour-sequence kind in miniature: a logistic model of popularity and of whether the
    candidate is among the user's recent items (a list-valued feature)."""

    name = "recent_items"
    model_file = "model.json"
    registered_name_setting = "served_model_name"
    history_unit = "step"
    pip_packages = ("scikit-learn",)

    @staticmethod
    def _x(frame: pd.DataFrame) -> np.ndarray:
        seen = [int(i) in set(r) for i, r in zip(frame[ITEM_ID], frame[RECENT_ITEMS], strict=True)]
        return np.column_stack([np.log1p(frame["item_pv_7d"].to_numpy(np.float64)), np.array(seen, float)])

    def fit(self, train, valid, features, *, device, seed) -> Fitted:
        from sklearn.linear_model import LogisticRegression

        fitted = LogisticRegression().fit(self._x(train), train[LABEL])
        weights = [float(fitted.intercept_[0]), *map(float, fitted.coef_[0])]
        return Fitted(model=weights, summary={"weights": weights})

    def fine_tune(self, model, train, valid, *, seed) -> Fitted:
        return self.fit(train, valid, model.features, device="cpu", seed=seed)

    def save(self, model: Any, path: Path) -> None:
        path.write_text(json.dumps(model))

    def load(self, path: Path) -> Any:
        return json.loads(path.read_text())

    def spec_of(self, model, meta):
        return list(meta["features"]), None

    def scorer(self, model):
        w = np.asarray(model.model)
        return lambda frame: 1 / (1 + np.exp(-(w[0] + self._x(frame) @ w[1:])))

    def contributions(self, model, frame):
        base = logit(model.predict(frame))
        alone = frame.assign(**{RECENT_ITEMS: [[] for _ in range(len(frame))]})
        return pd.DataFrame({RECENT_ITEMS: base - logit(model.predict(alone))}, index=frame.index)

    def importance(self, model, test, y, p):
        return {"weight": {"popularity": model.model[1], RECENT_ITEMS: model.model[2]}}

    def load_from_mlflow(self, uri):
        raise NotImplementedError


def test_a_new_kind_reading_a_behaviour_sequence_needs_only_its_module_and_a_registry_line(
    monkeypatch, tmp_path
):
    monkeypatch.setitem(KINDS, RecentItemKind.name, RecentItemKind())  # the registry line

    model, summary = train_kind(RecentItemKind.name, SPLIT, FEATURES, device="cpu", seed=0)
    assert summary["weights"][2] > 1.0  # it found the sequence signal
    model.save(tmp_path / "m")
    loaded = scoring.load_saved(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict(SPLIT.test), model.predict(SPLIT.test))

    table = report.test_table(SPLIT, {RecentItemKind.name: loaded}, FEATURES, seed=0, baseline_rows=10**6)
    assert table[RecentItemKind.name]["auc"] > table[report.POPULARITY]["auc"] + 0.03

    candidates = pd.DataFrame(
        {ITEM_ID: [7, 8], "item_pv_7d": [5.0, 5.0], RECENT_ITEMS: [[1, 7], [1, 7]], USER_ID: [1, 1]}
    )
    top = explain.top_contributions(loaded, candidates, top=1)
    assert top[0][0]["contribution"] > 1.0 and abs(top[1][0]["contribution"]) < 1e-9

    from models.settings import get_settings

    settings = get_settings()
    assert registry.model_name(settings, RecentItemKind.name) == settings.served_model_name
