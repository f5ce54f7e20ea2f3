"""A new champion deployed end to end on the DAG's stores and registry: build the Bento, smoke-test
it with a real `bentoml serve`, reload a running `ctr serve`, record the deployment."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import bentoml_serve

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment_env(dag_run, tmp_path):
    """A copy of the DAG's registry, stores and lists, so moving the champion here leaves the
    other tests' registry as it was."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    data_dir = tmp_path / "data"
    for part in ("mlflow", "feast", "lake", "candidates"):
        shutil.copytree(dag_run["data_dir"] / part, data_dir / part)
    return {**dag_run["env"], "CTR_DATA_DIR": str(data_dir)}


def test_a_new_champion_is_built_smoke_tested_reloaded_and_recorded(
    deployment_env, use_environment, monkeypatch, tmp_path
):
    use_environment(deployment_env)
    from models.ops.deployment import build_bento, record_deployment, reload_service, smoke_test
    from models.registry import CHAMPION, client
    from models.settings import get_settings

    settings = get_settings()
    name = settings.served_model_name
    tracking = client(settings)
    first = tracking.get_model_version_by_alias(name, CHAMPION)

    # A running service on the current champion; it checks the aliases only when told to.
    running = {
        **deployment_env,
        "CTR_MODEL_RELOAD_S": "3600",
        "CTR_SERVING_LOG": str(tmp_path / "serving_log"),
    }
    with bentoml_serve(["ctr", "serve"], running, tmp_path / "serve.log") as url:
        # The champion moves: what triggers a deployment.
        second = tracking.create_model_version(name, first.source, first.run_id, tags=first.tags)
        new = str(second.version)
        assert new != str(first.version)
        # ... through the promotion gate, whose record the service checks before serving it
        from models.evaluation.promotion import record_promotion

        record_promotion(settings, name, new, CHAMPION, json.loads(first.tags["promotion_record"])["metrics"])
        tracking.set_registered_model_alias(name, CHAMPION, new)

        built = build_bento(settings)
        assert built["tag"].startswith("ranker:")
        assert Path(built["path"]).is_relative_to(settings.data_dir / "bentoml")
        assert (Path(built["path"]) / "src/models/registry.py").is_file() and built["size_bytes"] > 0

        smoke = smoke_test(settings, built["tag"])
        assert smoke["passed"] and smoke["champion_version"] == new
        assert smoke["model"]["name"] == name and smoke["model"]["version"] == new
        assert smoke["request"]["item_ids"] and smoke["unknown_items"] < len(smoke["request"]["item_ids"])
        # Its requests went to its own serving log, not the readout's.
        assert not (settings.serving_log_dir).exists()

        settings = dataclasses.replace(settings, service_url=url)
        reloaded = reload_service(settings)
        assert reloaded["reloaded"] and reloaded["changed"] and reloaded["champion"] == new, reloaded
        payload = {"user_id": smoke["request"]["user_id"], "item_ids": smoke["request"]["item_ids"]}
        served = httpx.post(f"{url}/rank", json=payload, timeout=30).json()
        assert served["model"]["version"] == new and served["fallback"] is False

    recorded = record_deployment(settings, {"build": built, "smoke_test": smoke, "reload": reloaded})
    assert recorded["version"] == new and recorded["bento_tag"] == built["tag"]
    (line,) = (settings.data_dir / "deployments/deployments.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["reload"]["champion"] == new and record["smoke_test"]["model"]["version"] == new
    assert {"model": name, "version": new, "served": True} in record["champions"]
    tags = tracking.get_model_version(name, new).tags
    assert tags["deployed_bento"] == built["tag"] and tags["deployed_at"] == record["deployed_at"]
