"""``Tracing``: one server's OpenTelemetry provider, its exporters and the local span store.

Built in ``create_app`` (cheap: nothing starts there), started in the lifespan with the SQL store,
closed at shutdown. Spans (see ``spans.py``) go through the ``SpanPipeline`` to:

- the local span store (``flowhost_trace_span_<service>``), for the console and the trace API;
- OTLP/HTTP (protobuf) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (Jaeger, Phoenix, Langfuse, any collector); the
  exporter reads the other standard variables itself (``OTEL_EXPORTER_OTLP_HEADERS``, ...).

flowhost sets no global tracer provider: other OpenTelemetry users in the process keep theirs.
Every run is recorded (no sampling).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from flowhost import __version__
from flowhost.config import Settings
from flowhost.store.traces import TraceRepository
from flowhost.tracing.attributes import Redactor
from flowhost.tracing.pipeline import SpanPipeline
from flowhost.tracing.sink import TracingSink

if TYPE_CHECKING:
    from flowhost.apps import AppRegistry
    from flowhost.store import Store

__all__ = ["Tracing", "build_tracing", "known_secrets", "otlp_endpoint", "shown_endpoint"]

log = logging.getLogger("flowhost.tracing")


def otlp_endpoint(env: Mapping[str, str]) -> str | None:
    """The OTLP endpoint the standard variables name, or None (export off)."""
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")


def shown_endpoint(url: str) -> str:
    """``url`` for a log line: credentials in it (``https://user:pass@host``, or a key as the
    user name) are masked."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def known_secrets(settings: Settings, apps: AppRegistry | None = None) -> list[str]:
    """The secrets a server holds, to scrub from spans and log lines: token, database password,
    Milvus token, connection keys."""
    out: list[str] = []
    if settings.token_value:
        out.append(settings.token_value)
    if settings.database_url is not None:
        from sqlalchemy.engine import make_url

        try:
            password = make_url(settings.database_url.get_secret_value()).password
        except Exception:
            password = None
        if password:
            out.append(str(password))
    if settings.milvus_token is not None:
        out.append(settings.milvus_token.get_secret_value())
    seen: set[int] = set()
    for app in apps.apps.values() if apps is not None else ():
        registry = app.services.connections
        if id(registry) in seen:
            continue
        seen.add(id(registry))
        for name in registry.names():
            conn = registry.get(name)
            out.append(conn.api_key)
            out.extend(conn.headers.values())
    return out


class Tracing:
    """Tracing for one server. ``sink`` goes into ``RunService(sinks=[...])``."""

    def __init__(
        self,
        settings: Settings,
        *,
        service_name: str,
        secrets: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        exporters: Sequence[SpanExporter] = (),
    ) -> None:
        """``exporters``: extra exporters, each behind a ``SimpleSpanProcessor`` (tests)."""
        self.settings = settings
        self.service_name = service_name
        self.env = os.environ if env is None else env
        self.sink = TracingSink(content=settings.trace_content, redactor=Redactor(secrets))
        self._extra = list(exporters)
        self.pipeline: SpanPipeline | None = None

    @property
    def otlp_endpoint(self) -> str | None:
        return otlp_endpoint(self.env)

    @property
    def repository(self) -> TraceRepository | None:
        """The local span store (None before ``start`` or without a store)."""
        return self.pipeline.repository if self.pipeline is not None else None

    def _processors(self) -> list[SpanProcessor]:
        processors: list[SpanProcessor] = []
        endpoint = self.otlp_endpoint
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            protocol = self.env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            if protocol != "http/protobuf":
                log.warning(
                    "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting http/protobuf",
                    protocol,
                )
            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
            log.info("exporting spans over OTLP/HTTP to %s", shown_endpoint(endpoint))
        processors.extend(SimpleSpanProcessor(e) for e in self._extra)
        return processors

    def _resource(self) -> Resource:
        resource = Resource.create({SERVICE_VERSION: __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: self.service_name}))
        return resource

    async def start(self, store: Store | None) -> None:
        """Start the span pipeline; with a ``store``, spans are also kept locally. Idempotent."""
        if self.pipeline is not None:
            return
        repository = TraceRepository.for_store(store) if store is not None else None
        self.pipeline = SpanPipeline(
            repository=repository,
            processors=self._processors(),
            resource=self._resource(),
            scope=InstrumentationScope("flowhost", __version__),
            retention_days=self.settings.trace_retention_days,
        )
        self.pipeline.start()
        self.sink.pipeline = self.pipeline

    async def flush(self) -> None:
        """Hand on the queued spans now (the trace API calls this before reading)."""
        if self.pipeline is not None:
            await self.pipeline.flush()

    async def aclose(self) -> None:
        """Stop tracing: flush the local store and the OTLP exporter."""
        self.sink.pipeline = None
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            await pipeline.aclose()
            if pipeline.repository is not None:
                await pipeline.repository.close()


def build_tracing(settings: Settings, apps: AppRegistry) -> Tracing | None:
    """The server's ``Tracing`` (None with ``--disable-tracing``); start it in the lifespan."""
    if not settings.enable_tracing:
        return None
    return Tracing(
        settings,
        service_name=settings.service_name or settings.flows.resolve().name,
        secrets=known_secrets(settings, apps),
    )
