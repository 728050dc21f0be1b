"""``create_app(settings) -> FastAPI``: everything is built once here and in the lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from flowhost import (
    __version__,
    web,  # console
)
from flowhost.apps import AppRegistry
from flowhost.config import Settings
from flowhost.exceptions import (
    FlowhostError,
    InvalidInput,
    NotFound,
    RequestError,
    ServiceUnavailable,
)
from flowhost.history import StoreHistory
from flowhost.knowledge import (
    mount_knowledge,
    needs_knowledge,
    start_knowledge,
    stop_knowledge,
)
from flowhost.llm.client import LLMClient
from flowhost.memory import MemoryService
from flowhost.metrics import MetricsSink, metrics_endpoint  # metrics
from flowhost.server.errors import render_error
from flowhost.server.health import router as health_router  # health
from flowhost.server.hot import FlowhostAPI
from flowhost.server.logs import scrub_with
from flowhost.server.middleware import RequestContextMiddleware
from flowhost.server.openapi import document_errors
from flowhost.service import RunService, RunSink
from flowhost.store import Store, StoreError
from flowhost.tracing import (  # tracing
    Redactor,
    TraceContextMiddleware,
    Tracing,
    build_tracing,
    known_secrets,
)
from flowhost.tracing.setup import shown_endpoint
from flowhost.wire.complete.routes import router as complete_router
from flowhost.wire.dashscope.routes import router as dashscope_router
from flowhost.wire.history.routes import router as history_router
from flowhost.wire.http import request_id
from flowhost.wire.memory.routes import router as memory_router
from flowhost.wire.openai.routes import router as openai_router
from flowhost.wire.simple.routes import router as simple_router
from flowhost.wire.traces.routes import router as traces_router  # tracing

if TYPE_CHECKING:
    from flowhost.knowledge.embedding import Embedder
    from flowhost.knowledge.service import KnowledgeService

__all__ = ["GC_THRESHOLDS", "create_app", "open_store"]

GC_THRESHOLDS = (50_000, 20, 100)  # gc.set_threshold once the app is built (see the lifespan)


async def open_store(settings: Settings) -> Store:
    """Open (and migrate) the SQL store named by the settings; fail with a clear message."""
    service = settings.service_name or settings.flows.resolve().name
    url = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        return await Store.open(url, data_dir=settings.data_dir, service=service)
    except StoreError as exc:
        raise ServiceUnavailable(f"cannot open the database: {exc.message}") from exc


log = logging.getLogger("flowhost.server")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _log_start(
    settings: Settings, apps: AppRegistry, store: Store, tracing: Tracing | None
) -> None:
    """What this server serves and keeps where, once, at start (no secret in it)."""
    names = [f"{a} (default)" if a == apps.default_app else a for a in apps.apps]
    log.info("serving %s from %s", ", ".join(names), settings.flows)
    traced = "off"
    if tracing is not None:
        traced = "on, local span store" + (
            f" and OTLP to {shown_endpoint(tracing.otlp_endpoint)}" if tracing.otlp_endpoint else ""
        )
    log.info(
        "database %s; chat history %s; tracing %s",
        store.engine.url.render_as_string(hide_password=True),
        "on" if settings.history else "off",
        traced,
    )
    if settings.token_value:
        log.info("every route but health and docs needs the bearer token")
    elif settings.host in _LOOPBACK:
        log.info("no token set: any local client may call every route")
    else:
        log.warning(
            "no token set and listening on %s: anyone who reaches it may call every route "
            "(set --token or FLOWHOST_TOKEN)",
            settings.host,
        )


def _install_error_handlers(app: FastAPI) -> None:
    async def flowhost_error(request: Request, exc: Exception) -> Response:
        return render_error(request.url.path, exc, request_id(request))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return render_error(
            request.url.path,
            InvalidInput(f"{field}: {err['msg']}", field=field or None),
            request_id(request),
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        err = NotFound(exc.detail) if exc.status_code == 404 else RequestError(str(exc.detail))
        err.status = exc.status_code
        err.code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, err.code)
        response = render_error(request.url.path, err, request_id(request))
        response.headers.update(exc.headers or {})  # 405: Allow
        return response

    app.add_exception_handler(FlowhostError, flowhost_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, flowhost_error)


class _LazyEmbedder:
    """The memory's embedder, built on first use: importing it loads numpy (and the model on
    first embed), which a server that never sees a memory_id need not pay for at start."""

    connection: str | None

    def __init__(self, settings: Settings, apps: AppRegistry) -> None:
        self._settings, self._apps = settings, apps
        self._real: Embedder | None = None
        self.connection = settings.embedding_connection
        # without a connection Settings only admits the packaged model's name (its default)
        self.model = settings.embedding_model

    def _get(self) -> Embedder:
        if self._real is None:
            from flowhost.knowledge.embedding import LocalEmbedder, OpenAIEmbedder

            s = self._settings
            self._real = (
                OpenAIEmbedder(
                    self._apps.get(None).services.connections.get(s.embedding_connection),
                    s.embedding_model,
                )
                if s.embedding_connection
                else LocalEmbedder()
            )
        return self._real

    async def dim(self) -> int:
        return await self._get().dim()

    async def embed(self, texts: Sequence[str]) -> Any:
        return await self._get().embed(texts)

    async def aclose(self) -> None:
        if self._real is not None:
            await self._real.aclose()


def build_memory(
    settings: Settings, store: Store, llm: LLMClient, apps: AppRegistry
) -> MemoryService:
    """Long-term memory on the store, embedding with the knowledge bases' model."""
    return MemoryService(
        store,
        _LazyEmbedder(settings, apps),
        llm,
        apps.get(None).services.connections,
        connection=settings.memory_connection,
        model=settings.memory_model,
        recall_k=settings.memory_recall_k,
        min_score=settings.memory_min_score,
    )


