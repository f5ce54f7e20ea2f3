"""Why an item scored what it did: the top feature contributions per candidate, in log-odds.

* XGBoost: exact TreeSHAP values (`pred_contribs`), relative to the model's average prediction
  over its training rows; they add up to the item's logit.
* Wide&Deep: an approximation by occlusion. Each feature of the item is in turn replaced by its
  mean over the request's candidates (a missing value stays missing) and the change in logit is
  its contribution. It answers "what lifts this item above the other candidates": features the
  candidates share (the user's own numbers) contribute nothing. Ids (memorised by the wide part)
  are not occluded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.scoring import XGBOOST, ScoringModel


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def contributions(model: ScoringModel, frame: pd.DataFrame) -> pd.DataFrame:
    """[candidates x features] contributions in log-odds, same row order as `frame`."""
    if model.kind == XGBOOST:
        from models.features.training_set import feature_matrix
        from models.kinds.xgb import shap_contributions

        values = shap_contributions(model.model, feature_matrix(frame, model.features), model.features)[
            :, :-1
        ]
        return pd.DataFrame(values, columns=model.features, index=frame.index)

    numeric = list(model.spec.numeric)
    base = _logit(model.predict(frame))
    means = frame[numeric].astype(np.float64).mean()
    n = len(frame)
    occluded = pd.concat([frame] * len(numeric), ignore_index=True)  # one block of rows per feature
    for block, name in enumerate(numeric):
        rows = slice(block * n, (block + 1) * n)
        column = occluded.columns.get_loc(name)
        occluded.iloc[rows, column] = means[name] if np.isfinite(means[name]) else np.nan
    scores = _logit(model.predict(occluded)).reshape(len(numeric), n)
    return pd.DataFrame((base[None, :] - scores).T, columns=numeric, index=frame.index)


def top_contributions(model: ScoringModel, frame: pd.DataFrame, top: int = 5) -> list[list[dict]]:
    """Per candidate, the `top` features with the largest |contribution| and the values they had."""
    values = contributions(model, frame)
    out = []
    for i, (_, contribs) in enumerate(values.iterrows()):
        best = contribs.abs().sort_values(ascending=False, kind="stable").index[:top]
        out.append(
            [
                {
                    "feature": name,
                    "value": _plain(frame.iloc[i][name]),
                    "contribution": float(contribs[name]),
                }
                for name in best
            ]
        )
    return out


def _plain(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
