"""Continuous learning on the DAG's real registry: each champion continued on the newest day is
logged, evaluated and gated like a full retrain. Works on a copy so other tests keep their champion."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.integration


def test_warm_start_continues_each_champion_and_gates_it(dag_run, tmp_path, use_environment):
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    copy = tmp_path / "data"
    shutil.copytree(dag_run["data_dir"], copy, ignore=shutil.ignore_patterns("airflow", "*.log"))
    use_environment({**dag_run["env"], "CTR_DATA_DIR": str(copy)})
    from models.pipeline import warm_start
    from models.registry import CHAMPION, client
    from models.settings import get_settings

    settings = get_settings()
    results = warm_start(settings)
    tracking = client(settings)
    for kind, name in (("xgboost", "ctr-xgboost"), ("wide_deep", "ctr-wide-deep")):
        result = results[kind]
        assert result["champion_version"] == "1" and result["version"] == "2"
        version = tracking.get_model_version(name, "2")
        assert version.tags["training"] == "warm_start"
        assert version.tags["promotion"] == result["reason"]
        # Sane, it is promoted exactly when it beats the champion on the same test rows.
        if not result["reason"].startswith("sanity checks failed"):
            assert result["promoted"] == (result["warm_start_auc"] > result["champion_auc"])
            assert result["champion_auc"] == pytest.approx(result["required_auc"])
        else:
            assert not result["promoted"]
        expected = "2" if result["promoted"] else "1"
        assert str(tracking.get_model_version_by_alias(name, CHAMPION).version) == expected
