"""One error shape for the services, whichever part answers, documented in their OpenAPI documents;
refused requests logged as the caller's mistake, failures as errors. On small ASGI apps, and on the
OpenAPI documents BentoML generates for the ranker and the ingest service."""

from __future__ import annotations

import json
import logging

import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.errors import REQUEST_ERROR_LOGGER, ErrorBodies, error_body, log_refusals_as_client_errors
from services.ingest import Ingest
from services.ranker import Ranker
from services.schemas import ErrorResponse

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
VALIDATION = {
    "error": "1 validation error for Input",
    "detail": [{"type": "missing", "loc": ["user_id"], "msg": "Field required", "url": "https://x"}],
}


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (400, json.dumps(VALIDATION).encode(), "application/json", VALIDATION),
        # BentoML's rendering of an InvalidArgument raised by a service: a list of one object
        (400, b'[{"error": "bad k"}]', "application/json", {"error": "bad k", "detail": []}),
        (413, b'{"error": "too large"}', "application/json", {"error": "too large", "detail": []}),
        (404, b"Not Found", "text/plain; charset=utf-8", {"error": "Not Found", "detail": []}),
        (503, b"", "text/plain", {"error": "Service Unavailable", "detail": []}),
        (500, b"{broken", "application/json", {"error": "Internal Server Error", "detail": []}),
    ],
)
def test_every_error_body_comes_out_in_one_shape(status, body, content_type, expected):
    out = json.loads(error_body(status, body, content_type))
    assert out == expected
    ErrorResponse.model_validate(out)


async def _invalid(request: Request) -> JSONResponse:
    return JSONResponse([{"error": "item_ids must be unique"}], status_code=400)


async def _ok(request: Request) -> JSONResponse:
    return JSONResponse({"items": [1, 2]})


async def _not_ready(request: Request) -> None:
    raise HTTPException(status_code=503, detail="not ready: fill the store")


async def _spec(request: Request) -> JSONResponse:
    return JSONResponse(Ranker.openapi_spec.asdict())


def _client() -> TestClient:
    app = Starlette(
        routes=[
            Route("/rank", _invalid, methods=["POST"]),
            Route("/ok", _ok, methods=["POST"]),
            Route("/readyz", _not_ready),
            Route("/docs.json", _spec),
        ]
    )
    app.add_middleware(ErrorBodies, protected=["/reload"], limit_name="CTR_MAX_REQUEST_BYTES")
    return TestClient(app)


def test_the_middleware_reshapes_errors_and_leaves_successes_alone():
    client = _client()
    invalid = client.post("/rank", json={})
    assert invalid.status_code == 400 and invalid.json() == {"error": "item_ids must be unique", "detail": []}
    assert int(invalid.headers["content-length"]) == len(invalid.content)
    assert client.get("/readyz").json() == {"error": "not ready: fill the store", "detail": []}
    missing = client.get("/nothing")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found", "detail": []}
    wrong = client.get("/rank")
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed", "detail": []}
    ok = client.post("/ok", json={})
    assert ok.status_code == 200 and ok.content == b'{"items":[1,2]}'


@pytest.mark.parametrize("service", [Ranker, Ingest], ids=["ranker", "ingest"])
def test_the_openapi_document_gives_every_error_the_one_schema(service):
    protected = {Ranker: ["/reload"], Ingest: ["/events"]}[service]
    spec = ErrorBodies(None, protected=protected).document(
        json.loads(json.dumps(service.openapi_spec.asdict()))
    )
    schemas = spec["components"]["schemas"]
    assert not {"InvalidArgument", "NotFound", "InternalServerError"} & set(schemas)
    posts = {path: item["post"] for path, item in spec["paths"].items() if "post" in item}
    assert posts
    for path, operation in posts.items():
        responses = operation["responses"]
        expected = {"400", "404", "413", "415", *(["401"] if path in protected else [])}
        assert expected <= set(responses), path
        assert "401" in responses or path not in protected
        for status, response in responses.items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == ERROR_REF, (path, status)
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    validator = jsonschema.Draft202012Validator({**ERROR_REF, "components": spec["components"]})
    for body in (VALIDATION, {"error": "x", "detail": []}):
        assert list(validator.iter_errors(body)) == []
    for wrong in ([{"error": "x"}], {"error": "x"}, {"error": "x", "detail": "y"}):
        assert list(validator.iter_errors(wrong)), wrong


def test_the_served_document_is_the_rewritten_one():
    spec = _client().get("/docs.json").json()
    assert (
        spec["paths"]["/rank"]["post"]["responses"]["413"]["content"]["application/json"]["schema"]
        == ERROR_REF
    )
    assert "CTR_MAX_REQUEST_BYTES" in spec["paths"]["/rank"]["post"]["responses"]["413"]["description"]
    assert "401" in spec["paths"]["/reload"]["post"]["responses"]
    assert "401" not in spec["paths"]["/rank"]["post"]["responses"]


def test_repeated_candidates_are_refused_as_an_invalid_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as refused:
        Ranker.apis["rank"].input_spec.model_validate({"user_id": 1, "item_ids": [5, 7, 5, 7, 9]})
    (error,) = refused.value.errors(include_context=False, include_input=False, include_url=False)
    assert error == {
        "type": "unique",
        "loc": ("item_ids",),
        "msg": "item_ids must be unique; repeated: [5, 7]",
    }
    schema = Ranker.apis["rank"].input_spec.model_json_schema()["properties"]["item_ids"]
    assert schema["uniqueItems"] is True


def _logged(caplog, error: BaseException) -> logging.LogRecord:
    log_refusals_as_client_errors()
    logger = logging.getLogger(REQUEST_ERROR_LOGGER)
    caplog.clear()
    try:
        raise error
    except type(error):
        with caplog.at_level(logging.INFO, logger=REQUEST_ERROR_LOGGER):
            logger.error("Exception on %s [%s]", "/rank", "POST", exc_info=True)
    (record,) = caplog.records
    return record


def test_a_refusal_is_logged_at_info_in_one_line_and_a_failure_as_an_error(caplog):
    from bentoml.exceptions import InvalidArgument, ServiceUnavailable

    refused = _logged(caplog, InvalidArgument("k must be at most 100"))
    assert refused.levelno == logging.INFO and refused.exc_info is None
    assert refused.getMessage() == "Refused POST /rank (400): k must be at most 100"
    assert "Traceback" not in caplog.text
    failed = _logged(caplog, ServiceUnavailable("no candidate lists"))
    assert failed.levelno == logging.ERROR and failed.exc_info is not None
    assert failed.getMessage() == "Exception on /rank [POST]" and "Traceback" in caplog.text
