"""The monitoring DAG on a serving log of the test days: readout logged to MLflow with its plots,
and a crossed threshold fails the run and raises an alert."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest

from feature_repo.contract import EVENT_TIMESTAMP, ITEM_ID, USER_ID
from tests.integration.conftest import run_dag

pytestmark = pytest.mark.integration

DAY = pd.Timestamp("2017-12-02", tz="Asia/Shanghai")
# A run at 06:00 the next morning judges the day before.
LOGICAL_DATE = "2017-12-03T06:00:00+08:00"


def _served_test_day(settings) -> tuple[int, int]:
    """Rankings as the service would have logged them on DAY: per user and hour, the items the user
    went on to view (their features and champion scores from the training set) among five items
    other users viewed; half the users in each variant. Returns (requests, rows)."""
    from models.monitoring.serving_log import ServingLog
    from models.registry import load_by_alias
    from services.champion_challenger import user_bucket

    rows = pd.read_parquet(settings.datasets_dir / "training_set.parquet")
    stamps = rows[EVENT_TIMESTAMP].dt.tz_convert(DAY.tz)
    rows = rows[(stamps >= DAY) & (stamps < DAY + pd.Timedelta(days=1))].reset_index(drop=True)
    champion = load_by_alias(settings, name=settings.xgb_model_name)
    rows["score"] = champion.predict(rows)
    rng = np.random.default_rng(7)
    log = ServingLog(settings.serving_log_dir, flush_rows=10**9, flush_s=3600)
    requests = served = 0
    for (user, _), viewed in rows.groupby([USER_ID, rows[EVENT_TIMESTAMP].dt.floor("h")]):
        others = rows.iloc[rng.choice(len(rows), 5, replace=False)]
        shown = pd.concat([viewed, others[others[USER_ID] != user]]).drop_duplicates(ITEM_ID)
        shown = shown.sort_values("score", ascending=False)
        log.append(
            request_id=f"r{requests}",
            endpoint="rank",
            user_id=int(user),
            item_ids=shown[ITEM_ID].astype(int).tolist(),
            scores=shown["score"].tolist(),
            variant="challenger" if user_bucket(int(user)) < 0.5 else "champion",
            model_name=champion.name,
            model_version=champion.version,
            feature_service=champion.feature_service,
            fallback=False,
            unknown=[False] * len(shown),
            served_at=max(viewed[EVENT_TIMESTAMP].min() - pd.Timedelta(minutes=1), DAY),
            features=shown[champion.features],
        )
        requests, served = requests + 1, served + len(shown)
    log.close()
    return requests, served


def _monitoring_runs(settings) -> pd.DataFrame:
    import mlflow

    from models.registry import client

    client(settings)
    return mlflow.search_runs(experiment_names=[f"{settings.experiment}-monitoring"], order_by=["start_time"])


def test_monitoring_reads_out_the_variants_and_alerts_on_drift(dag_run, use_environment):
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    use_environment(dag_run["env"])
    from models.settings import get_settings

    settings = get_settings()
    requests, served = _served_test_day(settings)
    assert requests > 100

    calm = run_dag({**dag_run["env"], "CTR_MONITOR_MAX_PSI": "100"}, "ctr_monitoring", LOGICAL_DATE, None)
    assert calm.returncode == 0 and "state=success" in calm.stdout, calm.stdout[-4000:] + calm.stderr[-2000:]
    run = _monitoring_runs(settings).iloc[-1]
    assert run["metrics.rows"] == served
    assert run["metrics.champion_requests"] + run["metrics.challenger_requests"] == requests
    for variant in ("champion", "challenger"):
        # every request showed items the user went on to view, and others they did not
        assert 0.0 < run[f"metrics.{variant}_row_ctr"] < 1.0
        assert 0.0 < run[f"metrics.{variant}_online_auc"] < 1.0
        # the models' own label online (intent among the items then viewed): as good as offline
        assert run[f"metrics.{variant}_online_label_auc"] > 0.6
    assert 0.0 <= run["metrics.ab_test_p_value"] <= 1.0
    assert run["metrics.breaches"] == 0
    artifacts = Path(urlparse(run["artifact_uri"]).path)
    for plot in ("plots/feature_psi.png", "plots/variant_rates.png"):
        assert (artifacts / plot).is_file(), plot
    drift = pd.read_csv(artifacts / "drift/feature_drift.csv")
    assert len(drift) >= 20 and drift["psi"].notna().all()

    strict_env = {**dag_run["env"], "CTR_MONITOR_MAX_PSI": "0.0001"}
    strict = run_dag(strict_env, "ctr_monitoring", LOGICAL_DATE, None)
    output = strict.stdout + strict.stderr
    assert "state=failed" in output and "MonitoringAlert" in output
    alert = json.loads((settings.data_dir / "alerts/alerts.jsonl").read_text().splitlines()[-1])
    assert alert["dag_id"] == "ctr_monitoring" and alert["task_id"] == "check_thresholds"
    assert "PSI" in alert["error"] and "above the limit 0.0001" in alert["error"]
