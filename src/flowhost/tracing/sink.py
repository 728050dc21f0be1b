"""``TracingSink``: one span per run and per node, built from the run-event stream.

``open`` runs inside the request's context (``RunService.prepare``), so the run span continues an
incoming W3C ``traceparent`` (``TraceContextMiddleware`` put it into the OpenTelemetry context);
its trace id becomes the run's ``trace_id``. Node spans are children of the run span, from
``NodeStarted`` to ``NodeFinished`` / ``NodeFailed`` by the events' own timestamps; a node's span
is made when the node ends, whole (until then only its start time is kept).
Deltas are ignored, so streaming costs nothing here. When the run ends, its spans go to the
``SpanPipeline`` together.
Nothing in this module awaits or raises into the run: a failure to trace is logged and the run
goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
from flowhost.store.traces import RunRecord, SpanEntry
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
from flowhost.tracing.spans import Origin, new_span_id, new_trace_id, span_hex, trace_hex

__all__ = ["RunTrace", "TracingSink"]

log = logging.getLogger("flowhost.tracing")

_CANCELED: Final = "the run was canceled (the client disconnected)"
_CANCELED_ATTRS: Final = {
    "error.type": "RunCanceled",
    "flowhost.error.code": "RunCanceled",
    "flowhost.error.message": _CANCELED,
}


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _node_attributes(node_type: str) -> dict[str, Any]:
    # a node's type, name and status are its entry's fields, the run id the record's column:
    # ``RunRecord.node_attributes`` adds them back for readers and exporters
    return {"openinference.span.kind": span_kind_of(node_type)}


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
    """One run's spans, recorded as the local store keeps them (``RunRecord``, a ``SpanEntry``
    per node). ``trace_id`` is 32 hex digits.

    A node's span is made when the node ends, whole (until then only its start time and type
    are kept); the run's record when the run ends."""

    __slots__ = (
        "_app_id",
        "_attributes",
        "_content",
        "_done",
        "_emit",
        "_inputs",
        "_origin",
        "_parent",
        "_redact",
        "_running",
        "_session_id",
        "_span_id",
        "_start_ns",
        "run_id",
        "trace_id",
    )

    def __init__(self, sink: TracingSink, pipeline: SpanPipeline, prepared: PreparedRun) -> None:
        ctx = prepared.ctx
        # not ``prepared`` itself: it holds this observation, and the cycle would leave every
        # run's objects to the garbage collector (gen0 pauses of 5-15 ms, p99 at one
        # connection 2 -> 10 ms)
        self._app_id = prepared.app.app_id
        self._session_id = prepared.session_id or None
        self._redact = redact = sink.redactor.for_tokens(ctx.user_defined_tokens)
        self._content = sink.content
        self._emit = pipeline.emit if pipeline.active else None
        self._running: dict[str, tuple[float, str]] = {}  # started, not ended: its start, type
        self._done: list[SpanEntry] = []  # ended node spans, in the order they ended
        self.run_id = prepared.run_id
        self._start_ns = _ns(prepared.started_at)
        self._span_id = new_span_id()
        # what the record's columns hold (type, app, run id, status) is not repeated here:
        # ``RunRecord.root_attributes`` adds it back for readers and exporters
        attrs: dict[str, Any] = {
            "flowhost.request_id": ctx.request_id,
            "flowhost.protocol": prepared.protocol,
        }
        if prepared.session_id:
            attrs["session.id"] = prepared.session_id
        if ctx.user_id:
            attrs["user.id"] = redact.text(ctx.user_id)
        self._inputs = prepared.inputs
        if self._content:
            add_value(attrs, "input", prepared.inputs, redact)
        self._attributes = attrs
        parent = trace.get_current_span().get_span_context()  # the caller's, via traceparent
        if parent.is_valid:
            self.trace_id = trace_hex(parent.trace_id)
            self._parent: str | None = span_hex(parent.span_id)
            self._origin: Origin | None = Origin(parent.is_remote, parent.trace_state)
        else:
            self.trace_id = trace_hex(new_trace_id())
            self._parent = self._origin = None

    # -- events -------------------------------------------------------------------------------

    def on_event(self, event: RunEvent) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is None:  # deltas, outputs, run start and end: nothing here
            return
        try:
            handler(self, event)
        except Exception:
            log.exception("run %s: cannot record %s", self.run_id, event.kind)

    def _node_started(self, ev: NodeStarted) -> None:
        self._running[ev.node] = (ev.timestamp, ev.node_type)

    def _node(
        self, node: str, node_type: str, status: str, attrs: dict[str, Any], start: int, end: int
    ) -> None:
        """An ended node span, kept to be emitted with the run's."""
        self._done.append(
            SpanEntry(
                new_span_id(), self._span_id, node, node_type, status, start, max(start, end), attrs
            )
        )

    def _add_inputs(self, attrs: dict[str, Any], inputs: dict[str, Any]) -> None:
        """A node's inputs as its span's ``input.*``. A node given the run's own inputs (same
        keys, same order, equal values; a chat flow's first node, often) shares the run span's
        text: comparing costs less than encoding and scrubbing it again."""
        run_inputs = self._inputs
        if inputs == run_inputs and list(inputs) == list(run_inputs):
            run_attrs = self._attributes
            attrs["input.value"] = run_attrs["input.value"]
            attrs["input.mime_type"] = run_attrs["input.mime_type"]
        else:
            add_value(attrs, "input", inputs, self._redact)

    def _started(self, node: str, end: float, duration: float) -> int:
        """When ``node`` started: at its NodeStarted, or ``duration`` before ``end``."""
        started = self._running.pop(node, None)
        return _ns(end - duration if started is None else started[0])

    def _node_finished(self, ev: NodeFinished) -> None:
        node, node_type = ev.node, ev.node_type
        attrs = _node_attributes(node_type)
        redact, content = self._redact, self._content
        if content:
            self._add_inputs(attrs, ev.inputs)
            add_value(attrs, "output", ev.output, redact)
        if node_type == "llm":
            attrs.update(llm_attributes(ev.trace, ev.output, redact, content=content))
        elif is_retrieval(node_type):
            attrs.update(retrieval_attributes(ev.trace, ev.output, redact, content=content))
        if ev.usage:
            attrs.update(usage_attributes(ev.usage, genai=node_type == "llm"))
        start = self._started(node, ev.timestamp, ev.duration)
        self._node(node, node_type, "completed", attrs, start, _ns(ev.timestamp))

    def _node_failed(self, ev: NodeFailed) -> None:
        node, node_type = ev.node, ev.node_type
        attrs = _node_attributes(node_type)
        if self._content and ev.inputs is not None:
            self._add_inputs(attrs, ev.inputs)
        attrs.update(error_attributes(ev.error, self._redact))
        if node_type == "llm" and ev.trace:
            attrs.update(llm_attributes(ev.trace, None, self._redact, content=self._content))
        start = self._started(node, ev.timestamp, ev.duration)
        self._node(node, node_type, "failed", attrs, start, _ns(ev.timestamp))

    def _node_skipped(self, ev: NodeSkipped) -> None:
        at = _ns(ev.timestamp)
        attrs = _node_attributes(ev.node_type)
        self._node(ev.node, ev.node_type, "skipped", attrs, at, at)

    # -- end ----------------------------------------------------------------------------------

    def close(self, final: RunEvent | None) -> None:
        try:
            self._close(final)
        except Exception:
            log.exception("run %s: cannot end the run span", self.run_id)

    def _close(self, final: RunEvent | None) -> None:
        now = time.time_ns()
        for node, (began, node_type) in self._running.items():  # canceled with the run
            attrs = _node_attributes(node_type)
            attrs.update(_CANCELED_ATTRS)
            self._node(node, node_type, "canceled", attrs, _ns(began), now)
        self._running.clear()
        attrs = self._attributes
        if isinstance(final, RunFinished):
            if self._content:
                add_value(attrs, "output", final.outputs, self._redact)
            if final.usage:
                attrs.update(usage_attributes(final.usage, genai=False))
            status, end = "completed", _ns(final.timestamp)
        elif isinstance(final, RunFailed):
            attrs.update(error_attributes(final.error, self._redact))
            attrs.update(usage_attributes(final.usage, genai=False))
            status, end = "failed", _ns(final.timestamp)
        else:
            attrs.update(_CANCELED_ATTRS)
            status, end = "canceled", now
        if self._emit is None:
            return
        start = self._start_ns
        end = max(start, end)
        app_id = self._app_id
        record = RunRecord(
            self.trace_id,
            self._span_id,
            self._parent,
            app_id,
            status,
            self.run_id,
            app_id,
            self._session_id,
            start,
            end,
            (end - start) // 1000,
            attrs.get("flowhost.usage.input_tokens"),
            attrs.get("flowhost.usage.output_tokens"),
            attrs,
            self._done,
        )
        self._emit(record, self._origin)


# what ``RunTrace.on_event`` records, by the event's class (events are final dataclasses)
_HANDLERS: Final[dict[type, Callable[[RunTrace, Any], None]]] = {
    NodeStarted: RunTrace._node_started,
    NodeFinished: RunTrace._node_finished,
    NodeFailed: RunTrace._node_failed,
    NodeSkipped: RunTrace._node_skipped,
}
