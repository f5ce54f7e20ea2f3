"""The guard in front of each service's API: request size limit and bearer token on write endpoints.

`RequestGuard` is plain ASGI middleware (`Service.add_asgi_middleware`), so it answers before
BentoML reads or parses anything:

* a body larger than `max_bytes` gets a 413, whether its Content-Length says so or its chunks add
  up to more (the body is read, never more than `max_bytes` of it kept, before the API sees it);
* with CTR_API_TOKEN set, a request to a `protected` path without `Authorization: Bearer <token>`
  gets a 401; the token is compared in constant time and never logged. Other paths stay open;
* a body that is not JSON gets a 415: the APIs take JSON only, so BentoML's other decoders (its
  pickle one, which it refuses on the main server itself, and multipart) are never reached.

Errors are JSON in the one shape of every error the services answer, `ErrorResponse`
(services/schemas.py, services/errors.py): `{"error": "...", "detail": []}`.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from models.settings import Settings
from services.schemas import ErrorResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A rejected body is read to its end (and dropped) up to this much more, so that the client, still
# sending, gets the answer instead of a reset connection; a larger one is answered mid-way.
DRAIN_BYTES = 32 * 2**20


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        max_bytes: int,
        limit_name: str = "CTR_MAX_REQUEST_BYTES",
        protected: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit_name = limit_name
        self.protected = frozenset(path.rstrip("/") for path in protected)
        # Kept as bytes in the instance only: the settings' repr() does not show it.
        self._token = settings.api_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        if self._token and path in self.protected and not self._authorized(scope):
            await _drain(receive, _content_length(scope))
            await _reply(
                send,
                401,
                f"{path} needs the header 'Authorization: Bearer <CTR_API_TOKEN>'",
                [(b"www-authenticate", b'Bearer realm="ctr"')],
            )
            return
        declared = _content_length(scope)
        media_type = _header(scope, b"content-type").split(b";")[0].strip().lower()
        if media_type not in (b"", b"application/json"):
            await _drain(receive, declared)
            await _reply(send, 415, "the request body must be JSON (Content-Type: application/json)")
            return
        if declared is not None and declared > self.max_bytes:
            await _drain(receive, declared)
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, None)
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)
        return False

    async def _too_large(self, send: Send) -> None:
        await _reply(
            send,
            413,
            f"the request body is larger than {self.max_bytes:,} bytes ({self.limit_name}); "
            "send a smaller request",
        )


def _header(scope: Scope, wanted: bytes) -> bytes:
    return next((value for name, value in scope["headers"] if name == wanted), b"")


def _content_length(scope: Scope) -> int | None:
    try:
        return int(_header(scope, b"content-length"))
    except ValueError:
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already read body once, then what the connection says next."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _drain(receive: Receive, declared: int | None) -> None:
    """Read and drop the rest of the body, up to DRAIN_BYTES."""
    if declared is not None and (declared == 0 or declared > DRAIN_BYTES):
        return
    read = 0
    while read <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _reply(
    send: Send, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = ErrorResponse(error=error).model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
