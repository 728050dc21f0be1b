"""Tracing: OpenTelemetry spans for every run and node, exported over OTLP and kept locally.

- ``Tracing`` (setup.py): the provider, the OTLP/HTTP exporter, the local span store's writer;
- ``TracingSink`` (sink.py): a ``RunSink`` turning the run-event stream into spans;
- ``SpanPipeline`` (pipeline.py): batches finished spans to the local store and the exporters;
- ``TraceContextMiddleware`` (middleware.py): continues an incoming W3C ``traceparent``;
- attributes.py: GenAI / OpenInference attributes and secret redaction.
"""

from __future__ import annotations

from flowhost.tracing.attributes import Redactor as Redactor
from flowhost.tracing.middleware import TraceContextMiddleware as TraceContextMiddleware
from flowhost.tracing.pipeline import SpanPipeline as SpanPipeline
from flowhost.tracing.setup import Tracing as Tracing
from flowhost.tracing.setup import build_tracing as build_tracing
from flowhost.tracing.setup import known_secrets as known_secrets
from flowhost.tracing.setup import otlp_endpoint as otlp_endpoint
from flowhost.tracing.sink import RunTrace as RunTrace
from flowhost.tracing.sink import TracingSink as TracingSink

__all__ = [
    "Redactor",
    "RunTrace",
    "SpanPipeline",
    "TraceContextMiddleware",
    "Tracing",
    "TracingSink",
    "build_tracing",
    "known_secrets",
    "otlp_endpoint",
]
