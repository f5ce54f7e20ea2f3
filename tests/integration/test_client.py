"""BentoML's own HTTP clients, `bentoml.SyncHTTPClient` and `bentoml.AsyncHTTPClient`, against a real
`bentoml serve` of the ranker and of the ingest service (CTR_API_TOKEN set) on a Redis online store:
every endpoint and response shape decodes to what a plain HTTP client gets, and each response
matches the service's OpenAPI document; bad requests raise the client's error with the service's
message; the token goes as the client's `token`. The ranker runs two workers (CTR_RANKER_WORKERS).
The last test stops Redis for the fallback."""

from __future__ import annotations

import asyncio
import time

import bentoml
import httpx
import jsonschema
import pytest
from bentoml.exceptions import BentoMLException, InvalidArgument

from tests.integration.conftest import bentoml_serve, redis_copy_of

pytestmark = pytest.mark.integration

TOKEN = "client-token-5c2e9a7b31"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AT = 1512273600  # 2017-12-03 12:00 in Beijing, inside the data
ITEMS = [283, 2268318, 2333346, 4365585]
NEW_USER = 10**12  # no history: /recommend answers with the cold-start list
CONTEXT = {"request_ts": AT}
KINDS = ["sync", "async"]

# What each check calls: (label, endpoint, keyword arguments).
RANKER_CALLS = [
    ("rank", "rank", {"user_id": 1, "item_ids": ITEMS, "context": CONTEXT}),
    ("rank explained", "rank", {"user_id": 1, "item_ids": ITEMS, "context": CONTEXT, "explain": True}),
    ("recommend", "recommend", {"user_id": 1, "k": 5, "context": CONTEXT}),
    ("recommend, new user", "recommend", {"user_id": NEW_USER, "k": 3, "context": CONTEXT}),
    ("reload", "reload", {}),
]


@pytest.fixture(scope="module")
def stack(dag_run, tmp_path_factory):
    """The DAG's registry and features in a Redis this module stops at its end, served by the ranker
    (two workers) and fed by the ingest service, both with an API token. One start for every test."""
    with (
        redis_copy_of(dag_run, tmp_path_factory, "client", CTR_API_TOKEN=TOKEN) as (data_dir, env, redis),
        bentoml_serve(["ctr", "serve"], {**env, "CTR_RANKER_WORKERS": "2"}, data_dir / "serve.log") as ranker,
        bentoml_serve(["ctr", "ingest"], env, data_dir / "ingest.log") as ingest,
    ):
        yield {
            "ranker": ranker,
            "ranker_log": data_dir / "serve.log",
            "ingest": ingest,
            "redis": redis,
            "openapi": _openapi(ranker) | _openapi(ingest),
        }


@pytest.fixture(autouse=True)
def _no_cloud_key(monkeypatch):
    """A client without `token` sends $BENTO_CLOUD_API_KEY instead: none here."""
    monkeypatch.delenv("BENTO_CLOUD_API_KEY", raising=False)


def _openapi(url: str) -> dict[str, jsonschema.protocols.Validator]:
    """A validator for each POST route's 200 response, from the service's own /docs.json."""
    spec = httpx.get(f"{url}/docs.json", timeout=30).json()
    validators = {}
    for path, item in spec["paths"].items():
        if "post" in item:
            schema = item["post"]["responses"]["200"]["content"]["application/json"]["schema"]
            validators[path] = jsonschema.Draft202012Validator({**schema, "components": spec["components"]})
    return validators


def _check_openapi(stack: dict, endpoint: str, body: dict) -> None:
    validator = stack["openapi"][f"/{endpoint}"]
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == [], (endpoint, body)


