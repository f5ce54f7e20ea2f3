"""Daily monitoring: the A/B readout, feature drift, coverage, and the alerts raised from them."""

import json
import math
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from models.monitoring.readout import (
    EPSILON,
    MonitoringAlert,
    Thresholds,
    ab_readout,
    breaches,
    coverage_and_diversity,
    feature_drift,
    monitor,
    population_stability_index,
    raise_for_breaches,
)
from models.monitoring.serving_log import rows_of
from models.settings import get_settings

AT = datetime(2017, 12, 3, 4, 0, tzinfo=UTC)


def _joined(variant: str, clicks: list[bool], fallback: bool = False, seed: int = 0) -> pd.DataFrame:
    """One served row per request (one user each), already joined with outcomes."""
    rng = np.random.default_rng(seed)
    n = len(clicks)
    clicked = np.asarray(clicks, bool)
    return pd.DataFrame(
        {
            "request_id": [f"{variant}-{fallback}-{i}" for i in range(n)],
            "user_id": np.arange(n) + (10**6 if fallback else 0),
            "item_id": rng.integers(0, 50, n),
            "score": rng.random(n) + 0.5 * clicked,
            "variant": variant,
            "model_version": "3" if variant == "champion" else "4",
            "fallback": fallback,
            "clicked": clicked,
            "converted": clicked & (np.arange(n) % 4 == 0),
        }
    )


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(0)
    training = rng.normal(size=20_000)
    assert population_stability_index(training, training) == 0.0
    assert population_stability_index(training, rng.normal(size=20_000)) < 0.01
    assert population_stability_index(training, rng.normal(1.0, 1.0, 20_000)) > 0.25


def test_psi_on_a_tiny_case_computed_by_hand():
    # Two bins split at the median 2.5: expected 1/2, 1/2; actual 3/4, 1/4; no NaN on either side.
    expected = [1.0, 2.0, 3.0, 4.0]
    by_hand = 0.25 * math.log(0.75 / 0.5) + (-0.25) * math.log(0.25 / 0.5)
    assert population_stability_index(expected, [1.0, 1.0, 1.0, 4.0], bins=2) == pytest.approx(by_hand)
    # A missing value is a bin of its own; training had none (EPSILON).
    with_nan = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.25 - EPSILON) * math.log(0.25 / EPSILON)
    got = population_stability_index(expected, [1.0, np.nan, 4.0, 4.0], bins=2)
    assert got == pytest.approx(with_nan)


def test_feature_drift_compares_served_features_with_training_and_skips_rows_without_features():
    rng = np.random.default_rng(1)
    training = pd.DataFrame({f: rng.normal(size=5000) for f in ("item_pv_7d", "user_pv_7d", "not_logged")})
    served = pd.DataFrame(
        {
            "f_item_pv_7d": np.r_[rng.normal(2.0, 1.0, 5000), [np.nan] * 500],
            "f_user_pv_7d": np.r_[rng.normal(size=5000), [np.nan] * 500],
            "fallback": [False] * 5000 + [True] * 500,  # fallback lists carry no features
        }
    )
    drift = feature_drift(training, served, ["item_pv_7d", "user_pv_7d", "not_logged"]).set_index("feature")
    assert drift.loc["item_pv_7d", "psi"] > 0.25 and drift.loc["user_pv_7d", "psi"] < 0.01
    assert drift.loc["item_pv_7d", "served_mean"] == pytest.approx(2.0, abs=0.05)
    assert drift.loc["user_pv_7d", "expected_mean"] == pytest.approx(training["user_pv_7d"].mean())
    assert np.isnan(drift.loc["not_logged", "psi"]) and np.isnan(drift.loc["not_logged", "served_mean"])


def test_z_test_finds_a_real_difference_and_none_between_equal_variants():
    rng = np.random.default_rng(2)
    champion = _joined("champion", rng.random(20_000) < 0.10)
    better = _joined("challenger", rng.random(20_000) < 0.12)
    test = ab_readout(pd.concat([champion, better]))["test"]
    assert test["significant"] and test["z"] > 3 and test["p_value"] < 0.001

    clicks = rng.random(20_000) < 0.10
    equal = ab_readout(pd.concat([_joined("champion", clicks), _joined("challenger", clicks)]))["test"]
    assert equal["z"] == 0.0 and equal["p_value"] == 1.0 and not equal["significant"]


