"""Trace API response models (they appear in /openapi.json), built from stored spans."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from flowhost.store.traces import RunRecord, SpanRecord

__all__ = [
    "SpanError",
    "SpanOut",
    "SpanUsage",
    "TraceList",
    "TraceOut",
    "TraceSummary",
    "span_out",
    "summary_of",
]

PREVIEW_CHARS = 200


class SpanError(BaseModel):
    code: str
    message: str
    node: str | None = None


class SpanUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    models: list[str] = Field(default_factory=list)


class TraceSummary(BaseModel):
    """One run's trace, as the trace list shows it."""

    trace_id: str = Field(description="32 hex digits; the run's otel_trace_id and X-Trace-Id")
    run_id: str | None
    app_id: str | None
    session_id: str | None
    protocol: str | None
    status: str = Field(description="completed, failed or canceled")
    start_time: datetime
    end_time: datetime
    duration_ms: float
    usage: SpanUsage | None
    error: SpanError | None
    input_preview: str | None = Field(description="the run's inputs, cut to 200 characters")
    output_preview: str | None = Field(description="the run's outputs, cut to 200 characters")


class TraceList(BaseModel):
    traces: list[TraceSummary]
    total: int
    limit: int
    offset: int


class SpanOut(BaseModel):
    """One span (the run or a node) with its children."""

    span_id: str
    parent_span_id: str | None
    name: str
    span_type: str = Field(description="'flow' for the run, else the node type (llm, python...)")
    status: str = Field(description="completed, failed, canceled or skipped")
    start_time: datetime
    end_time: datetime
    duration_ms: float
    inputs: Any = Field(None, description="absent when content recording is off")
    output: Any = Field(None, description="absent when content recording is off")
    model: str | None = None
    messages: list[Any] | None = Field(None, description="an llm node's prompt messages")
    documents: list[dict[str, Any]] | None = Field(
        None, description="a retrieval node's recalled chunks"
    )
    usage: SpanUsage | None = None
    error: SpanError | None = None
    attributes: dict[str, Any]
    children: list[SpanOut] = Field(default_factory=list)


class TraceOut(BaseModel):
    trace_id: str
    span_count: int
    spans: list[SpanOut] = Field(description="the root spans (usually one: the run)")


def _value(a: dict[str, Any], prefix: str) -> Any:
    value = a.get(f"{prefix}.value")
    if a.get(f"{prefix}.mime_type") == "application/json":
        return _parse(value)
    return value


def _parse(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:  # a truncated value, or plain text
        return value


def _preview(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def _usage(a: dict[str, Any]) -> SpanUsage | None:
    inp, out = a.get("flowhost.usage.input_tokens"), a.get("flowhost.usage.output_tokens")
    if inp is None and out is None:
        return None
    models = a.get("flowhost.usage.models") or []
    return SpanUsage(
        input_tokens=int(inp or 0),
        output_tokens=int(out or 0),
        models=[str(m) for m in models] if isinstance(models, list) else [],
    )


def _error(a: dict[str, Any]) -> SpanError | None:
    code = a.get("flowhost.error.code")
    if code is None:
        return None
    node = a.get("flowhost.error.node")
    return SpanError(
        code=str(code),
        message=str(a.get("flowhost.error.message", "")),
        node=str(node) if node is not None else None,
    )


def summary_of(span: RunRecord) -> TraceSummary:
    a = span.attributes
    protocol = a.get("flowhost.protocol")
    return TraceSummary(
        trace_id=span.trace_id,
        run_id=span.run_id,
        app_id=span.app_id,
        session_id=span.session_id,
        protocol=str(protocol) if protocol is not None else None,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        duration_ms=span.duration_us / 1000,
        usage=_usage(a),
        error=_error(a),
        input_preview=_preview(a.get("input.value")),
        output_preview=_preview(a.get("output.value")),
    )


def _documents(a: dict[str, Any]) -> list[dict[str, Any]] | None:
    docs: dict[int, dict[str, Any]] = {}
    for key, value in a.items():
        if not key.startswith("retrieval.documents."):
            continue
        index, _, field = key.removeprefix("retrieval.documents.").partition(".document.")
        if index.isdigit() and field:
            docs.setdefault(int(index), {})[field] = _parse(value) if field == "metadata" else value
    return [docs[i] for i in sorted(docs)] or None


def span_out(span: SpanRecord) -> SpanOut:
    a = span.attributes
    messages = _parse(a.get("gen_ai.input.messages"))
    model = a.get("gen_ai.request.model") or a.get("gen_ai.response.model")
    return SpanOut(
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        name=span.name,
        span_type=span.span_type,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        duration_ms=span.duration_us / 1000,
        inputs=_value(a, "input"),
        output=_value(a, "output"),
        model=str(model) if model else None,
        messages=messages if isinstance(messages, list) else None,
        documents=_documents(a),
        usage=_usage(a),
        error=_error(a),
        attributes=a,
    )
