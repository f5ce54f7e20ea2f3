"""Offline evaluation on the later time window: probability quality, per-user ranking quality,
and the two baselines every model must beat (popularity, logistic regression)."""

from __future__ import annotations

import numpy as np
import pandas as pd

RANKING_CUTOFF = 10


def expected_calibration_error(y_true: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Weighted gap between predicted and observed rates over equal-count bins of the scores.

    Equal-count bins, because CTR scores crowd near zero and equal-width bins would put almost
    every row in the first one.
    """
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    gaps = [abs(p[idx].mean() - y[idx].mean()) * len(idx) for idx in np.array_split(order, bins) if len(idx)]
    return float(np.sum(gaps) / len(y))


def ranking_metrics(
    users: np.ndarray, y_true: np.ndarray, p: np.ndarray, k: int = RANKING_CUTOFF
) -> dict[str, float]:
    """Quality of each user's own ranking of the items they viewed in the window.

    - `gauc`: per-user AUC weighted by the user's rows, over users with both outcomes (global
      AUC rewards telling active from idle users apart; a ranker only orders one user's items).
    - `ndcg_at_k`, `hitrate_at_k`: the user's rows ranked by score, averaged over users with at
      least one positive.
    """
    frame = pd.DataFrame({"user": users, "y": np.asarray(y_true, dtype=np.int64), "p": p})
    frame = frame.sort_values(["user", "p"], ascending=[True, False], kind="stable")
    frame["rank"] = frame.groupby("user").cumcount()
    stats = frame.groupby("user").agg(rows=("y", "size"), positives=("y", "sum"))
    with_positive = stats.index[stats["positives"] > 0]

    # AUC per user from ranks: the share of (positive, negative) pairs ordered correctly.
    frame["score_rank"] = frame.groupby("user")["p"].rank(method="average")
    pos_rank_sum = frame[frame["y"] == 1].groupby("user")["score_rank"].sum()
    both = stats[(stats["positives"] > 0) & (stats["positives"] < stats["rows"])]
    n_pos, n_neg = both["positives"], both["rows"] - both["positives"]
    user_auc = (pos_rank_sum.reindex(both.index) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    gauc = float(np.average(user_auc, weights=both["rows"])) if len(both) else float("nan")

    top = frame[(frame["rank"] < k) & frame["user"].isin(with_positive)]
    dcg = (top["y"] / np.log2(top["rank"] + 2)).groupby(top["user"]).sum()
    ideal_hits = stats.loc[with_positive, "positives"].clip(upper=k)
    discounts = np.cumsum(1 / np.log2(np.arange(k) + 2))
    idcg = pd.Series(discounts[ideal_hits.to_numpy() - 1], index=ideal_hits.index)
    hits = top.groupby("user")["y"].max()
    return {
        "gauc": gauc,
        f"ndcg_at_{k}": float((dcg.reindex(with_positive, fill_value=0) / idcg).mean()),
        f"hitrate_at_{k}": float(hits.reindex(with_positive, fill_value=0).mean()),
        "ranking_users": int(len(with_positive)),
    }


def ctr_metrics(y_true: np.ndarray, p: np.ndarray, users: np.ndarray | None = None) -> dict[str, float]:
    """AUC, logloss and calibration; per-user ranking quality too when `users` is given."""
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    metrics = {
        "auc": float(roc_auc_score(y_true, p)),
        "logloss": float(log_loss(y_true, p, labels=[0, 1])),
        "ece": expected_calibration_error(y_true, p),
        "mean_prediction": float(p.mean()),
        "positive_rate": float(np.mean(y_true)),
        "rows": int(len(y_true)),
    }
    if users is not None:
        metrics.update(ranking_metrics(users, y_true, p))
    return metrics


def _log_counts(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """log1p of non-negative counts and rates, missing as 0: the scale a linear model can use."""
    x = frame.reindex(columns=features).to_numpy(dtype=np.float64, na_value=np.nan)
    return np.log1p(np.clip(np.nan_to_num(x, nan=0.0), 0, None))


class PopularityBaseline:
    """Scores an item by its recent views (a feature), mapped to a probability on the training days.

    What a shop shows without a model: the most viewed items first.
    """

    def __init__(self, popularity_feature: str = "item_pv_7d") -> None:
        self.feature = popularity_feature
        self._logit = None

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> PopularityBaseline:
        from sklearn.linear_model import LogisticRegression

        self._logit = LogisticRegression().fit(_log_counts(frame, [self.feature]), y)
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self._logit is None:
            raise RuntimeError("fit the baseline first")
        return self._logit.predict_proba(_log_counts(frame, [self.feature]))[:, 1]


class LogisticBaseline:
    """Logistic regression on the same features, log-scaled and standardised: the linear model a
    tree ensemble or a neural network has to beat to earn its complexity."""

    def __init__(self, features: list[str], seed: int = 42) -> None:
        self.features = list(features)
        self.seed = seed
        self._pipeline = None

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> LogisticBaseline:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = LogisticRegression(C=1.0, max_iter=1000, random_state=self.seed)
        self._pipeline = make_pipeline(StandardScaler(), model).fit(_log_counts(frame, self.features), y)
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self._pipeline is None:
            raise RuntimeError("fit the baseline first")
        return self._pipeline.predict_proba(_log_counts(frame, self.features))[:, 1]
