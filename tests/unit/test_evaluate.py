import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from models.evaluation.metrics import (
    LogisticBaseline,
    ctr_metrics,
    expected_calibration_error,
    ranking_metrics,
)


def test_calibration_error_is_zero_when_predictions_match_observed_rates_and_the_gap_otherwise():
    rng = np.random.default_rng(0)
    p = np.repeat([0.01, 0.05, 0.2], 20_000)
    y = rng.random(len(p)) < p
    assert expected_calibration_error(y, p, bins=3) < 0.003
    # Predicting twice the true rate is off by the mean rate, 0.0867.
    assert expected_calibration_error(y, 2 * p, bins=3) == pytest.approx(p.mean(), abs=0.003)


def test_ranking_metrics_on_hand_checked_users():
    users = np.array(["a"] * 4 + ["b"] * 3 + ["c"] * 2)
    y = np.array([1, 0, 0, 0, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.5, 0.4])
    m = ranking_metrics(users, y, p, k=2)
    # a: positive ranked first (AUC 1, NDCG 1, hit); b: positive ranked last of 3 (AUC 0, outside
    # the top 2); c has no positive and counts for none of the metrics.
    assert m["gauc"] == pytest.approx((4 * 1.0 + 3 * 0.0) / 7)
    assert m["ndcg_at_2"] == pytest.approx(0.5)
    assert m["hitrate_at_2"] == pytest.approx(0.5)
    assert m["ranking_users"] == 2


def test_gauc_equals_the_row_weighted_mean_of_per_user_sklearn_aucs():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 30, 3000)
    y = rng.random(3000) < 0.2
    p = rng.random(3000) + 0.3 * y
    frame = pd.DataFrame({"u": users, "y": y, "p": p})
    aucs, weights = [], []
    for _, g in frame.groupby("u"):
        if 0 < g.y.sum() < len(g):
            aucs.append(roc_auc_score(g.y, g.p))
            weights.append(len(g))
    assert ranking_metrics(users, y, p)["gauc"] == pytest.approx(np.average(aucs, weights=weights))


def test_logistic_baseline_learns_a_log_scaled_count_and_ctr_metrics_reports_it():
    rng = np.random.default_rng(2)
    views = rng.poisson(np.exp(rng.normal(2, 1.5, 20_000)))
    truth = 1 / (1 + np.exp(-(np.log1p(views) - 4)))
    y = rng.random(len(views)) < truth
    frame = pd.DataFrame({"item_pv_7d": views.astype(float), "noise": rng.normal(size=len(views))})
    frame.loc[::50, "item_pv_7d"] = np.nan  # missing features are read as zero activity
    p = LogisticBaseline(["item_pv_7d", "noise"]).fit(frame, y).predict(frame)
    seen = frame["item_pv_7d"].notna().to_numpy()
    metrics = ctr_metrics(y[seen], p[seen], users=np.arange(seen.sum()) % 100)
    assert metrics["auc"] > roc_auc_score(y[seen], truth[seen]) - 0.005 and metrics["ece"] < 0.01
    zero_views = LogisticBaseline(["item_pv_7d", "noise"]).fit(frame, y)
    zeroed = frame.assign(item_pv_7d=frame["item_pv_7d"].fillna(0))
    np.testing.assert_allclose(p[~seen], zero_views.predict(zeroed)[~seen])
    assert {"gauc", "ndcg_at_10", "hitrate_at_10"} <= set(metrics)
