"""``TracingSink``: one span per run and per node, built from the run-event stream.

``open`` runs inside the request's context (``RunService.prepare``), so the run span continues an
incoming W3C ``traceparent`` (``TraceContextMiddleware`` put it into the OpenTelemetry context);
its trace id becomes the run's ``trace_id``. Node spans are children of the run span: started at
``NodeStarted``, ended at ``NodeFinished`` / ``NodeFailed`` with the events' own timestamps.
Deltas are ignored, so streaming costs nothing here. When the run ends, its spans go to the
``SpanPipeline`` together.
Nothing in this module awaits or raises into the run: a failure to trace is logged and the run
goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from opentelemetry import trace

from flowhost.engine.events import (
    NodeFailed,
    NodeFinished,
    NodeSkipped,
    NodeStarted,
    RunEvent,
    RunFailed,
    RunFinished,
)
from flowhost.service import PreparedRun, RunObservation
from flowhost.tracing.attributes import (
    Redactor,
    add_value,
    error_attributes,
    is_retrieval,
    llm_attributes,
    retrieval_attributes,
    span_kind_of,
    usage_attributes,
)
from flowhost.tracing.pipeline import SpanPipeline
from flowhost.tracing.spans import SpanData, new_span_id, new_trace_id

__all__ = ["RunTrace", "TracingSink"]

log = logging.getLogger("flowhost.tracing")

_CANCELED: Final = "the run was canceled (the client disconnected)"
_CANCELED_ATTRS: Final = {
    "error.type": "RunCanceled",
    "flowhost.error.code": "RunCanceled",
    "flowhost.error.message": _CANCELED,
}
_NODE_EVENTS: Final = frozenset({"NodeStarted", "NodeFinished", "NodeFailed", "NodeSkipped"})


def _ns(ts: float) -> int:
    return int(ts * 1e9)


class TracingSink:
    """A ``RunSink``: opens a ``RunTrace`` per run while a pipeline is set (``Tracing.start``)."""

    def __init__(self, *, content: bool, redactor: Redactor) -> None:
        self.pipeline: SpanPipeline | None = None
        self.content = content
        self.redactor = redactor

    def open(self, prepared: PreparedRun) -> RunObservation | None:
        pipeline = self.pipeline
        if pipeline is None:
            return None
        try:
            return RunTrace(self, pipeline, prepared)
        except Exception:
            log.exception("cannot start the run span of run %s", prepared.run_id)
            return None


class RunTrace:
    """One run's spans. ``trace_id`` is 32 hex digits."""

    __slots__ = (
        "_content",
        "_done",
        "_emit",
        "_nodes",
        "_redact",
        "run_id",
        "span",
        "trace_id",
    )

    def __init__(self, sink: TracingSink, pipeline: SpanPipeline, prepared: PreparedRun) -> None:
        ctx = prepared.ctx
        self._redact = redact = sink.redactor.for_tokens(ctx.user_defined_tokens)
        self._content = sink.content
        self._emit = pipeline.emit if pipeline.active else None
        self._nodes: dict[str, SpanData] = {}  # started, not ended
        self._done: list[SpanData] = []  # ended node spans, emitted with the run span
        self.run_id = prepared.run_id
        attrs: dict[str, Any] = {
            "flowhost.span_type": "flow",
            "openinference.span.kind": "CHAIN",
            "flowhost.app_id": prepared.app.app_id,
            "flowhost.run_id": prepared.run_id,
            "flowhost.request_id": ctx.request_id,
            "flowhost.protocol": prepared.protocol,
        }
        if prepared.session_id:
            attrs["session.id"] = prepared.session_id
        if ctx.user_id:
            attrs["user.id"] = redact.text(ctx.user_id)
        if self._content:
            add_value(attrs, "input", prepared.inputs, redact)
        parent = trace.get_current_span().get_span_context()  # the caller's, via traceparent
        self.span = SpanData(
            trace_id=parent.trace_id if parent.is_valid else new_trace_id(),
            span_id=new_span_id(),
            name=prepared.app.app_id,
            start_ns=_ns(prepared.started_at),
            attributes=attrs,
        )
        if parent.is_valid:
            self.span.parent_id = parent.span_id
            self.span.parent_remote = parent.is_remote
            self.span.trace_state = parent.trace_state
        self.trace_id = self.span.trace_hex

    # -- events -------------------------------------------------------------------------------

    def on_event(self, event: RunEvent) -> None:
        kind = event.kind
        if kind not in _NODE_EVENTS:  # deltas, outputs, run start/end: nothing to do here
            return
        try:
            if isinstance(event, NodeStarted):
                self._nodes[event.node] = self._start(event.node, event.node_type, event.timestamp)
            elif isinstance(event, NodeFinished):
                self._node_finished(event)
            elif isinstance(event, NodeFailed):
                self._node_failed(event)
            elif isinstance(event, NodeSkipped):
                self._node_skipped(event)
        except Exception:
            log.exception("run %s: cannot record %s", self.run_id, kind)

    def _start(self, node: str, node_type: str, start: float) -> SpanData:
        run = self.span
        return SpanData(
            trace_id=run.trace_id,
            span_id=new_span_id(),
            name=node,
            start_ns=_ns(start),
            attributes={
                "flowhost.span_type": node_type,
                "openinference.span.kind": span_kind_of(node_type),
                "flowhost.node": node,
                "flowhost.run_id": self.run_id,
            },
            parent_id=run.span_id,
            trace_state=run.trace_state,
        )

    def _end(self, span: SpanData, end_ns: int) -> None:
        span.end_ns = end_ns
        self._done.append(span)

    def _end_run(self, end_ns: int) -> None:
        self.span.end_ns = end_ns
        if self._emit is not None:
            self._emit(self.span, self._done)

    def _open_node(self, node: str, node_type: str, end: float, duration: float) -> SpanData:
        span = self._nodes.pop(node, None)
        return span or self._start(node, node_type, end - duration)

    def _node_finished(self, ev: NodeFinished) -> None:
        span = self._open_node(ev.node, ev.node_type, ev.timestamp, ev.duration)
        redact, content, attrs = self._redact, self._content, span.attributes
        if content:
            add_value(attrs, "input", ev.inputs, redact)
            add_value(attrs, "output", ev.output, redact)
        if ev.node_type == "llm":
            attrs.update(llm_attributes(ev.trace, ev.output, redact, content=content))
        elif is_retrieval(ev.node_type):
            attrs.update(retrieval_attributes(ev.trace, ev.output, redact, content=content))
        if ev.usage:
            attrs.update(usage_attributes(ev.usage, genai=ev.node_type == "llm"))
        attrs["flowhost.status"] = "completed"
        self._end(span, _ns(ev.timestamp))

    def _node_failed(self, ev: NodeFailed) -> None:
        span = self._open_node(ev.node, ev.node_type, ev.timestamp, ev.duration)
        if self._content and ev.inputs is not None:
            add_value(span.attributes, "input", ev.inputs, self._redact)
        span.attributes.update(error_attributes(ev.error, self._redact))
        if ev.node_type == "llm" and ev.trace:
            span.attributes.update(
                llm_attributes(ev.trace, None, self._redact, content=self._content)
            )
        self._fail(span, "failed")
        self._end(span, _ns(ev.timestamp))

    def _node_skipped(self, ev: NodeSkipped) -> None:
        span = self._start(ev.node, ev.node_type, ev.timestamp)
        span.attributes["flowhost.status"] = span.status = "skipped"
        self._end(span, span.start_ns)

    def _fail(self, span: SpanData, status: str) -> None:
        span.status = status
        span.attributes["flowhost.status"] = status
        span.error = str(span.attributes.get("flowhost.error.message", status))

    # -- end ----------------------------------------------------------------------------------

    def close(self, final: RunEvent | None) -> None:
        try:
            self._close(final)
        except Exception:
            log.exception("run %s: cannot end the run span", self.run_id)

    def _close(self, final: RunEvent | None) -> None:
        now = time.time_ns()
        for span in self._nodes.values():  # still running: canceled with the run
            span.attributes.update(_CANCELED_ATTRS)
            self._fail(span, "canceled")
            self._end(span, now)
        self._nodes.clear()
        run = self.span
        attrs = run.attributes
        if isinstance(final, RunFinished):
            if self._content:
                add_value(attrs, "output", final.outputs, self._redact)
            attrs.update(usage_attributes(final.usage, genai=False))
            attrs["flowhost.status"] = "completed"
            self._end_run(_ns(final.timestamp))
        elif isinstance(final, RunFailed):
            attrs.update(error_attributes(final.error, self._redact))
            attrs.update(usage_attributes(final.usage, genai=False))
            self._fail(run, "failed")
            self._end_run(_ns(final.timestamp))
        else:
            attrs.update(_CANCELED_ATTRS)
            self._fail(run, "canceled")
            self._end_run(now)
