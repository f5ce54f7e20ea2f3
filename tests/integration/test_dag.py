"""The real DAG, run by `airflow dags test` on the Taobao slice, and what it leaves behind."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo.contract import (
    ITEM_ID,
    MODEL_FEATURE_SERVICE,
    MODEL_FEATURES,
    RANKER_FEATURE_SERVICE,
    USER_ID,
)
from models.pipeline import CATEGORICAL_COLUMNS
from models.settings import airflow_environment, get_settings
from tests.integration.conftest import ROOT, VENV_BIN, migrate_airflow, project_environment, run_dag

pytestmark = pytest.mark.integration


DAGBAG_PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=%r)

def schedule(dag):
    assets = getattr(dag.timetable, "asset_condition", None)
    if hasattr(assets, "name"):
        return "asset:" + assets.name
    return type(dag.timetable).__name__

print(json.dumps({
    "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "dags": {
        dag_id: {
            "tags": sorted(dag.tags),
            "doc": bool(dag.doc_md),
            "schedule": schedule(dag),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "tasks": {
                t.task_id: {
                    "queue": t.queue,
                    "retries": t.retries,
                    "backoff": t.retry_exponential_backoff,
                    "alerts": bool(t.on_failure_callback),
                    "upstream": sorted(t.upstream_task_ids),
                    "outlets": sorted(getattr(o, "name", str(o)) for o in t.outlets),
                }
                for t in dag.tasks
            },
        }
        for dag_id, dag in bag.dags.items()
    },
}))
"""


