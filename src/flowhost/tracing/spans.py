"""A run's trace as the sink records it, and its rendering for OpenTelemetry's exporters.

The sink does not create OpenTelemetry SDK ``Span`` objects on a run's path: an SDK span costs
about 50 µs (sampler, id generator, span processors, a lock and a validation per attribute), and
the simple-mode benchmark measures a whole run in about 150 µs. It records the run in the shape
the local store keeps it (``flowhost.store.traces``): a ``RunRecord``, the root span in columns,
with a ``SpanEntry`` per node, W3C ids as hex from ``random.getrandbits`` (trace ids time first:
``flowhost.ids``). ``to_readable`` renders that as SDK ``ReadableSpan``s for the span processors
(the OTLP exporter) in the background, off the request's path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from flowhost.ids import new_trace_id
from flowhost.store.traces import RunRecord, SpanEntry

__all__ = ["Origin", "new_span_id", "new_trace_id", "span_hex", "to_readable", "trace_hex"]

_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_EMPTY_STATE: Final = TraceState()
_FAILED: Final = frozenset({"failed", "canceled"})  # the statuses exported as errors


def new_span_id() -> str:
    """A random W3C span id as 16 hex digits (never the invalid id 0)."""
    return span_hex(random.getrandbits(64) or 1)


def span_hex(span_id: int) -> str:
    """A W3C span id as 16 hex digits (``int.to_bytes().hex()``: half the cost of
    ``format(n, "016x")``)."""
    return span_id.to_bytes(8).hex()


def trace_hex(trace_id: int) -> str:
    """A W3C trace id as 32 hex digits."""
    return trace_id.to_bytes(16).hex()


@dataclass(slots=True)
class Origin:
    """What a run's root span continues (an incoming ``traceparent``), for the exporters: the
    local store keeps the parent's span id only."""

    remote: bool
    trace_state: TraceState | None


def to_readable(
    run: RunRecord, origin: Origin | None, resource: Resource, scope: InstrumentationScope
) -> list[ReadableSpan]:
    """The SDK's view of a run's spans, for any ``SpanExporter`` (OTLP, in-memory): its node
    spans in the order they ended, then the root."""
    trace_id = int(run.trace_id, 16)
    state = origin.trace_state if origin is not None else None

    def readable(span: SpanEntry, attributes: dict[str, Any], parent_remote: bool) -> ReadableSpan:
        parent = None
        if span.parent_span_id is not None:
            parent = SpanContext(
                trace_id,
                int(span.parent_span_id, 16),
                is_remote=parent_remote,
                trace_flags=_SAMPLED,
                trace_state=state or _EMPTY_STATE,
            )
        if span.status in _FAILED:
            message = str(attributes.get("flowhost.error.message", span.status))
            status = Status(StatusCode.ERROR, message)
        else:  # completed, skipped
            status = Status(StatusCode.OK)
        context = SpanContext(
            trace_id, int(span.span_id, 16), False, trace_flags=_SAMPLED, trace_state=state
        )
        return ReadableSpan(
            name=span.name,
            context=context,
            parent=parent,
            resource=resource,
            attributes=attributes,
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=scope,
        )

    root_attributes = run.root_attributes()
    root = SpanEntry(
        run.span_id,
        run.parent_span_id,
        run.name,
        "flow",
        run.status,
        run.start_ns,
        run.end_ns,
        root_attributes,
    )
    remote = origin.remote if origin is not None else False
    return [
        *(readable(s, run.node_attributes(s), False) for s in run.spans),
        readable(root, root_attributes, remote),
    ]