def create_app(settings: Settings, *, apps: AppRegistry | None = None) -> FastAPI:
    """Build the ASGI app. Loads (and validates) every flow now, so bad flows fail fast."""
    llm = LLMClient()
    apps = apps or AppRegistry.load(settings.flows, default_app=settings.default_app, llm=llm)
    tracing = build_tracing(settings, apps)  # tracing: None with --disable-tracing
    sinks: list[RunSink] = [MetricsSink()]  # metrics: counters only, recorded at run close
    if tracing is not None:
        sinks.append(tracing.sink)
    redactor = (
        tracing.sink.redactor if tracing is not None else Redactor(known_secrets(settings, apps))
    )
    scrub_with(redactor)  # the served log lines, whoever writes them
    service = RunService(apps, settings, sinks=sinks, log_failures=True, redactor=redactor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # one SQL store for sessions, memories, knowledge-base metadata and spans
        store = await open_store(settings)
        app.state.store = store  # health: /health/ready pings it
        try:
            if settings.history:
                service.history = StoreHistory(store, history_turns=settings.history_turns)
            lock = asyncio.Lock()

            async def start_kb() -> KnowledgeService:
                async with lock:
                    running = app.state.knowledge
                    return running or await start_knowledge(app, settings, store, apps)

            app.state.knowledge_starter = start_kb
            if needs_knowledge(apps):  # retrieval nodes and declared bases need it from the start
                await start_kb()
            if settings.memory:
                service.memory = app.state.memory = build_memory(settings, store, llm, apps)
            if tracing is not None:
                await tracing.start(store)
            # Everything built so far lives as long as the process: move it out of the
            # collector's reach, so full collections stop rescanning ~200k startup objects
            # (measured: p99 at 32 connections 169 ms -> 21 ms; see bench/).
            gc.collect()
            gc.freeze()
            # A young generation of 700 objects (the default) is a few requests' worth: with
            # hundreds of runs in flight, collections ran every few requests and rescanned them
            # all. Measured (bench llm, 500 users, back to back): 1.77-1.96 -> 1.58-1.72 ms of
            # CPU per call, 366-419 -> 424-428 req/s.
            gc.set_threshold(*GC_THRESHOLDS)
            _log_start(settings, apps, store, tracing)
            yield
        finally:
            if tracing is not None:  # flush spans before the store closes
                await tracing.aclose()
            service.history = None
            if service.memory is not None:  # let running extractions finish
                await service.memory.close()
                service.memory = app.state.memory = None
            await stop_knowledge(app, apps)
            app.state.store = None  # health
            await store.close()
            await llm.aclose()

    app = FlowhostAPI(
        title="flowhost",
        version=__version__,
        description="LLM application flows served over HTTP. "
        "Every route but /health, /health/live, /health/ready, the docs and /ui needs "
        "`Authorization: Bearer <token>` when a "
        "token is configured.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = None  # health
    app.state.memory = None
    app.state.service = service
    app.state.apps = apps
    app.state.tracing = tracing  # tracing
    _install_error_handlers(app)

    @app.get("/health", tags=["health"], summary="Liveness")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/apps", tags=["apps"], summary="The served apps and their inputs/outputs")
    async def list_apps() -> JSONResponse:
        return JSONResponse(
            {
                "default_app": apps.default_app,
                "apps": [
                    {
                        "app_id": a.app_id,
                        "is_chat": a.flow.is_chat,
                        "chat_input": a.flow.chat_input,
                        "chat_output": a.flow.chat_output,
                        "inputs": {k: v.model_dump() for k, v in a.flow.spec.inputs.items()},
                        "outputs": list(a.flow.spec.outputs),
                        "streaming_outputs": sorted(a.flow.streaming_outputs),
                    }
                    for a in apps.apps.values()
                ],
            }
        )

    app.include_router(health_router)  # health: /health/live, /health/ready
    app.add_api_route(  # metrics: Prometheus text format; needs the token like the API
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        tags=["health"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
    )
    app.include_router(simple_router)
    app.include_router(complete_router)
    app.include_router(openai_router)
    app.include_router(dashscope_router)
    app.include_router(history_router)
    app.include_router(memory_router)
    mount_knowledge(app)
    app.include_router(traces_router)  # tracing
    web.mount(app)  # console at /ui
    token, max_body, body_timeout = (
        settings.token_value,
        settings.max_body_bytes,
        settings.body_timeout,  # hardening
    )

    def wrap(inner: ASGIApp) -> ASGIApp:  # the run routes' own way in (server/hot.py)
        if tracing is not None:
            inner = TraceContextMiddleware(inner)
        return RequestContextMiddleware(
            inner, token=token, max_body_bytes=max_body, body_timeout=body_timeout
        )

    app.serve_hot([simple_router, complete_router, openai_router, dashscope_router], wrap)

    def openapi() -> dict[str, Any]:  # 400/401/404/408/413 as flowhost answers them
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if tracing is not None:  # tracing: continue an incoming W3C traceparent
        app.add_middleware(TraceContextMiddleware)
    app.add_middleware(
        RequestContextMiddleware, token=token, max_body_bytes=max_body, body_timeout=body_timeout
    )
    return app
