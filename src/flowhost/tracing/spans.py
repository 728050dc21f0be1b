"""``SpanData``: a finished span as the run-event sink records it, and its two renderings.

The sink does not create OpenTelemetry SDK ``Span`` objects on a run's path: an SDK span costs
about 50 µs (sampler, id generator, span processors, a lock and a validation per attribute), and
the simple-mode benchmark measures a whole run in about 150 µs. A ``SpanData`` is a slotted
record with W3C ids from ``random.getrandbits`` (trace ids time first: ``flowhost.ids``); it becomes
an SDK ``ReadableSpan`` (for the OTLP exporter) or part of a ``RunRecord`` (the local store keeps
one row per run) in the background, off the request's path.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from flowhost.ids import new_trace_id
from flowhost.store.traces import RunRecord

__all__ = ["SpanData", "new_span_id", "new_trace_id", "span_hex", "to_readable", "to_record"]

_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_EMPTY_STATE: Final = TraceState()


def new_span_id() -> int:
    while True:
        value = random.getrandbits(64)
        if value != INVALID_SPAN_ID:
            return value


@dataclass(slots=True)
class SpanData:
    """One span. ``status`` is flowhost's (completed, failed, canceled, skipped);
    ``error`` the OTel status description of a failed span."""

    trace_id: int
    span_id: int
    name: str
    start_ns: int
    attributes: dict[str, Any]
    parent_id: int | None = None
    parent_remote: bool = False
    trace_state: TraceState | None = None
    end_ns: int = 0
    status: str = "completed"
    error: str | None = None

    @property
    def trace_hex(self) -> str:
        return self.trace_id.to_bytes(16).hex()


def span_hex(span_id: int) -> str:
    """A span id as W3C writes it: 16 hex digits (``to_bytes().hex()``: half the cost of
    ``format(span_id, "016x")``, three times a run)."""
    return span_id.to_bytes(8).hex()


def _context(span: SpanData) -> SpanContext:
    return SpanContext(
        span.trace_id,
        span.span_id,
        is_remote=False,
        trace_flags=_SAMPLED,
        trace_state=span.trace_state,
    )


def to_readable(span: SpanData, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    """The SDK's view of a finished span, for any ``SpanExporter`` (OTLP, in-memory)."""
    parent = None
    if span.parent_id is not None:
        parent = SpanContext(
            span.trace_id,
            span.parent_id,
            is_remote=span.parent_remote,
            trace_flags=_SAMPLED,
            trace_state=span.trace_state or _EMPTY_STATE,
        )
    if span.error is not None:
        status = Status(StatusCode.ERROR, span.error)
    elif span.status in ("completed", "skipped"):
        status = Status(StatusCode.OK)
    else:
        status = Status(StatusCode.UNSET)
    return ReadableSpan(
        name=span.name,
        context=_context(span),
        parent=parent,
        resource=resource,
        attributes=span.attributes,
        kind=SpanKind.INTERNAL,
        status=status,
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=scope,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _node(span: SpanData) -> dict[str, Any]:
    return {
        "span_id": span_hex(span.span_id),
        "parent_span_id": span_hex(span.parent_id) if span.parent_id is not None else None,
        "name": span.name,
        "span_type": span.attributes.get("flowhost.span_type", "span"),
        "status": span.status,
        "start_ns": span.start_ns,
        "end_ns": max(span.end_ns, span.start_ns),
        "attributes": span.attributes,
    }


def to_record(run: SpanData, nodes: Sequence[SpanData]) -> RunRecord:
    """The local store's row of a finished run: its root span and its node spans."""
    a = run.attributes
    end = max(run.end_ns, run.start_ns)
    return RunRecord(
        trace_id=run.trace_hex,
        span_id=span_hex(run.span_id),
        parent_span_id=span_hex(run.parent_id) if run.parent_id is not None else None,
        name=run.name,
        status=run.status,
        run_id=_str(a.get("flowhost.run_id")),
        app_id=_str(a.get("flowhost.app_id")),
        session_id=_str(a.get("session.id")),
        start_ns=run.start_ns,
        end_ns=end,
        duration_us=(end - run.start_ns) // 1000,
        input_tokens=_int(a.get("flowhost.usage.input_tokens")),
        output_tokens=_int(a.get("flowhost.usage.output_tokens")),
        attributes=a,
        spans=[_node(n) for n in nodes],
    )
