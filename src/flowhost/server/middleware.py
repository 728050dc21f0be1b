"""One pure-ASGI middleware for every request: request id, bearer-token auth, body-size limit,
body-read timeout.

Pure ASGI (not BaseHTTPMiddleware) so contextvars, and with them OpenTelemetry context, propagate.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowhost.exceptions import PayloadTooLarge, RequestTimeout, Unauthorized
from flowhost.ids import uuid7
from flowhost.server.errors import render_error

__all__ = ["BODY_COMPLETE", "OPEN_PATHS", "RequestContextMiddleware", "RequestTimeout"]

OPEN_PATHS = frozenset(
    {
        "/health",
        "/health/live",
        "/health/ready",
        "/docs",
        "/docs/oauth2-redirect",
        "/openapi.json",
        "/redoc",
    }
)
OPEN_PREFIXES = ("/ui",)
# Set to True in a request's scope by the server (``FlowhostHttpProtocol``) once the request's
# whole body has arrived: a receive then cannot wait, and needs no deadline (an
# ``asyncio.timeout_at`` per receive was ~4% of a small flow's request).
BODY_COMPLETE: Final = "flowhost.body_complete"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v)
    return None


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body_bytes: int,
        body_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid_raw = _header(scope, b"x-request-id")
        rid = rid_raw.decode("latin-1")[:128] if rid_raw else uuid7()
        scope.setdefault("state", {})["request_id"] = rid
        path: str = scope["path"]
        if self.token is not None and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            auth = _header(scope, b"authorization") or b""
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                msg = "Invalid API-key provided." if auth.strip() else "No API-key provided."
                response = render_error(path, Unauthorized(msg), rid)
                response.headers["www-authenticate"] = "Bearer"  # RFC 6750
                await response(scope, receive, send)
                return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await render_error(path, _too_large(self.max_body), rid)(scope, receive, send)
            return
        seen = 0
        limit = self.max_body
        # The whole body must arrive within body_timeout of the request's start: a client that
        # trickles it (one byte a second) is answered 408 and its connection closed. Receives
        # after the body (waiting for http.disconnect) are not bounded.
        # A body that has all arrived (the usual small one) needs no deadline: not even the
        # loop's clock is read (``get_running_loop`` is a getpid system call on Python 3.11).
        deadline = (
            None
            if self.body_timeout is None or scope.get(BODY_COMPLETE)
            else asyncio.get_running_loop().time() + self.body_timeout
        )
        body_done = timed_out = False

        async def limited_receive() -> Message:
            nonlocal seen, body_done, timed_out
            if body_done or deadline is None or scope.get(BODY_COMPLETE):
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    timed_out = True
                    raise RequestTimeout(
                        f"the request body did not arrive within {self.body_timeout:g} s"
                    ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
                if not message.get("more_body", False):
                    body_done = True
            else:
                body_done = True
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                for k, _ in headers:
                    if k.lower() == b"x-request-id":
                        break
                else:
                    headers.append((b"x-request-id", rid.encode("latin-1")))
                if timed_out:  # the rest of the body may still trickle in: drop the connection
                    headers = [(k, v) for k, v in headers if k.lower() != b"connection"]
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, limited_receive, send_with_id)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
