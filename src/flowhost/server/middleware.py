"""One pure-ASGI middleware for every request: request id, bearer-token auth, body-size limit.

Pure ASGI (not BaseHTTPMiddleware) so contextvars, and with them OpenTelemetry context, propagate.
"""

from __future__ import annotations

import hmac
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowhost.exceptions import PayloadTooLarge, Unauthorized
from flowhost.server.errors import render_error

__all__ = ["OPEN_PATHS", "RequestContextMiddleware"]

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


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v)
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid_raw = _header(scope, b"x-request-id")
        rid = rid_raw.decode("latin-1")[:128] if rid_raw else str(uuid.uuid4())
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

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, limited_receive, send_with_id)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
