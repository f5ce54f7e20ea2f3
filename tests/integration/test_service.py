"""A real `bentoml serve` of the ranker over the DAG's stores and registry."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from feature_repo.contract import MODEL_FEATURE_SERVICE
from tests.conftest import bentoml_serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["ctr-xgboost", "ctr-wide-deep"])
def server(dag_run, request):
    """The service scoring with the champion of each registered model (CTR_SERVED_MODEL)."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    env = {**dag_run["env"], "CTR_SERVED_MODEL": request.param}
    with bentoml_serve(["ctr", "serve"], env, dag_run["data_dir"] / f"serve-{request.param}.log") as url:
        yield url, request.param


def test_rank_scores_equal_the_registered_model_on_online_features(server, dag_run, use_environment):
    url, model_name = server
    items = [283, 2268318, 2333346, 4365585, 3830808, 987654321]
    at = 1512273600  # 2017-12-03 12:00 in Beijing, inside the data: request-time features are live
    payload = {"user_id": 1, "item_ids": items, "context": {"request_ts": at}}
    response = httpx.post(f"{url}/rank", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(i["item_id"] for i in body["items"]) == sorted(items)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model"] == {"name": model_name, "version": "1", "feature_service": MODEL_FEATURE_SERVICE}

    use_environment(dag_run["env"])
    import pandas as pd

    from models.feature_store import open_store
    from models.registry import load_by_alias
    from models.settings import get_settings

    settings = get_settings()
    champion = load_by_alias(settings, name=model_name)
    store = open_store(settings)
    online = store.get_online_features(
        features=store.get_feature_service(champion.feature_service),
        entity_rows=[{"user_id": 1, "item_id": i, "request_ts": at} for i in items],
    ).to_dict()
    assert online["user_seconds_since_last_event"][0] < 24 * 3600  # user 1 was active that day
    offline = champion.predict(pd.DataFrame(online))
    served = {i["item_id"]: i["score"] for i in body["items"]}
    np.testing.assert_allclose([served[i] for i in items], offline, rtol=1e-6)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"user_id": 1, "item_ids": []}, "at least 1 item"),
        ({"user_id": 1, "item_ids": [5, 5]}, "item_ids must be unique; repeated: [5]"),
        ({"item_ids": [5]}, "user_id"),
        ({"user_id": "someone", "item_ids": [5]}, "user_id"),
        ({"user_id": 1, "item_ids": list(range(501))}, "at most 500"),
        ({"user_id": 1, "item_ids": [5], "context": {"request_ts": -3}}, "request_ts"),
    ],
)
def test_bad_requests_get_a_400_with_a_message(server, payload, expected):
    response = httpx.post(f"{server[0]}/rank", json=payload, timeout=30)
    assert response.status_code == 400
    assert expected in response.text


def test_malformed_json_gets_a_400(server):
    response = httpx.post(
        f"{server[0]}/rank",
        content=b'{"user_id": 1, "item_ids": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "Invalid JSON" in response.text