def test_variant_metrics_leave_fallback_rows_out_and_auc_matches_sklearn():
    rng = np.random.default_rng(3)
    champion = _joined("champion", rng.random(3000) < 0.2, seed=1)
    # Fallback lists under the champion: every one clicked, which would lift its CTR if counted.
    fallback = _joined("champion", [True] * 500, fallback=True, seed=2).assign(score=rng.random(500))
    readout = ab_readout(pd.concat([champion, fallback]))
    variant = readout["variants"]["champion"]
    assert readout["fallback_rows"] == readout["fallback_requests"] == 500
    assert variant["served_rows"] == variant["requests"] == variant["users"] == 3000
    assert variant["row_ctr"] == pytest.approx(champion["clicked"].mean())
    assert variant["conversion_rate"] == pytest.approx(champion["converted"].mean())
    assert variant["online_auc"] == pytest.approx(roc_auc_score(champion["clicked"], champion["score"]))
    viewed = champion[champion["clicked"]]
    assert variant["online_label_auc"] == pytest.approx(roc_auc_score(viewed["converted"], viewed["score"]))


def test_per_request_click_rate_counts_a_request_once_and_auc_needs_both_classes():
    rows = _joined("champion", [True, False, False, False])
    rows["request_id"] = ["a", "a", "b", "b"]  # a: one click in two items; b: none
    variant = ab_readout(rows)["variants"]["champion"]
    assert variant["row_ctr"] == 0.25 and variant["request_click_rate"] == 0.5
    assert ab_readout(_joined("champion", [False] * 10))["variants"]["champion"]["online_auc"] is None


def test_a_variant_without_traffic_is_said_so_and_not_tested():
    readout = ab_readout(_joined("champion", [True, False]))
    challenger = readout["variants"]["challenger"]
    assert not challenger["traffic"] and challenger["requests"] == 0 and challenger["row_ctr"] is None
    assert challenger["note"] == "no challenger traffic in this window"
    assert readout["test"]["z"] is None and readout["test"]["note"] == "not tested: no challenger traffic"


def test_coverage_gini_and_diversity_on_a_hand_checked_case():
    served = pd.DataFrame(
        {
            "request_id": ["a", "a", "a", "b"],
            "user_id": [1, 1, 1, 2],
            "item_id": [10, 10, 10, 11],
            "f_category_id": [7.0, 7.0, 8.0, np.nan],
        }
    )
    report = coverage_and_diversity(served, catalogue_items=4)
    # Exposure over the catalogue is 0, 0, 1, 3: Gini = sum |xi - xj| / (2 n^2 mean) = 20 / 32.
    assert report["coverage"] == 0.5 and report["exposure_gini"] == pytest.approx(20 / 32)
    # User 1 saw one distinct item, user 2 one.
    assert report["mean_distinct_items_per_user"] == 1.0
    # a: 2 categories in 3 items; b: no known category, not counted.
    assert report["intra_list_diversity"] == pytest.approx(2 / 3)
    without = coverage_and_diversity(served.drop(columns="f_category_id"), catalogue_items=4)
    assert without["intra_list_diversity"] is None and "not measured" in without["diversity_note"]


def test_thresholds_are_the_settings_and_have_no_defaults_of_their_own(monkeypatch):
    monkeypatch.setenv("CTR_MONITOR_MAX_PSI", "0.4")
    monkeypatch.setenv("CTR_MONITOR_MIN_REQUESTS", "0")
    thresholds = Thresholds.from_settings(get_settings(), alpha=0.01)
    assert (thresholds.max_psi, thresholds.min_requests, thresholds.alpha) == (0.4, 0, 0.01)
    assert thresholds.min_online_auc == get_settings().monitor_min_online_auc
    with pytest.raises(TypeError):
        Thresholds()  # no second copy of the settings' defaults


def test_breaches_name_the_metric_its_value_and_the_limit(monkeypatch):
    for name in [n for n in os.environ if n.startswith("CTR_MONITOR_")]:
        monkeypatch.delenv(name)
    rng = np.random.default_rng(4)
    readout = ab_readout(
        pd.concat(
            [
                _joined("champion", rng.random(20_000) < 0.12),
                _joined("challenger", rng.random(20_000) < 0.09),
                _joined("champion", [False] * 2000, fallback=True),
            ]
        )
    )
    readout["variants"]["champion"]["online_label_auc"] = 0.52
    readout["variants"]["challenger"]["online_label_auc"] = 0.70
    report = {
        "ab": readout,
        "drift": [{"feature": "item_pv_7d", "psi": 0.4}, {"feature": "user_pv_7d", "psi": 0.1}],
        "coverage": {"coverage": 0.002},
    }
    challenger, champion = (readout["variants"][v]["request_click_rate"] for v in ("challenger", "champion"))
    configured = Thresholds.from_settings(get_settings())  # the settings' defaults
    assert breaches(report, replace(configured, max_fallback_share=0.01)) == [
        "fallback share of requests 0.048 is above the limit 0.01",
        "champion online AUC of intent after a view 0.5200 is below the limit 0.55",
        f"challenger per-request click rate {challenger:.4f} is significantly below the champion's "
        f"{champion:.4f} (p = {readout['test']['p_value']:.2g}, alpha 0.05)",
        "feature item_pv_7d PSI 0.400 is above the limit 0.25",
        "catalogue coverage 0.0020 is below the limit 0.01",
    ]
    lenient = Thresholds.from_settings(
        get_settings(), max_psi=0.5, min_coverage=0.001, min_online_auc=0.5, alpha=1e-30
    )
    assert breaches(report, lenient) == []
    assert breaches({"ab": None}, configured) == ["0 requests served in the window, below the minimum of 1"]


