"""Offline evaluation on the later time window: the model against a popularity baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd


def ctr_metrics(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {
        "auc": float(roc_auc_score(y_true, p)),
        "logloss": float(log_loss(y_true, p, labels=[0, 1])),
        "mean_prediction": float(p.mean()),
        "positive_rate": float(np.mean(y_true)),
        "rows": int(len(y_true)),
    }


class PopularityBaseline:
    """Scores an item by its recent views (a feature), mapped to a probability on the training days.

    What a shop shows without a model: the most viewed items first.
    """

    def __init__(self, popularity_feature: str = "item_pv_7d") -> None:
        self.feature = popularity_feature
        self._logit = None

    def _x(self, frame: pd.DataFrame) -> np.ndarray:
        return np.log1p(frame[self.feature].fillna(0).to_numpy(dtype=np.float64)).reshape(-1, 1)

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> PopularityBaseline:
        from sklearn.linear_model import LogisticRegression

        self._logit = LogisticRegression().fit(self._x(frame), y)
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self._logit is None:
            raise RuntimeError("fit the baseline first")
        return self._logit.predict_proba(self._x(frame))[:, 1]
