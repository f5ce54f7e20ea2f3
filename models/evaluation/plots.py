"""The plots logged with every registered version: ROC, calibration, feature importance (as each
kind measures it) and training curves."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models.scoring import ScoringModel


def figures(model: ScoringModel, test: pd.DataFrame, y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """ROC and calibration on the test window, the kind's feature importances and its training
    curves, keyed by the artifact path they are logged under."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    figures = {}
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=model.kind)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test window")
    ax.legend()
    figures["plots/roc_curve.png"] = fig

    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(predicted, observed, "o-", label=model.kind)
    top = max(float(predicted.max()), float(observed.max()))
    ax.plot([0, top], [0, top], "--", color="grey", label="perfect")
    ax.set(xlabel="mean predicted", ylabel="observed rate", title="Calibration, test window")
    ax.legend()
    figures["plots/calibration_curve.png"] = fig

    for title, values in model.adapter.importance(model, test, y, p).items():
        ranked = sorted(values.items(), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(ranked) + 1))
        ax.barh([k for k, _ in ranked], [v for _, v in ranked])
        ax.set(xlabel=title, title=f"{model.kind} feature importance")
        fig.tight_layout()
        slug = "shap" if "SHAP" in title else "feature_importance"
        figures[f"plots/{slug}.png"] = fig

    history = model.meta.get("history") or {}
    if history:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in history.items():
            if "loss" in name:
                ax.plot(values, label=name)
        ax.set(xlabel=model.adapter.history_unit, ylabel="logloss", title="Training curves")
        ax.legend()
        figures["plots/training_curves.png"] = fig
    return figures