def test_dag_set_imports_cleanly_and_is_wired_as_documented(tmp_path):
    # Airflow reads its configuration at import: probe it in a process with the project's environment.
    base = project_environment(tmp_path)
    migrate_airflow(base)
    env = airflow_environment(get_settings(), base)
    probe = subprocess.run(
        [sys.executable, "-c", DAGBAG_PROBE % str(ROOT / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    bag = json.loads(probe.stdout.strip().splitlines()[-1])
    assert bag["import_errors"] == {}
    dags = bag["dags"]
    assert set(dags) == {"ctr_features", "ctr_training", "ctr_deployment", "ctr_monitoring"}
    for dag_id, dag in dags.items():
        assert "ctr" in dag["tags"] and dag["doc"] and dag["max_active_runs"] == 1, dag_id
        for name, t in dag["tasks"].items():
            assert t["alerts"], f"{dag_id}.{name} has no failure callback"
            if name not in (
                "validate",
                "check_thresholds",
                "in_window",
                "training_ready",
                "champion_changed",
            ):
                assert t["retries"] >= 1 and t["backoff"], f"{dag_id}.{name} does not retry with back-off"

    features = dags["ctr_features"]
    # Past days run through backfills (`ctr backfill`): unpausing starts no catch-up beside them.
    assert features["schedule"] == "CronDataIntervalTimetable" and not features["catchup"]
    tasks = features["tasks"]
    assert tasks["ingest"]["upstream"] == ["in_window"] and tasks["validate"]["upstream"] == ["ingest"]
    assert tasks["validate"]["retries"] == 0  # a broken batch fails at once, it will not pass on a retry
    assert tasks["materialize"]["upstream"] == ["build_features"]
    assert tasks["materialize"]["outlets"] == ["ctr_online_features"]
    assert tasks["build_candidates"]["upstream"] == ["validate"]

    training = dags["ctr_training"]
    assert training["schedule"] == "asset:ctr_online_features" and not training["catchup"]
    tasks = training["tasks"]
    # The two models train in parallel, on the GPU queue, from the same training set.
    for name in ("train_xgboost", "train_wide_deep"):
        assert tasks[name]["queue"] == "gpu"
        assert tasks[name]["upstream"] == ["build_training_set"]
    assert tasks["build_training_set"]["upstream"] == ["training_ready"]
    assert tasks["evaluate"]["upstream"] == ["train_wide_deep", "train_xgboost"]
    assert tasks["publish_champion"]["outlets"] == ["ctr_champion_model"]
    assert "champion_changed" in tasks["publish_champion"]["upstream"]

    assert dags["ctr_deployment"]["schedule"] == "asset:ctr_champion_model"
    assert set(dags["ctr_deployment"]["tasks"]) == {
        "build_bento",
        "smoke_test",
        "reload_service",
        "record_deployment",
    }
    assert dags["ctr_monitoring"]["tasks"]["check_thresholds"]["upstream"] == ["readout"]


def test_dag_runs_green_and_produces_validation_features_and_a_champion(dag_run, use_environment):
    assert dag_run["result"].returncode == 0, dag_run["output"][-5000:]
    for dag_id in ("ctr_features", "ctr_training"):
        assert f"dag_id={dag_id}" in dag_run["output"] and "state=success" in dag_run["runs"][dag_id].stdout
    data_dir = dag_run["data_dir"]
    use_environment(dag_run["env"])
    from models.pipeline import validation_totals

    totals = validation_totals(get_settings())
    assert totals["days"] == 9 and totals["failed_days"] == []
    assert totals["quarantined_rows"] == 35  # the rows before the dataset's period
    assert totals["accepted_rows"] + totals["quarantined_rows"] == totals["input_rows"] == 84287
    # Data Docs of every validated day, linked from the task log
    docs = data_dir / "gx/uncommitted/data_docs/local_site/index.html"
    assert docs.is_file() and docs.as_uri() in dag_run["output"]
    assert len(list((data_dir / "gx/uncommitted/data_docs/local_site/validations").rglob("*.html"))) >= 9

    from models.features.store import open_store
    from models.registry import load_by_alias

    settings = get_settings()
    store = open_store(settings)
    online = store.get_online_features(
        features=store.get_feature_service(RANKER_FEATURE_SERVICE),
        entity_rows=[{"user_id": 1, "item_id": 283}],
    ).to_dict()
    # user 1 viewed 48 items in the last 7 days of the data: the materialized snapshot says so
    assert online["user_pv_7d"] == [48.0]
    assert online["item_pv_7d"][0] is not None

    # A fresh registry: the first sane version of each model becomes its champion.
    for name, kind in (("ctr-xgboost", "xgboost"), ("ctr-wide-deep", "wide_deep")):
        champion = load_by_alias(settings, name=name)
        assert champion.version == "1" and champion.kind == kind
        assert champion.feature_service == MODEL_FEATURE_SERVICE

    evaluation = json.loads((data_dir / "models/candidates/evaluation.json").read_text())
    assert set(evaluation) == {"xgboost", "wide_deep", "popularity", "logistic_regression"}
    for model in ("xgboost", "wide_deep"):
        assert evaluation[model]["auc"] > evaluation["popularity"]["auc"] + 0.05
        assert evaluation[model]["logloss"] < evaluation["popularity"]["logloss"]
        assert evaluation[model]["ece"] < 0.02


def test_the_model_was_trained_on_exactly_the_feature_service(dag_run, use_environment):
    assert dag_run["result"].returncode == 0, dag_run["output"][-5000:]
    use_environment(dag_run["env"])
    from models.features.store import feature_names, open_store
    from models.registry import load_by_alias

    settings = get_settings()
    service = open_store(settings).get_feature_service(MODEL_FEATURE_SERVICE)
    assert feature_names(service) == MODEL_FEATURES
    # XGBoost reads the service's numeric features in its order; Wide&Deep reads every feature of
    # the service (ids as categorical inputs) plus the entity keys.
    xgboost = load_by_alias(settings, name="ctr-xgboost")
    assert xgboost.features == [f for f in MODEL_FEATURES if f not in CATEGORICAL_COLUMNS]
    wide_deep = load_by_alias(settings, name="ctr-wide-deep")
    assert set(wide_deep.scorer.spec.inputs) == {*MODEL_FEATURES, USER_ID, ITEM_ID}
    training_set = pd.read_parquet(dag_run["data_dir"] / "datasets/training_set.parquet")
    assert set(MODEL_FEATURES) <= set(training_set.columns)
    assert training_set[MODEL_FEATURES].notna().all().all()  # every entity had a snapshot at its row


def test_a_broken_batch_stops_the_run_at_validation(tmp_path):
    broken = tmp_path / "broken.csv"
    with gzip.open(ROOT / "data/sample/userbehavior_user_slice.csv.gz", "rt") as sample:
        lines = sample.read().splitlines()[:3000]
    bad = [",".join([*line.split(",")[:3], "click", line.split(",")[4]]) for line in lines[:300]]
    broken.write_text("\n".join(bad + lines[300:]) + "\n")
    env = project_environment(tmp_path / "data", CTR_RAW_EVENTS=str(broken))
    result = run_dag(env)
    output = result.stdout + result.stderr
    assert "DataValidationError" in output
    assert "expect_column_values_to_be_in_set[behavior] (" in output
    assert "state=failed" in output
    assert "ALERT ctr_features.validate failed" in output  # the failure callback ran
    alerts = [json.loads(line) for line in (tmp_path / "data/alerts/alerts.jsonl").read_text().splitlines()]
    assert alerts[-1]["task_id"] == "validate" and "failed validation" in alerts[-1]["error"]

    days = sorted(p.name for p in (tmp_path / "data/quarantine").glob("date=*"))
    assert len(days) == 9  # every day was judged and has its report
    quarantined = pd.concat(
        pd.read_parquet(p) for p in (tmp_path / "data/quarantine").glob("date=*/rows.parquet")
    )
    assert len(quarantined) == 300 and set(quarantined["behavior"]) == {"click"}
    reports = [json.loads(p.read_text()) for p in (tmp_path / "data/quarantine").glob("date=*/report.json")]
    assert sum(r["input_rows"] for r in reports) == 3000
    broken_days = {
        p.parent.name
        for p in (tmp_path / "data/quarantine").glob("date=*/report.json")
        if not json.loads(p.read_text())["success"]
    }
    assert broken_days
    accepted_days = {p.name for p in (tmp_path / "data/lake/accepted").glob("date=*")}
    assert not broken_days & accepted_days  # a broken day has no accepted events for anyone to read
    assert not (tmp_path / "data/offline").exists()  # nothing downstream ran


def _offline_and_online(data_dir) -> dict:
    from feature_repo.contract import CATEGORY_VIEW, ITEM_VIEW, RECENT_VIEW, USER_VIEW
    from models.features.store import open_store, source_path

    settings = get_settings()
    store = open_store(settings)
    offline = {}
    for view in (USER_VIEW, ITEM_VIEW, CATEGORY_VIEW, RECENT_VIEW):
        table = pq.read_table(source_path(store, view))
        order = [(table.column_names[0], "ascending"), ("event_timestamp", "ascending")]
        offline[view] = table.sort_by(order)
    online = store.get_online_features(
        features=store.get_feature_service(RANKER_FEATURE_SERVICE),
        entity_rows=[{"user_id": u, "item_id": i} for u, i in ((1, 283), (100, 2268318), (1000, 2333346))],
    ).to_dict()
    lake = {
        p.parent.name: len(pd.read_parquet(p)) for p in (data_dir / "lake/accepted").glob("date=*/*.parquet")
    }
    return {"offline": offline, "online": online, "lake": lake}


def test_rerunning_a_day_changes_nothing(dag_run, use_environment):
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    use_environment(dag_run["env"])
    before = _offline_and_online(dag_run["data_dir"])
    # The last day again, as a scheduled run of its data interval would (days=1).
    rerun = run_dag(dag_run["env"], "ctr_features", "2017-12-04T00:00:00+08:00", None)
    assert rerun.returncode == 0 and "state=success" in rerun.stdout, rerun.stdout[-3000:]
    assert "into 1 days" in rerun.stdout + rerun.stderr
    after = _offline_and_online(dag_run["data_dir"])
    assert after["lake"] == before["lake"] and len(after["lake"]) == 9
    assert after["online"] == before["online"]
    for view, table in before["offline"].items():
        assert after["offline"][view].num_rows == table.num_rows > 0, view
        assert after["offline"][view].equals(table), view


def test_the_deployment_dag_ships_the_champion(dag_run, use_environment):
    """feature → training → deployment: the champion the training run promoted is built into a
    Bento, served by it against the real stores, and recorded."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    run = run_dag(dag_run["env"], "ctr_deployment", None, None)
    assert run.returncode == 0 and "state=success" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
    use_environment(dag_run["env"])
    from models.registry import client

    settings = get_settings()
    record = json.loads((settings.data_dir / "deployments/deployments.jsonl").read_text().splitlines()[-1])
    assert record["model"] == "ctr-xgboost" and record["version"] == "1"
    assert record["smoke_test"]["passed"] and record["smoke_test"]["model"]["version"] == "1"
    assert record["reload"]["reloaded"] is False and "CTR_SERVICE_URL" in record["reload"]["reason"]
    tags = client(settings).get_model_version("ctr-xgboost", "1").tags
    assert tags["deployed_bento"] == record["bento_tag"]


def test_ctr_cli_help_lists_the_stages():
    out = subprocess.run(
        [str(VENV_BIN / "ctr"), "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "build_training_set" in out and "warm_start" in out
