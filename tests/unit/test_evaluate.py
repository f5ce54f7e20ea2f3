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


def _views(n: int, seed: int) -> pd.DataFrame:
    """Labelled views whose purchase odds grow with the item's log views: what the baselines learn."""
    rng = np.random.default_rng(seed)
    views = rng.poisson(np.exp(rng.normal(2, 1.5, n))).astype(float)
    truth = 1 / (1 + np.exp(-(np.log1p(views) - 4)))
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 300, n),
            "item_pv_7d": views,
            "noise": rng.normal(size=n),
            "label": (rng.random(n) < truth).astype(np.int64),
        }
    )


def test_sampled_rows_come_with_their_positions_across_blocks_and_are_all_rows_when_few():
    from models.evaluation.streamed import sample_rows
    from models.kinds.rows import FrameRows

    frame = _views(10_000, 3)
    rows = FrameRows(frame, block_size=777)
    sample, at = sample_rows(rows, 1_000, seed=5)
    assert len(sample) == 1_000 and len(set(at)) == 1_000 and np.all(np.diff(at) > 0)
    pd.testing.assert_frame_equal(sample, frame.iloc[at].reset_index(drop=True))
    again, at_again = sample_rows(rows, 1_000, seed=5)
    assert np.array_equal(at, at_again)
    whole, every = sample_rows(rows, 10_000, seed=5)
    pd.testing.assert_frame_equal(whole, frame)
    assert np.array_equal(every, np.arange(10_000))


def test_the_test_table_scored_block_by_block_equals_scoring_the_whole_frame():
    from models.evaluation.report import LOGISTIC, POPULARITY, test_table
    from models.features.training_set import Split
    from models.kinds.rows import FrameRows

    train, test = _views(30_000, 4), _views(12_000, 5)
    model = LogisticBaseline(["item_pv_7d"]).fit(train, train["label"].to_numpy())
    split = Split(train=FrameRows(train, 4_096), valid=train.head(0), test=FrameRows(test, 1_000))
    table = test_table(split, {"model": model}, ["item_pv_7d", "noise"], seed=0, baseline_rows=10**9)
    y, users = test["label"].to_numpy(), test["user_id"].to_numpy()
    assert table["model"] == ctr_metrics(y, model.predict(test), users)
    whole = LogisticBaseline(["item_pv_7d", "noise"], seed=0).fit(train, train["label"].to_numpy())
    assert table[LOGISTIC] == ctr_metrics(y, whole.predict(test), users)
    assert set(table) == {"model", POPULARITY, LOGISTIC} and table["model"]["rows"] == 12_000


def test_baselines_fitted_on_a_sample_of_the_training_rows_score_as_the_full_fit():
    from models.evaluation.report import LOGISTIC, test_table
    from models.features.training_set import Split

    train, test = _views(60_000, 6), _views(20_000, 7)
    split = Split(train=train, valid=train.head(0), test=test)
    full = test_table(split, {}, ["item_pv_7d", "noise"], seed=0, baseline_rows=10**9)
    sampled = test_table(split, {}, ["item_pv_7d", "noise"], seed=0, baseline_rows=5_000)
    assert sampled[LOGISTIC] != full[LOGISTIC]  # it did fit on fewer rows
    assert sampled[LOGISTIC]["auc"] == pytest.approx(full[LOGISTIC]["auc"], abs=0.005)
    assert sampled[LOGISTIC]["ece"] < 0.02


def test_baselines_fitted_on_downsampled_negatives_are_calibrated_on_the_unsampled_test_days():
    from models.evaluation.report import LOGISTIC, POPULARITY, test_table
    from models.features.training_set import Split

    train, test = _views(60_000, 8), _views(20_000, 9)
    kept = (train["label"] == 1) | (np.random.default_rng(0).random(len(train)) < 0.2)
    split = Split(train=train[kept].reset_index(drop=True), valid=train.head(0), test=test)
    features = ["item_pv_7d", "noise"]
    raw = test_table(split, {}, features, seed=0, baseline_rows=10**9)
    corrected = test_table(split, {}, features, seed=0, baseline_rows=10**9, negative_rate=0.2)
    for name in (POPULARITY, LOGISTIC):
        assert raw[name]["ece"] > 0.05  # odds five times too high
        assert corrected[name]["ece"] < 0.01
        assert corrected[name]["logloss"] < raw[name]["logloss"]
        assert corrected[name]["auc"] == pytest.approx(raw[name]["auc"], abs=1e-9)  # same order
