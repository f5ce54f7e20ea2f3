"""One shape for every error a service answers, documented in its OpenAPI document, and refused
requests logged as what they are: the caller's mistake.

BentoML (1.4.39) answers errors in several shapes: a request that fails validation gets
`{"error": ..., "detail": [...]}`, an `InvalidArgument` raised by a service `[{"error": ...}]` (its
HTTP app wraps the body in a tuple), the router's 404 and 405 plain text, /readyz's 503 plain text.
Its OpenAPI document describes a 400 as `{"error": string, "detail": string}`. `ErrorBodies`, plain
ASGI middleware in front of everything else, rewrites each error body into `ErrorResponse`
(services/schemas.py) and documents that shape in /docs.json for every status the service answers
with; successful responses pass through untouched.

BentoML logs every failed request as `[ERROR] Exception on /path [POST]` with a traceback, a 400 as
much as a crash. `log_refusals_as_client_errors` installs a filter on that logger which logs a
refused request (4xx) at INFO, in one line with its reasons and without the request's values (a
pydantic message can quote the offending input, a user id included); failures (5xx) stay errors
with their traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from services.schemas import ErrorResponse
from services.security import ASGIApp, Message, Receive, Scope, Send

# The logger BentoML reports a failed request on (bentoml._internal.server.http_app.log_exception).
REQUEST_ERROR_LOGGER = "bentoml._internal.server.http_app"
OPENAPI_PATH = "/docs.json"
ERROR_SCHEMA = "ErrorResponse"
# BentoML's own error components, which ErrorResponse replaces.
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")


def error_body(status: int, body: bytes, content_type: str) -> bytes:
    """An error response's body as ErrorResponse JSON, whichever shape it came in."""
    phrase = _phrase(status)
    error, detail = "", []
    parsed: Any = None
    if content_type.startswith("application/json"):
        try:
            parsed = json.loads(body or b"null")
        except ValueError:
            parsed = None
    else:
        error = body.decode(errors="replace").strip()
    if isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict):
        parsed = parsed[0]  # an InvalidArgument's body, wrapped in a list by BentoML
    if isinstance(parsed, dict):
        if isinstance(parsed.get("error"), str):
            error = parsed["error"]
        if isinstance(parsed.get("detail"), list):
            detail = [d for d in parsed["detail"] if isinstance(d, dict)]
        elif isinstance(parsed.get("detail"), str) and parsed["detail"]:
            error = f"{error}: {parsed['detail']}" if error else parsed["detail"]
    response = ErrorResponse.model_validate({"error": error or phrase, "detail": detail})
    return response.model_dump_json().encode()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


class ErrorBodies:
    """ASGI middleware: every error response in the ErrorResponse shape; /docs.json documents it.

    `protected` are the paths that need the API token (a 401 is documented on them), `limit_name`
    the setting that bounds the request size (named in the 413's description)."""

    def __init__(self, app: ASGIApp, *, protected: Iterable[str] = (), limit_name: str = "") -> None:
        self.app = app
        self.protected = frozenset(path.rstrip("/") for path in protected)
        self.limit_name = limit_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_spec = scope["method"] == "GET" and scope["path"] == OPENAPI_PATH
        held: Message | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if message["status"] >= 400 or (is_spec and message["status"] == 200):
                    held = message  # sent with the rewritten body
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                await self._send_rewritten(send, held, b"".join(chunks))
                return
            await send(message)

        await self.app(scope, receive, rewriting_send)

    async def _send_rewritten(self, send: Send, start: Message, body: bytes) -> None:
        status = start["status"]
        headers = [
            (k, v)
            for k, v in start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        ]
        content_type = next(
            (
                v.decode("latin-1").lower()
                for k, v in start.get("headers", [])
                if k.lower() == b"content-type"
            ),
            "",
        )
        if status >= 400:
            body = error_body(status, body, content_type)
        else:
            body = json.dumps(self.document(json.loads(body))).encode()
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def document(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The OpenAPI document with ErrorResponse as the body of every error response, and the
        refusals the request guard and the router answer (401, 404, 413, 415) on each API."""
        schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for name in BENTOML_ERROR_SCHEMAS:
            schemas.pop(name, None)
        schemas.update(schema.pop("$defs", {}))
        schemas[ERROR_SCHEMA] = schema
        ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
        for path, item in spec.get("paths", {}).items():
            for method, operation in item.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                if method == "post":
                    for status, description in self._refusals(path).items():
                        responses.setdefault(str(status), {"description": description})
                elif path.rstrip("/").endswith("/readyz"):
                    not_ready = "Not ready: `error` says why and what to do."
                    responses.setdefault("503", {"description": not_ready})
                for status, response in list(responses.items()):
                    if int(status) >= 400:
                        responses[status] = {
                            **response,
                            "content": {"application/json": {"schema": ref}},
                        }
        return spec

    def _refusals(self, path: str) -> dict[int, str]:
        limit = f" ({self.limit_name})" if self.limit_name else ""
        refusals = {
            400: "The request is invalid: `error` says why, `detail` lists each invalid field.",
            404: "No such path.",
            413: f"The request body is larger than the service takes{limit}.",
            415: "The request body is not JSON (Content-Type: application/json).",
        }
        if path.rstrip("/") in self.protected:
            refusals[401] = "Needs the header `Authorization: Bearer <CTR_API_TOKEN>`."
        return dict(sorted(refusals.items()))


class _RefusalsAsClientErrors(logging.Filter):
    """A refused request (4xx) at INFO, in one line with its reasons and without the request's values;
    a pydantic ValidationError is reported by its fields and reasons only, at any status."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            reasons = "; ".join(
                f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}"
                for e in error.errors(include_url=False, include_context=False, include_input=False)
            )
            self._as_refusal(record, 400, f"{error.error_count()} validation error(s): {reasons}")
        elif isinstance(error, BentoMLException) and error.error_code.value < 500:
            self._as_refusal(record, error.error_code.value, str(error))
        return True

    @staticmethod
    def _as_refusal(record: logging.LogRecord, status: int, reason: str) -> None:
        args = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else None
        where = f"{args[1]} {args[0]}" if args else "a request"
        record.msg = f"Refused {where} ({status}): {reason}"
        record.args, record.exc_info, record.exc_text, record.stack_info = None, None, None, None
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)


def log_refusals_as_client_errors() -> None:
    """Install the filter (once) on the logger BentoML reports failed requests on."""
    logger = logging.getLogger(REQUEST_ERROR_LOGGER)
    if not any(isinstance(f, _RefusalsAsClientErrors) for f in logger.filters):
        logger.addFilter(_RefusalsAsClientErrors())