def test_breaches_fail_the_task_with_every_sentence_and_nothing_fails_without_them():
    raise_for_breaches([])
    with pytest.raises(MonitoringAlert, match="2 monitoring breach.*: a is high; b is low"):
        raise_for_breaches(["a is high", "b is low"])


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Settings on a fresh MLflow SQLite store under tmp_path."""
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # MLflow exports the active experiment id to the environment: undo it after the test.
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    return get_settings()


def _response(request_id: str, user: int, variant: str, items: list[int], fallback: bool = False) -> dict:
    features = pd.DataFrame(
        {
            "user_id": user,
            "item_id": items,
            "item_pv_7d": [float(i % 7) + 3.0 for i in items],
            "category_id": [i % 3 for i in items],
        }
    )
    return dict(
        request_id=request_id,
        endpoint="recommend",
        user_id=user,
        item_ids=items,
        scores=np.linspace(0.9, 0.1, len(items)),
        variant=variant,
        model_name="ctr-xgboost",
        model_version="3" if variant == "champion" else "4",
        feature_service="ctr_ranker_realtime_v1",
        fallback=fallback,
        unknown=[False] * len(items),
        features=None if fallback else features,
        served_at=AT + timedelta(minutes=user),
    )


def test_monitor_logs_a_run_to_the_monitoring_experiment_and_reads_back(settings):
    import mlflow
    from mlflow import MlflowClient

    responses = [
        _response(f"r{u}", u, "champion" if u % 2 else "challenger", [u % 20, (u + 1) % 20, (u + 2) % 20])
        for u in range(40)
    ]
    responses.append(_response("down", 99, "champion", [1, 2, 3], fallback=True))
    served = rows_of(responses)
    # Every user clicks the first item shown (the top score) and buys it in half the requests.
    events = pd.DataFrame(
        [(u, u % 20, "pv", AT + timedelta(minutes=u, seconds=30)) for u in range(40)]
        + [(u, u % 20, "buy", AT + timedelta(minutes=u, seconds=40)) for u in range(0, 40, 2)],
        columns=["user_id", "item_id", "behavior", "event_timestamp"],
    )
    training = pd.DataFrame({"item_pv_7d": np.arange(1000) % 7 + 3.0, "category_id": np.arange(1000) % 3})

    summary = monitor(settings, served, events, training, catalogue_items=40)

    json.dumps(summary)  # the summary is plain JSON
    champion = summary["ab"]["variants"]["champion"]
    assert (
        champion["requests"] == 20 and champion["online_auc"] == 1.0 and summary["ab"]["fallback_rows"] == 3
    )
    assert [row["feature"] for row in summary["drift"]] == ["item_pv_7d"]  # ids are not drift features
    assert summary["drift"][0]["psi"] < 0.05 and summary["coverage"]["coverage"] == 0.5
    assert summary["ab"]["fallback_requests"] == 1 and summary["breaches"] == []  # 1 of 41 requests

    tracking = MlflowClient(settings.mlflow_tracking_uri)
    run = tracking.get_run(summary["mlflow_run_id"])
    assert tracking.get_experiment(run.info.experiment_id).name == f"{settings.experiment}-monitoring"
    assert run.info.status == "FINISHED" and mlflow.active_run() is None
    # Logged by run id: the process's active experiment is not switched to the monitoring one.
    assert os.environ.get("MLFLOW_EXPERIMENT_ID") != run.info.experiment_id
    assert run.data.metrics["champion_request_click_rate"] == 1.0
    assert run.data.metrics["psi_item_pv_7d"] == pytest.approx(summary["drift"][0]["psi"])
    assert run.data.metrics["coverage"] == 0.5 and run.data.params["max_psi"] == "0.25"
    artifacts = {
        a.path for folder in ("", "plots", "drift") for a in tracking.list_artifacts(run.info.run_id, folder)
    }
    assert {
        "plots/feature_psi.png",
        "plots/variant_rates.png",
        "drift/feature_drift.csv",
        "summary.json",
    } <= artifacts


def test_an_empty_serving_log_gives_a_message_and_a_breach_not_an_error(settings):
    from models.monitoring.serving_log import read_serving_log

    served = read_serving_log(settings.serving_log_dir)
    events = pd.DataFrame(columns=["user_id", "item_id", "behavior", "event_timestamp"])
    summary = monitor(settings, served, events, pd.DataFrame({"item_pv_7d": [1.0]}), catalogue_items=10)
    assert summary["rows"] == 0 and "no rows in this window" in summary["message"]
    assert summary["breaches"] == ["0 requests served in the window, below the minimum of 1"]
    assert summary["mlflow_run_id"] and json.dumps(summary)


def test_the_readout_over_the_files_equals_the_one_on_frames(settings):
    """The DAG's readout (DuckDB over the serving log's, the lake's and the event log's files) gives
    the numbers the same metrics give on the frames read whole: nothing is lost in the scan."""
    from models.data import lake
    from models.data.event_log import EventLog
    from models.monitoring.readout import file_readout
    from models.monitoring.serving_log import ServingLog, join_outcomes, read_serving_log

    log = ServingLog(settings.paths.serving_log, flush_rows=10)  # several files
    responses = [
        _response(f"r{u}", u, "champion" if u % 3 else "challenger", [u % 20, (u + 1) % 20, (u + 5) % 20])
        for u in range(60)
    ] + [_response("down", 99, "champion", [1, 2, 3], fallback=True)]
    for response in responses:
        log.append(**response)
    log.close()
    late = AT + timedelta(days=1)  # served after the window: left out on both sides
    outside = ServingLog(settings.paths.serving_log)
    outside.append(**{**_response("late", 7, "champion", [7]), "served_at": late})
    outside.close()
    views = [(u, u % 20, "pv", AT + timedelta(minutes=u, seconds=30)) for u in range(60)]
    intents = [(u, (u + 1) % 20, "cart", AT + timedelta(minutes=u, seconds=50)) for u in range(0, 60, 4)]
    accepted = pd.DataFrame(views, columns=["user_id", "item_id", "behavior", "event_timestamp"])
    accepted = accepted.assign(category_id=accepted["item_id"] % 3)
    day = pd.Timestamp(AT).tz_convert(settings.timezone).normalize()
    path = lake.partition_path(settings, lake.ACCEPTED, day)
    path.parent.mkdir(parents=True)
    accepted.assign(event_timestamp=pd.to_datetime(accepted["event_timestamp"], utc=True)).to_parquet(path)
    live = pd.DataFrame(intents, columns=["user_id", "item_id", "behavior", "event_timestamp"])
    live = live.assign(
        event_id=np.arange(len(live)), category_id=live["item_id"] % 3, ingested_at=AT,
        event_timestamp=pd.to_datetime(live["event_timestamp"], utc=True),
    )  # fmt: skip
    EventLog(settings.paths.event_log).append(live)
    training = pd.DataFrame({"item_pv_7d": np.arange(1000) % 9 + 2.0, "category_id": np.arange(1000) % 3})
    settings.paths.training_set.parent.mkdir(parents=True, exist_ok=True)
    training.to_parquet(settings.paths.training_set)

    start, end = AT - timedelta(hours=1), AT + timedelta(hours=12)
    on_files = file_readout(settings, start, end, catalogue_items=40)
    served = read_serving_log(settings.paths.serving_log, start, end)
    events = pd.concat([accepted, live])[["user_id", "item_id", "behavior", "event_timestamp"]]
    on_frames = monitor(settings, served, events, training, catalogue_items=40)

    assert on_files["rows"] == len(served) == 61 * 3
    champion = on_files["ab"]["variants"]["champion"]
    assert champion["clicked_rows"] == 40 and champion["converted_rows"] > 0  # outcomes from both logs
    assert join_outcomes(served, events)["converted"].sum() == sum(
        v["converted_rows"] for v in on_files["ab"]["variants"].values()
    )
    for key in ("rows", "window", "ab", "drift", "coverage", "breaches"):
        assert _same(on_files[key], on_frames[key]), (key, on_files[key], on_frames[key])


def _same(a, b) -> bool:
    """Equal, numbers up to the rounding of a sum taken in another order (DuckDB's threads)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15) or (math.isnan(a) and math.isnan(b))
    return a == b
