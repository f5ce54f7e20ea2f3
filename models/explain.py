"""Why an item scored what it did: the top feature contributions per candidate, in log-odds.

Each kind says how it explains itself (models.kinds): XGBoost gives exact TreeSHAP values
(`pred_contribs`), relative to the model's average prediction over its training rows, which add
up to the item's logit; Wide&Deep approximates them by occlusion against the request's other
candidates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.scoring import ScoringModel


def contributions(model: ScoringModel, frame: pd.DataFrame) -> pd.DataFrame:
    """[candidates x features] contributions in log-odds, same row order as `frame`."""
    return model.adapter.contributions(model, frame)


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
