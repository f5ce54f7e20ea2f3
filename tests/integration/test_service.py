"""A real `bentoml serve` of the ranker over the DAG's stores and registry."""

from __future__ import annotations

import http.client
import time

import httpx
import numpy as np
import pytest

from feature_repo.contract import MODEL_FEATURE_SERVICE
from tests.integration.conftest import bentoml_serve

pytestmark = pytest.mark.integration

AT = 1512273600  # 2017-12-03 12:00 in Beijing, inside the data: request-time features are live
UNKNOWN_ITEM = 987654321


@pytest.fixture(scope="module", params=["ctr-xgboost", "ctr-wide-deep"])
def server(dag_run, request):
    """The service scoring with the champion of each registered model (CTR_SERVED_MODEL)."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    log = dag_run["data_dir"] / f"serving-{request.param}"
    env = {**dag_run["env"], "CTR_SERVED_MODEL": request.param, "CTR_SERVING_LOG": str(log)}
    with bentoml_serve(["ctr", "serve"], env, dag_run["data_dir"] / f"serve-{request.param}.log") as url:
        yield url, request.param, env


def test_rank_scores_equal_the_registered_model_on_online_features(server, dag_run, use_environment):
    url, model_name, _ = server
    items = [283, 2268318, 2333346, 4365585, 3830808, UNKNOWN_ITEM]
    payload = {"user_id": 1, "item_ids": items, "context": {"request_ts": AT}}
    response = httpx.post(f"{url}/rank", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(i["item_id"] for i in body["items"]) == sorted(items)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model"] == {
        "name": model_name,
        "version": "1",
        "feature_service": MODEL_FEATURE_SERVICE,
        "variant": "champion",
    }
    assert body["fallback"] is False
    assert {i["item_id"] for i in body["items"] if i["unknown"]} == {UNKNOWN_ITEM}

    use_environment(dag_run["env"])
    import pandas as pd

    from models.features.batch import new_item_features
    from models.features.store import open_store
    from models.registry import load_by_alias
    from models.settings import get_settings

    settings = get_settings()
    champion = load_by_alias(settings, name=model_name)
    store = open_store(settings)
    online = pd.DataFrame(
        store.get_online_features(
            features=store.get_feature_service(champion.feature_service),
            entity_rows=[{"user_id": 1, "item_id": i, "request_ts": AT} for i in items],
        ).to_dict()
    )
    assert online["user_seconds_since_last_event"][0] < 24 * 3600  # user 1 was active that day
    # The unknown item is scored as an item with no events yet.
    defaults = new_item_features()
    online.loc[online["item_id"] == UNKNOWN_ITEM, list(defaults)] = list(defaults.values())
    offline = champion.predict(online)
    served = {i["item_id"]: i["score"] for i in body["items"]}
    np.testing.assert_allclose([served[i] for i in items], offline, rtol=1e-6)


def test_explain_names_the_features_behind_each_score(server):
    url, model_name, _ = server
    items = [283, 2268318, 2333346, 4365585]
    payload = {"user_id": 1, "item_ids": items, "context": {"request_ts": AT}, "explain": True}
    body = httpx.post(f"{url}/rank", json=payload, timeout=60).json()
    for item in body["items"]:
        explanation = item["explanation"]
        assert 1 <= len(explanation) <= 5
        magnitudes = [abs(c["contribution"]) for c in explanation]
        assert magnitudes == sorted(magnitudes, reverse=True)
    features = {c["feature"] for item in body["items"] for c in item["explanation"]}
    assert features and all(not f.endswith("_id") for f in features)
    plain = httpx.post(f"{url}/rank", json={"user_id": 1, "item_ids": items}, timeout=30).json()
    assert all(i["explanation"] is None for i in plain["items"])


def test_recommend_returns_k_ranked_candidates_and_a_popular_list_for_a_new_user(server):
    url, _, _ = server
    response = httpx.post(
        f"{url}/recommend", json={"user_id": 1, "k": 10, "context": {"request_ts": AT}}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not body["cold_start"] and not body["fallback"]
    assert [i["score"] for i in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)
    assert {i["source"] for i in body["items"]} <= {"covisit", "category", "popular"}

    new = httpx.post(
        f"{url}/recommend", json={"user_id": 10**12, "k": 5, "context": {"request_ts": AT}}, timeout=30
    )
    body = new.json()
    assert new.status_code == 200 and body["cold_start"] is True and len(body["items"]) == 5
    assert all(i["source"] == "popular" for i in body["items"])


def test_every_response_is_in_the_serving_log(server):
    url, _, env = server
    from pathlib import Path

    from models.monitoring.serving_log import read_serving_log

    ids = set()
    for user in (1, 2, 3):
        body = httpx.post(
            f"{url}/rank", json={"user_id": user, "item_ids": [283, 2268318]}, timeout=30
        ).json()
        ids.add(body["request_id"])
    recommended = httpx.post(
        f"{url}/recommend", json={"user_id": 1, "k": 3, "context": {"request_ts": AT}}, timeout=30
    ).json()
    ids.add(recommended["request_id"])
    deadline = time.monotonic() + 20  # the log is flushed every 5 s
    while time.monotonic() < deadline:
        served = read_serving_log(Path(env["CTR_SERVING_LOG"]))
        if ids <= set(served["request_id"]):
            break
        time.sleep(1)
    rows = served[served["request_id"].isin(ids)]
    # /recommend ranks a larger pool: only the k items it returned were served, and are logged.
    shown = rows[rows["request_id"] == recommended["request_id"]]
    assert shown["item_id"].tolist() == [i["item_id"] for i in recommended["items"]]
    assert len(rows) == 6 + 3 and set(rows["variant"]) == {"champion"}
    assert rows["f_item_pv_7d"].notna().all()


@pytest.mark.parametrize(
    ("route", "payload", "expected"),
    [
        ("rank", {"user_id": 1, "item_ids": []}, "at least 1 item"),
        ("rank", {"user_id": 1, "item_ids": [5, 5]}, "item_ids must be unique; repeated: [5]"),
        ("rank", {"item_ids": [5]}, "user_id"),
        ("rank", {"user_id": "someone", "item_ids": [5]}, "user_id"),
        ("rank", {"user_id": 1, "item_ids": list(range(501))}, "at most 500"),
        ("rank", {"user_id": 1, "item_ids": [5], "context": {"request_ts": -3}}, "request_ts"),
        ("rank", {"user_id": 1, "item_ids": [5], "explain": "please"}, "explain"),
        ("recommend", {"user_id": 1, "k": 0}, "greater than or equal to 1"),
        ("recommend", {"user_id": 1, "k": 101}, "less than or equal to 100"),
        ("recommend", {"user_id": -1}, "user_id"),
    ],
)
def test_bad_requests_get_a_400_with_a_message(server, route, payload, expected):
    response = httpx.post(f"{server[0]}/{route}", json=payload, timeout=30)
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


def test_an_idle_keep_alive_connection_stays_open_past_uvicorns_default(server):
    """A proxy pooling connections to the service reuses one after seconds of quiet; had the server
    closed it (uvicorn's default: after 5 s), the next request on it would be lost."""
    host, port = server[0].removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/readyz")
        first = connection.getresponse()
        first.read()
        assert first.status == 200
        time.sleep(6)
        connection.request("GET", "/readyz")  # the same socket: http.client does not reconnect
        assert connection.getresponse().status == 200
    finally:
        connection.close()
