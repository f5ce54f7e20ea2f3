"""What the monitoring readout leaves behind: its plots (variant rates, drift) and its MLflow run in
the experiment `<CTR_EXPERIMENT>-monitoring`, beside the training runs and never mixed with them."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.registry import client
from models.settings import Settings, get_settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from models.monitoring.readout import Thresholds


def figures(
    report: dict[str, Any], drift: pd.DataFrame, thresholds: Thresholds | None = None
) -> dict[str, Figure]:
    """PSI per feature against its limit, and click/conversion rates per variant with 95% Wilson
    intervals (they stay inside [0, 1] for small rates; rows of one request are taken as independent).

    Plain matplotlib Figures (no pyplot state), keyed by artifact path; a plot without data is left out.
    """
    from matplotlib.figure import Figure
    from scipy.stats import binomtest

    if thresholds is None:
        from models.monitoring.readout import Thresholds  # the readout imports this module

        thresholds = Thresholds.from_settings(get_settings())
    limit = thresholds.max_psi
    plots: dict[str, Figure] = {}
    measured = drift.dropna(subset=["psi"]).sort_values("psi")
    if not measured.empty:
        fig = Figure(figsize=(7, 0.25 * len(measured) + 1.5), layout="constrained")
        ax = fig.subplots()
        colours = ["tab:red" if psi > limit else "tab:blue" for psi in measured["psi"]]
        ax.barh(measured["feature"], measured["psi"], color=colours)
        ax.axvline(limit, color="black", linestyle="--", label=f"limit {limit}")
        ax.set(xlabel="PSI, served vs training", title="Feature drift")
        ax.legend()
        plots["plots/feature_psi.png"] = fig
    variants = {k: v for k, v in ((report.get("ab") or {}).get("variants") or {}).items() if v["traffic"]}
    if variants:
        rates = {
            "clicked / served": ("clicked_rows", "served_rows"),
            "requests with a click": ("clicked_requests", "requests"),
            "converted / served": ("converted_rows", "served_rows"),
        }
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.subplots()
        width = 0.8 / len(variants)
        for i, (name, v) in enumerate(variants.items()):
            values = [v[hits] / v[n] for hits, n in rates.values()]
            intervals = np.array(
                [binomtest(v[h], v[n]).proportion_ci(method="wilson") for h, n in rates.values()]
            )
            errors = np.abs(intervals.T - np.array(values))
            x = np.arange(len(rates)) + (i - (len(variants) - 1) / 2) * width
            ax.bar(x, values, width, yerr=errors, capsize=4, label=name)
        ax.set_xticks(np.arange(len(rates)), list(rates))
        ax.set(ylabel="rate (95% interval)", title="Online rates per variant")
        ax.legend()
        plots["plots/variant_rates.png"] = fig
    return plots


def _numbers(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a nested summary, flattened to MLflow metric names."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_numbers(f"{prefix}{key}_", value))
        elif isinstance(value, int | float) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def log_to_mlflow(
    settings: Settings, report: dict[str, Any], drift: pd.DataFrame, plots: dict[str, Figure]
) -> str:
    """Log one monitoring run (metrics, thresholds, plots, the drift table, the summary) to the
    experiment `<settings.experiment>-monitoring`; returns its run id.

    Logged through an explicit client and run id: the process's active experiment and run stay as
    they were.
    """
    from mlflow.entities import Metric, Param

    tracking = client(settings)
    name = f"{settings.experiment}-monitoring"
    experiment = tracking.get_experiment_by_name(name)
    if experiment is None:  # artifacts where the training runs keep theirs (registry.client)
        experiment_id = tracking.create_experiment(name, settings.mlflow_artifact_root.resolve().as_uri())
    else:
        experiment_id = experiment.experiment_id
    run_id = tracking.create_run(experiment_id, run_name="monitoring").info.run_id
    try:
        now = int(time.time() * 1000)
        ab = report.get("ab") or {}
        variants = ab.get("variants") or {}
        numbers = {
            "rows": report["rows"],
            "breaches": len(report["breaches"]),
            **_numbers("", variants),
            **_numbers("ab_", {k: v for k, v in ab.items() if k != "variants"}),
            **_numbers("", report.get("coverage") or {}),
            **_numbers("psi_", dict(zip(drift["feature"], drift["psi"], strict=True))),
        }
        metrics = [Metric(k, float(v), now, 0) for k, v in numbers.items()]
        params = {
            **report["thresholds"],
            "catalogue_items": report["catalogue_items"],
            **{f"{k}_model_versions": ",".join(v["model_versions"]) for k, v in variants.items()},
        }
        tracking.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        for path, fig in plots.items():
            tracking.log_figure(run_id, fig, path)
        tracking.log_text(run_id, drift.to_csv(index=False), "drift/feature_drift.csv")
        tracking.log_dict(run_id, report, "summary.json")
        tracking.set_tag(run_id, "breaches", str(len(report["breaches"])))
    except BaseException:
        tracking.set_terminated(run_id, "FAILED")
        raise
    tracking.set_terminated(run_id)
    return run_id
