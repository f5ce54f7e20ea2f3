"""The real DAG, run by `airflow dags test` on the Taobao slice, and what it leaves behind."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pandas as pd
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
from tests.conftest import ROOT, VENV_BIN, migrate_airflow, project_environment, run_dag

pytestmark = pytest.mark.integration


DAGBAG_PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=%r)
dag = bag.get_dag("ctr_pipeline")
print(json.dumps({
    "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "tags": sorted(dag.tags) if dag else None,
    "tasks": {
        t.task_id: {"queue": t.queue, "retries": t.retries, "upstream": sorted(t.upstream_task_ids)}
        for t in dag.tasks
    } if dag else {},
}))
"""


def test_dagbag_has_no_import_errors_and_tasks_are_configured(tmp_path):
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
    assert set(bag["tags"]) >= {"ctr", "training"}
    tasks = bag["tasks"]
    assert tasks["ingest"]["upstream"] == [] and tasks["validate"]["upstream"] == ["ingest"]
    assert "register" in tasks
    # The two models train in parallel, on the GPU queue, from the same training set.
    for name in ("train_xgboost", "train_wide_deep"):
        assert tasks[name]["queue"] == "gpu"
        assert tasks[name]["upstream"] == ["build_training_set"]
    assert tasks["build_candidates"]["upstream"] == ["validate"]
    assert "build_candidates" in tasks["register"]["upstream"]
    assert tasks["evaluate"]["upstream"] == ["train_wide_deep", "train_xgboost"]
    assert tasks["validate"]["retries"] == 0
    assert all(t["retries"] >= 1 for name, t in tasks.items() if name != "validate")


def test_dag_runs_green_and_produces_validation_features_and_a_champion(dag_run, use_environment):
    assert dag_run["result"].returncode == 0, dag_run["output"][-5000:]
    assert "state=success" in dag_run["output"]
    data_dir = dag_run["data_dir"]

    report = json.loads((data_dir / "quarantine/report.json").read_text())
    assert report["success"] and report["quarantined_rows"] == 35
    assert report["accepted_rows"] + report["quarantined_rows"] == report["input_rows"] == 84287

    use_environment(dag_run["env"])
    from models.feature_store import open_store
    from models.registry import load_by_alias
    from models.settings import get_settings

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
    from models.feature_store import feature_names, open_store
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
    assert "expect_column_values_to_be_in_set[behavior] (300 rows" in output
    assert "state=failed" in output
    quarantined = pd.read_parquet(tmp_path / "data/quarantine/rows.parquet")
    assert len(quarantined) == 300 and set(quarantined["behavior"]) == {"click"}
    assert not (tmp_path / "data/lake/accepted_events.parquet").exists()  # nothing downstream ran
    assert not (tmp_path / "data/offline").exists()


def test_ctr_cli_help_lists_the_stages():
    out = subprocess.run(
        [str(VENV_BIN / "ctr"), "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "build_training_set" in out and "warm_start" in out
