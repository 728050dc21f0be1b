"""Pure-ASGI middleware: continue an incoming W3C trace (``traceparent`` / ``tracestate``).

The extracted span context is attached to the OpenTelemetry context (a contextvar) for the
duration of the request, so the run span that ``TracingSink.open`` starts in the route becomes a
child of the caller's span and the run keeps the caller's trace id. A request without
``traceparent`` costs one scan of its header list.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["TraceContextMiddleware"]

_PROPAGATOR = TraceContextTextMapPropagator()


class TraceContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        for key, value in scope["headers"]:
            if key == b"traceparent" or key == b"tracestate":
                carrier[key.decode("latin-1")] = value.decode("latin-1")
        if "traceparent" not in carrier:
            await self.app(scope, receive, send)
            return
        token = otel_context.attach(_PROPAGATOR.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)
