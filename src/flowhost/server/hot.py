"""A short way in for the run routes (``POST /``, ``/run``, ``/v1/chat/completions``, ...).

FastAPI answers every request through its own middleware (error, telemetry, body limit,
exception, exit stack) and a router that tries the routes one by one; for the run routes, whose
endpoints take the plain ``Request`` and parse their body themselves, that machinery does nothing
but costs a measurable share of a small flow's request. ``FlowhostAPI`` sends a POST to one of
them straight to its endpoint, behind the same flowhost middleware (request id, token, body
limit and timeout, trace context) that wraps the rest of the app; the routes stay registered
with FastAPI as well, so ``/openapi.json`` and the docs describe them as before.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from flowhost.exceptions import FlowhostError
from flowhost.server.errors import render_error
from flowhost.wire.http import request_id

__all__ = ["FlowhostAPI", "HotRoute", "hot"]

Endpoint = Callable[..., Awaitable[Response]]
E = TypeVar("E", bound=Endpoint)


def hot(endpoint: E) -> E:
    """Mark a run route's endpoint (``async def f(request: Request, **path_params: str)``) to
    be served by ``FlowhostAPI`` without FastAPI's routing (put it under ``@router.post``)."""
    endpoint.__flowhost_hot__ = True  # type: ignore[attr-defined]
    return endpoint


class HotRoute:
    """One POST route served by ``FlowhostAPI`` without FastAPI's routing."""

    __slots__ = ("convertors", "endpoint", "params", "regex")

    def __init__(self, route: APIRoute) -> None:
        self.regex: re.Pattern[str] = route.path_regex
        self.endpoint: Endpoint = route.endpoint
        self.convertors = route.param_convertors
        self.params = tuple(
            name for name in inspect.signature(route.endpoint).parameters if name != "request"
        )
        if not set(self.params) <= set(self.convertors):
            raise TypeError(f"{route.path}: a hot route takes only the request and path params")


async def _dispatch(scope: Scope, receive: Receive, send: Send) -> None:
    route: HotRoute = scope["flowhost.hot_route"]
    request = Request(scope, receive, send)
    try:
        params = scope["path_params"]
        response = await route.endpoint(request, **{name: params[name] for name in route.params})
    except Exception as exc:  # FlowhostError, and anything unexpected (logged, generic 500)
        response = render_error(scope["path"], exc, request_id(request))
    await response(scope, receive, send)


class FlowhostAPI(FastAPI):
    """FastAPI, with the run routes' POSTs sent straight to their endpoints (see the module)."""

    _hot_routes: tuple[HotRoute, ...] = ()
    _hot_app: ASGIApp | None = None

    def serve_hot(self, routers: Sequence[APIRouter], wrap: Callable[[ASGIApp], ASGIApp]) -> None:
        """Serve the POST routes marked ``@hot`` of ``routers`` (included without a prefix)
        directly, behind ``wrap(dispatcher)``."""
        self._hot_routes = tuple(
            HotRoute(r)
            for router in routers
            for r in router.routes
            if isinstance(r, APIRoute)
            and getattr(r.endpoint, "__flowhost_hot__", False)
            and "POST" in (r.methods or ())
        )
        self._hot_app = wrap(_dispatch)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self._hot_app is not None:
            path: str = scope["path"]
            for route in self._hot_routes:
                match = route.regex.match(path)
                if match is not None:
                    scope["app"] = self
                    convertors = route.convertors
                    scope["path_params"] = {
                        k: convertors[k].convert(v) for k, v in match.groupdict().items()
                    }
                    scope["flowhost.hot_route"] = route
                    await self._hot_app(scope, receive, send)
                    return
        elif scope["type"] == "lifespan":
            send = _startup_failure_in_one_line(send)
        await super().__call__(scope, receive, send)


def _startup_failure_in_one_line(send: Send) -> Send:
    """A start that fails with a ``FlowhostError`` (the database unreachable, say) is reported
    by its message alone: Starlette hands uvicorn the whole traceback, ~60 lines of driver
    frames around one line that says what is wrong. Anything else keeps its traceback."""

    async def send_message(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "lifespan.startup.failed":
            exc = sys.exc_info()[1]  # Starlette sends this from its ``except`` block
            if isinstance(exc, FlowhostError):
                message = {**message, "message": f"cannot start: {exc.message}"}
        await send(message)

    return send_message
