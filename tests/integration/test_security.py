"""A real `bentoml serve` of the ingest service and the ranker with CTR_API_TOKEN, CTR_USER_ID_KEY and
small request limits set, over the DAG's stores and registry: write endpoints need the token, large
bodies get a 413, and only pseudonyms reach the event log, the serving log and the service logs; a
ranking for a shop's id equals the one a ranker without the key gives for its pseudonym."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.data.privacy import pseudonym
from tests.integration.conftest import bentoml_serve

pytestmark = pytest.mark.integration

TOKEN = "integration-token-7f3a9c1e5b"
KEY = "integration-key-2d8e4b6a0c9f1357"
RAW_USER = 918273645  # the shop's id: a number that appears nowhere else
AT = 1512273600  # 2017-12-03 12:00 in Beijing
ITEMS = [(2268318, 2520377), (2333346, 2520771), (283, 2520377)]  # (item, category) from the slice
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def services(dag_run, tmp_path_factory):
    """Ingest + ranker with the key and token; a second ranker without either, on the same stores."""
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    work = tmp_path_factory.mktemp("secured")
    secured = {
        **dag_run["env"],
        "CTR_API_TOKEN": TOKEN,
        "CTR_USER_ID_KEY": KEY,
        "CTR_EVENT_LOG": str(work / "events"),
        "CTR_MAX_REQUEST_BYTES": str(LIMIT),
        "CTR_INGEST_MAX_REQUEST_BYTES": str(LIMIT),
    }
    plain = {**dag_run["env"], "CTR_SERVING_LOG": str(work / "serving-plain")}
    logs = {name: work / f"{name}.log" for name in ("ingest", "ranker", "plain")}
    with ExitStack() as stack:
        urls = {
            "ingest": stack.enter_context(bentoml_serve(["ctr", "ingest"], secured, logs["ingest"])),
            "ranker": stack.enter_context(
                bentoml_serve(
                    ["ctr", "serve"], {**secured, "CTR_SERVING_LOG": str(work / "serving")}, logs["ranker"]
                )
            ),
            "plain": stack.enter_context(bentoml_serve(["ctr", "serve"], plain, logs["plain"])),
        }
        yield {"urls": urls, "work": work, "logs": logs}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token"}, {"Authorization": TOKEN}])
def test_write_endpoints_answer_401_without_the_token(services, headers):
    event = {"user_id": 5, "item_id": 2, "category_id": 3, "behavior": "pv", "event_timestamp": AT}
    urls = services["urls"]
    for response in (
        httpx.post(f"{urls['ingest']}/events", json={"events": [event]}, headers=headers, timeout=30),
        httpx.post(f"{urls['ranker']}/reload", json={}, headers=headers, timeout=30),
    ):
        assert response.status_code == 401, response.text
        assert "Authorization: Bearer <CTR_API_TOKEN>" in response.json()["error"]


def test_with_the_token_writes_go_through_and_reads_need_none(services):
    urls = services["urls"]
    reload = httpx.post(f"{urls['ranker']}/reload", json={}, headers=AUTH, timeout=60)
    assert reload.status_code == 200 and reload.json()["champion"] == "1"
    assert httpx.post(f"{urls['plain']}/reload", json={}, timeout=60).status_code == 200  # no token set
    ranked = httpx.post(f"{urls['ranker']}/rank", json={"user_id": 5, "item_ids": [283]}, timeout=30)
    assert ranked.status_code == 200
    for path in ("/metrics", "/readyz", "/livez"):
        assert httpx.get(f"{urls['ranker']}{path}", timeout=30).status_code == 200


def test_bodies_over_the_limit_get_a_413_and_other_than_json_a_415(services):
    urls = services["urls"]
    padding = " " * LIMIT  # valid JSON, too large
    body = ('{"user_id": 5, "item_ids": [283]' + padding + "}").encode()
    for url, path, headers in ((urls["ranker"], "/rank", {}), (urls["ingest"], "/events", AUTH)):
        declared = httpx.post(f"{url}{path}", content=body, headers=headers, timeout=30)
        assert declared.status_code == 413, declared.text
        assert f"larger than {LIMIT:,} bytes" in declared.json()["error"]
        streamed = httpx.post(
            f"{url}{path}",
            content=(body[i : i + 4096] for i in range(0, len(body), 4096)),  # chunked, no length
            headers=headers,
            timeout=30,
        )
        assert streamed.status_code == 413, streamed.text
    pickled = httpx.post(
        f"{urls['ranker']}/rank",
        content=b"\x80\x05N.",
        headers={"content-type": "application/vnd.bentoml+pickle"},
        timeout=30,
    )
    assert pickled.status_code == 415
    # the list limits still answer 400 below the size limit
    too_many = httpx.post(
        f"{urls['ranker']}/rank", json={"user_id": 5, "item_ids": list(range(501))}, timeout=30
    )
    assert too_many.status_code == 400 and "at most 500" in too_many.text


def _ingest_history(services) -> None:
    events = [
        {"user_id": RAW_USER, "item_id": item, "category_id": category, "behavior": b, "event_timestamp": ts}
        for (item, category), b, ts in zip(
            ITEMS, ["pv", "cart", "pv"], [AT - 600, AT - 300, AT - 60], strict=True
        )
    ]
    response = httpx.post(
        f"{services['urls']['ingest']}/events", json={"events": events}, headers=AUTH, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] in (0, 3)  # 0: a rerun on the same stores


def test_a_shops_id_ranks_as_its_pseudonym_does_without_the_key(services):
    _ingest_history(services)
    urls = services["urls"]
    items = [283, 2268318, 2333346, 4365585, 3830808]
    context = {"request_ts": AT}
    keyed = httpx.post(
        f"{urls['ranker']}/rank",
        json={"user_id": RAW_USER, "item_ids": items, "context": context},
        timeout=30,
    ).json()
    plain = httpx.post(
        f"{urls['plain']}/rank",
        json={"user_id": pseudonym(RAW_USER, KEY), "item_ids": items, "context": context},
        timeout=30,
    ).json()
    assert keyed["user_id"] == RAW_USER  # echoed as sent
    assert [i["item_id"] for i in keyed["items"]] == [i["item_id"] for i in plain["items"]]
    np.testing.assert_allclose([i["score"] for i in keyed["items"]], [i["score"] for i in plain["items"]])
    assert not keyed["fallback"] and not plain["fallback"]

    recommended = [
        httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5, "context": context}, timeout=30).json()
        for url, user in ((urls["ranker"], RAW_USER), (urls["plain"], pseudonym(RAW_USER, KEY)))
    ]
    assert not recommended[0]["cold_start"]  # the ingested history was found under the pseudonym
    assert [i["item_id"] for i in recommended[0]["items"]] == [i["item_id"] for i in recommended[1]["items"]]


def test_only_pseudonyms_reach_the_event_log_the_serving_log_and_the_service_logs(services):
    from models.data.event_log import EventLog
    from models.monitoring.serving_log import read_serving_log

    urls, work = services["urls"], services["work"]
    _ingest_history(services)
    shown = httpx.post(
        f"{urls['ranker']}/rank", json={"user_id": RAW_USER, "item_ids": [283, 2268318]}, timeout=30
    ).json()
    # a request that fails validation, quoting the raw id in pydantic's message
    bad = {"user_id": RAW_USER, "item_id": 1, "behavior": "pv", "event_timestamp": AT}
    rejected = httpx.post(f"{urls['ingest']}/events", json={"events": [bad]}, headers=AUTH, timeout=30)
    assert rejected.status_code == 400
    assert httpx.post(f"{urls['ranker']}/rank", json={"user_id": RAW_USER}, timeout=30).status_code == 400

    assert set(EventLog(work / "events").read()["user_id"]) == {pseudonym(RAW_USER, KEY)}
    deadline = time.monotonic() + 20  # the serving log is flushed every 5 s
    while time.monotonic() < deadline:
        served = read_serving_log(work / "serving")
        if shown["request_id"] in set(served["request_id"]):
            break
        time.sleep(1)
    mine = served[served["request_id"] == shown["request_id"]]
    assert len(mine) == 2 and set(mine["user_id"]) == {pseudonym(RAW_USER, KEY)}
    assert RAW_USER not in set(served["user_id"])
    for name in ("ingest", "ranker"):
        text = Path(services["logs"][name]).read_text()
        assert "validation error(s)" in text  # the failed request was logged, without its values
        assert str(RAW_USER) not in text, f"the raw user id is in the {name} service log"
        assert TOKEN not in text and KEY not in text
