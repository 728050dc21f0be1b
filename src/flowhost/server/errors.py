"""Errors to HTTP: each protocol registers its one renderer for its path prefix.

Everything else gets RFC 7807-style ``application/problem+json``. No renderer ever includes a stack
trace; unexpected exceptions are logged with their traceback and answered with a generic 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from starlette.responses import Response

from flowhost.engine.events import ErrorInfo
from flowhost.exceptions import FlowhostError, InvalidInput, one_line
from flowhost.wire.sse import dumps

__all__ = ["ErrorRenderer", "problem", "register_renderer", "render_error", "render_error_info"]

log = logging.getLogger("flowhost.server")

# (status, code, message, field, request_id) -> Response
ErrorRenderer = Callable[[int, str, str, str | None, str], Response]
_RENDERERS: list[tuple[str, ErrorRenderer]] = []


def problem(status: int, code: str, message: str, field: str | None, request_id: str) -> Response:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": message,
        "code": code,
        "request_id": request_id,
    }
    if field:
        body["field"] = field
    # dumps, not JSONResponse: a message quoting client text may hold a lone surrogate
    return Response(dumps(body), status_code=status, media_type="application/problem+json")


def register_renderer(prefix: str, renderer: ErrorRenderer) -> None:
    _RENDERERS.append((prefix, renderer))
    _RENDERERS.sort(key=lambda p: -len(p[0]))


def _renderer(path: str) -> ErrorRenderer:
    for prefix, r in _RENDERERS:
        if path.startswith(prefix):
            return r
    return problem


def render_error(path: str, exc: BaseException, request_id: str) -> Response:
    if isinstance(exc, FlowhostError):
        status, code, message = exc.status, exc.code, exc.message
        if status >= 500:
            log.error("request %s failed: %s", request_id, one_line(message))
    else:
        log.exception("unexpected error in request %s", request_id, exc_info=exc)
        status, code, message = 500, "InternalError", "internal server error"
    fld = exc.field if isinstance(exc, InvalidInput) else None
    resp = _renderer(path)(status, code, message, fld, request_id)
    resp.headers["x-request-id"] = request_id
    return resp


def render_error_info(path: str, err: ErrorInfo, request_id: str) -> Response:
    """A failed run, answered before any byte was sent (non-streaming requests)."""
    resp = _renderer(path)(err.status, err.code, err.described, None, request_id)
    resp.headers["x-request-id"] = request_id
    return resp
