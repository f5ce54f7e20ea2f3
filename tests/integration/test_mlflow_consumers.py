"""The registered champions through MLflow's own consumers, as an MLflow user would use them:
`mlflow.pyfunc.load_model` in a process that cannot import this project, and `mlflow models serve`
answering /invocations. Both must give the probability of purchase intent of each feature row,
equal to what the ranker scores for the same rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from models.ops.processes import free_port, process_group
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

MODELS = ["ctr-xgboost", "ctr-wide-deep"]
ROWS = 200

# Runs in a fresh interpreter: the project's editable-install finder is removed first, so the only
# code the model can use is what was logged with it.
OUTSIDE = r"""
import importlib.util, json, sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path = [p for p in sys.path if p not in ("", {root!r})]
assert importlib.util.find_spec("models") is None, "the project is importable"
import mlflow, pandas as pd
mlflow.set_tracking_uri({tracking!r})
model = mlflow.pyfunc.load_model("models:/{name}@champion")
rows = pd.read_json(sys.stdin, orient="split", dtype=False)
columns = model.metadata.get_input_schema().input_names()
scores = model.predict(rows[columns])
import models
print(json.dumps({{"scores": [float(s) for s in scores], "code": models.__file__}}))
"""


@pytest.fixture(scope="module")
def rows(dag_run):
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    frame = pd.read_parquet(dag_run["data_dir"] / "datasets/training_set.parquet")
    return frame.sample(ROWS, random_state=0).reset_index(drop=True)


def _served(name: str, rows: pd.DataFrame) -> np.ndarray:
    """What the ranker scores: the champion loaded as the service loads it (call after
    use_environment(dag_run["env"]))."""
    from models.registry import load_by_alias
    from models.settings import get_settings

    return load_by_alias(get_settings(), name=name).predict(rows)


def _signature_rows(dag_run, name: str, rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows as the champion's signature types them, and the tracking URI of the DAG's registry."""
    import mlflow

    from models.kinds.packaging import as_signature

    tracking = f"sqlite:///{dag_run['data_dir']}/mlflow/mlflow.db"
    mlflow.set_tracking_uri(tracking)
    info = mlflow.models.get_model_info(f"models:/{name}@champion")
    return as_signature(rows, info.signature.inputs.input_names()), tracking


@pytest.mark.parametrize("name", MODELS)
def test_pyfunc_in_a_process_without_the_project_predicts_what_the_ranker_serves(
    dag_run, rows, name, use_environment
):
    x, tracking = _signature_rows(dag_run, name, rows)
    code = OUTSIDE.format(root=str(ROOT), tracking=tracking, name=name)
    env = {k: v for k, v in dag_run["env"].items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=x.to_json(orient="split"),
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/models/" in answer["code"], answer["code"]  # the model's own shipped code
    scores = np.asarray(answer["scores"])
    assert ((scores > 0) & (scores < 1)).all() and len(np.unique(scores)) > ROWS / 4  # probabilities
    use_environment(dag_run["env"])
    np.testing.assert_allclose(scores, _served(name, rows), rtol=1e-6)


def test_mlflow_models_serve_answers_invocations_with_the_same_probabilities(dag_run, rows, use_environment):
    name = "ctr-wide-deep"
    x, tracking = _signature_rows(dag_run, name, rows)
    port = free_port()
    env = {**dag_run["env"], "MLFLOW_TRACKING_URI": tracking}
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow_cli, "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = dag_run["data_dir"] / "mlflow-models-serve.log"
    with process_group(command, env=env, log=log, ready=f"http://127.0.0.1:{port}/ping", timeout_s=180):
        body = {"dataframe_split": json.loads(x.to_json(orient="split"))}
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
        assert response.status_code == 200, response.text[-2000:]
        predictions = np.asarray(response.json()["predictions"], dtype=np.float64)

        bad = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": {"columns": ["user_id"], "data": [[1]]}},
            timeout=60,
        )
        assert bad.status_code == 400 and "item_id" in bad.text  # a missing input is named
    use_environment(dag_run["env"])
    np.testing.assert_allclose(predictions, _served(name, rows), rtol=1e-6)