def _through_client(kind: str, url: str, calls: list[tuple], token: str | None = TOKEN) -> dict:
    """Each (label, endpoint, kwargs) call through one client of `kind`; returns each result, or the
    client's error it raised, by label."""
    if kind == "sync":
        results = {}
        with bentoml.SyncHTTPClient(url, token=token) as client:
            for label, name, kwargs in calls:
                try:
                    results[label] = getattr(client, name)(**kwargs)
                except BentoMLException as error:
                    results[label] = error
        return results

    async def run() -> dict:
        results = {}
        async with bentoml.AsyncHTTPClient(url, token=token) as client:
            for label, name, kwargs in calls:
                try:
                    results[label] = await getattr(client, name)(**kwargs)
                except BentoMLException as error:
                    results[label] = error
        return results

    return asyncio.run(run())


def _plain(url: str, endpoint: str, payload: dict) -> dict:
    response = httpx.post(f"{url}/{endpoint}", json=payload, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _but(body: dict, *keys: str) -> dict:
    """The body without `keys`: each response has a request id of its own."""
    return {k: v for k, v in body.items() if k not in ("request_id", *keys)}


@pytest.mark.parametrize("kind", KINDS)
def test_the_client_decodes_every_ranker_response_as_plain_http_has_it(stack, kind):
    url = stack["ranker"]
    decoded = _through_client(kind, url, RANKER_CALLS)
    for label, endpoint, kwargs in RANKER_CALLS:
        body = decoded[label]
        assert isinstance(body, dict), (label, body)
        plain = _plain(url, endpoint, kwargs)
        _check_openapi(stack, endpoint, body)
        assert _but(body) == _but(plain), label

    ranked = decoded["rank"]
    assert sorted(i["item_id"] for i in ranked["items"]) == sorted(ITEMS)
    assert not ranked["fallback"] and ranked["fallback_reason"] is None
    assert all(i["explanation"] is None and i["source"] is None for i in ranked["items"])
    for item in decoded["rank explained"]["items"]:
        assert item["explanation"], item
        assert all(set(c) == {"feature", "value", "contribution"} for c in item["explanation"])
    warm, new = decoded["recommend"], decoded["recommend, new user"]
    assert len(warm["items"]) == 5 and not warm["cold_start"]
    assert {i["source"] for i in warm["items"]} <= {"covisit", "category", "popular"}
    assert len(new["items"]) == 3 and new["cold_start"] and {i["source"] for i in new["items"]} == {"popular"}
    reloaded = decoded["reload"]
    assert reloaded["champion"] == "1" and reloaded["changed"] is False


def test_both_ranker_workers_serve_and_rank_alike(stack):
    """CTR_RANKER_WORKERS=2: two processes start with their models, and a request gets the same
    ranking whichever answers it (each on a connection of its own, as from many clients)."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"user_id": 1, "item_ids": ITEMS, "context": CONTEXT}

    def rank(_: int) -> tuple[int, bool, tuple]:
        response = httpx.post(f"{stack['ranker']}/rank", json=body, timeout=30)
        answer = response.json()
        return (
            response.status_code,
            answer["fallback"],
            tuple((i["item_id"], i["score"]) for i in answer["items"]),
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(rank, range(16)))  # warm-up: each worker's first reads build its plans
        answers = list(pool.map(rank, range(40)))
    assert {status for status, _, _ in answers} == {200}
    ranked = [items for _, fallback, items in answers if not fallback]
    assert len(ranked) >= 30  # a read past CTR_FEATURE_TIMEOUT_MS on a busy machine falls back
    assert len(set(ranked)) == 1
    started = stack["ranker_log"].read_text()
    assert "[entry_service:Ranker:1] Service Ranker initialized" in started
    assert "[entry_service:Ranker:2] Service Ranker initialized" in started


@pytest.mark.parametrize("kind", KINDS)
def test_the_client_sends_events_with_the_token(stack, kind):
    url = stack["ingest"]
    event = {
        "user_id": NEW_USER + KINDS.index(kind) + 1,  # a user of this test's own
        "item_id": 283,
        "category_id": 2520377,
        "behavior": "pv",
        "event_timestamp": int(time.time()) - 60,  # Unix seconds, as the API takes them
    }
    calls = [("first", "events", {"events": [event]}), ("again", "events", {"events": [event]})]
    decoded = _through_client(kind, url, calls)
    first, again = decoded["first"], decoded["again"]
    assert first["received"] == first["accepted"] == 1 and first["duplicates"] == 0, first
    assert again["received"] == again["duplicates"] == 1 and again["accepted"] == 0, again
    for body in (first, again):
        _check_openapi(stack, "events", body)
    assert _plain(url, "events", {"events": [event]}) == again


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_request_raises_the_clients_error_with_the_services_message(stack, kind):
    calls = [
        ("repeated", "rank", {"user_id": 1, "item_ids": [5, 5]}),
        ("k", "recommend", {"user_id": 1, "k": 0}),
        ("no items", "rank", {"user_id": 1, "item_ids": []}),
    ]
    raised = _through_client(kind, stack["ranker"], calls)
    expected = {
        "repeated": "item_ids must be unique; repeated: [5]",
        "k": "greater than or equal to 1",
        "no items": "at least 1 item",
    }
    for label, message in expected.items():
        assert isinstance(raised[label], InvalidArgument), (label, raised[label])
        assert raised[label].error_code == 400 and message in str(raised[label]), label


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_without_the_token_writes_raise_the_clients_error_and_reads_go_through(stack, token):
    event = {"user_id": 5, "item_id": 2, "category_id": 3, "behavior": "pv", "event_timestamp": AT}
    ranker = _through_client("sync", stack["ranker"], [RANKER_CALLS[0], ("reload", "reload", {})], token)
    ingest = _through_client("async", stack["ingest"], [("events", "events", {"events": [event]})], token)
    assert isinstance(ranker["rank"], dict) and len(ranker["rank"]["items"]) == len(ITEMS)
    for refused in (ranker["reload"], ingest["events"]):
        assert isinstance(refused, BentoMLException) and refused.error_code == 401, refused
        assert "Authorization: Bearer <CTR_API_TOKEN>" in str(refused)


def test_with_the_store_down_the_clients_decode_the_fallback_response(stack):
    """Last in this module: it stops Redis (and starts it again, for any test after it)."""
    ranker, ingest, redis = stack["ranker"], stack["ingest"], stack["redis"]
    event = {"user_id": NEW_USER + 9, "item_id": 283, "category_id": 2520377, "behavior": "pv"}
    calls = [
        ("rank", "rank", {"user_id": 1, "item_ids": ITEMS, "context": CONTEXT}),
        ("rank explained", "rank", {"user_id": 1, "item_ids": ITEMS, "context": CONTEXT, "explain": True}),
        ("recommend", "recommend", {"user_id": 1, "k": 5, "context": CONTEXT}),
    ]
    redis.stop()
    try:
        decoded = {kind: _through_client(kind, ranker, calls) for kind in KINDS}
        events = [
            {"events": [{**event, "event_timestamp": int(time.time()) - 60 + n}]} for n in range(len(KINDS))
        ]
        deferred = {
            kind: _through_client(kind, ingest, [("events", "events", events[n])])["events"]
            for n, kind in enumerate(KINDS)
        }
        plain = {label: _plain(ranker, endpoint, kwargs) for label, endpoint, kwargs in calls}
    finally:
        redis.start()

    for kind in KINDS:
        for label, endpoint, _ in calls:
            body = decoded[kind][label]
            assert isinstance(body, dict), (kind, label, body)
            assert body["fallback"] is True and "online store" in body["fallback_reason"], (kind, label, body)
            _check_openapi(stack, endpoint, body)
            # The reason says when the store last failed: it differs from one answer to the next.
            assert _but(body, "fallback_reason") == _but(plain[label], "fallback_reason"), (kind, label)
        ranked, recommended = decoded[kind]["rank"], decoded[kind]["recommend"]
        assert sorted(i["item_id"] for i in ranked["items"]) == sorted(ITEMS)
        assert all(i["explanation"] is None for i in decoded[kind]["rank explained"]["items"])
        assert len(recommended["items"]) == 5 and {i["source"] for i in recommended["items"]} == {"popular"}
        assert deferred[kind]["received"] == deferred[kind]["deferred"] == 1, deferred[kind]
        _check_openapi(stack, "events", deferred[kind])
