"""The services' request guard (size limit, bearer token) on a small ASGI app."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.security import RequestGuard

TOKEN = "s3cret-token-for-the-tests"


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


def _client(monkeypatch, token: str = TOKEN, max_bytes: int = 100) -> TestClient:
    from models.settings import get_settings

    monkeypatch.setenv("CTR_API_TOKEN", token)
    app = Starlette(
        routes=[Route("/events", _echo, methods=["POST"]), Route("/rank", _echo, methods=["POST", "GET"])]
    )
    app.add_middleware(RequestGuard, settings=get_settings(), max_bytes=max_bytes, protected=["/events"])
    return TestClient(app)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
)
def test_a_protected_path_without_the_token_gets_a_401_with_a_message(monkeypatch, headers):
    response = _client(monkeypatch).post("/events", json=[1], headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": "/events needs the header 'Authorization: Bearer <CTR_API_TOKEN>'",
        "detail": [],
    }
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text


def test_the_token_opens_the_protected_path_and_other_paths_stay_open(monkeypatch):
    client = _client(monkeypatch)
    assert client.post("/events", json=[1], headers={"Authorization": f"Bearer {TOKEN}"}).json() == {
        "bytes": 3
    }
    assert client.post("/events/", json=[1], headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    assert client.post("/events/").status_code == 401  # a trailing slash is the same path
    assert client.post("/rank", json=[1]).status_code == 200
    assert client.get("/rank").status_code == 200


def test_without_a_token_configured_nothing_needs_one(monkeypatch):
    assert _client(monkeypatch, token="").post("/events", json=[1]).status_code == 200


def test_a_body_over_the_limit_gets_a_413_before_the_app_reads_it(monkeypatch):
    client = _client(monkeypatch, max_bytes=100)
    assert client.post("/rank", content=b"x" * 100).json() == {"bytes": 100}
    response = client.post("/rank", content=b"x" * 101)
    assert response.status_code == 413
    assert "larger than 100 bytes (CTR_MAX_REQUEST_BYTES)" in response.json()["error"]
    # no Content-Length: the streamed size counts
    chunked = client.post("/rank", content=iter([b"x" * 60, b"x" * 60]))
    assert chunked.status_code == 413


@pytest.mark.parametrize(
    "content_type", ["application/vnd.bentoml+pickle", "multipart/form-data; boundary=x", "text/plain"]
)
def test_a_body_that_is_not_json_gets_a_415(monkeypatch, content_type):
    client = _client(monkeypatch)
    response = client.post("/rank", content=b"\x80\x05N.", headers={"content-type": content_type})
    assert response.status_code == 415 and "must be JSON" in response.json()["error"]
    assert client.post(
        "/rank", content=b"[]", headers={"content-type": "application/json; charset=utf-8"}
    ).json()


def _call(guard: RequestGuard, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """Drive the guard with a body in `chunks`; returns (status, chunks the client got to send)."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []
    taken = 0

    async def receive():
        nonlocal taken
        taken += 1
        return messages[taken - 1] if taken <= len(messages) else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/rank", "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], taken


def test_a_streamed_body_is_cut_at_the_limit_and_the_rest_drained(monkeypatch):
    from models.settings import get_settings

    reached = []

    async def app(scope, receive, send):
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = RequestGuard(app, settings=get_settings(), max_bytes=100)
    assert _call(guard, [], [b"x" * 50, b"x" * 50]) == (200, 2)
    assert reached == [b"x" * 100]  # the app gets the whole body at once
    assert _call(guard, [], [b"x" * 50, b"x" * 51, b"x" * 50, b"x"]) == (413, 4)
    assert _call(guard, [(b"content-length", b"500")], [b"x" * 500]) == (413, 1)
    assert len(reached) == 1


def test_a_failed_request_is_logged_without_its_input_values(caplog):
    import logging

    from pydantic import BaseModel, ValidationError

    from services.errors import REQUEST_ERROR_LOGGER, log_refusals_as_client_errors

    class Event(BaseModel):
        user_id: int
        item_id: int

    log_refusals_as_client_errors()
    log_refusals_as_client_errors()  # installed once
    logger = logging.getLogger(REQUEST_ERROR_LOGGER)
    assert len(logger.filters) == 1
    try:
        Event.model_validate({"user_id": 918273645})
    except ValidationError:
        with caplog.at_level(logging.INFO, logger=REQUEST_ERROR_LOGGER):
            logger.error("Exception on %s [%s]", "/events", "POST", exc_info=True)
    (record,) = caplog.records
    assert caplog.text.strip().endswith(
        "Refused POST /events (400): 1 validation error(s): item_id: Field required"
    )
    assert "918273645" not in caplog.text and record.exc_info is None
