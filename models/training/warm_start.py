"""Continuous learning: continue a champion on the newest rows instead of training from scratch.

The newest day (the validation day, which full training only used to stop early) is split in
time: its first 80 % continue the model, the rest stop it early. The result is evaluated and gated
exactly like a full retrain (models.pipeline.warm_start).
"""

from __future__ import annotations

import pandas as pd

from feature_repo.contract import EVENT_TIMESTAMP
from models.features.training_set import Split
from models.registry import ServedModel
from models.scoring import ScoringModel
from models.training.fit import training_meta

FIT_SHARE = 0.8
CONTINUED = "continued from champion"


def newest_rows(split: Split) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validation day in time order, cut into rows to continue on and rows to stop on."""
    newest = split.valid.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)
    cut = int(len(newest) * FIT_SHARE)
    return newest.iloc[:cut], newest.iloc[cut:]


def continue_champion(champion: ServedModel, split: Split, seed: int) -> ScoringModel:
    """The champion continued on the newest rows (a Keras champion is changed in place: score it
    before calling this)."""
    fit_rows, stop_rows = newest_rows(split)
    scorer = champion.scorer
    fitted = scorer.adapter.fine_tune(scorer, fit_rows, stop_rows, seed=seed)
    rows = {"train": len(fit_rows), "valid": len(stop_rows), "test": len(split.test)}
    meta = training_meta(
        fitted, scorer.features, rows=rows, device=CONTINUED, continued_from=champion.version
    )
    return ScoringModel(scorer.kind, fitted.model, scorer.features, meta, fitted.spec or scorer.spec)
