"""Bailian application API: events -> ``{output, usage, request_id}`` chunks or one JSON body.

Streaming frames are exactly Bailian's (CLIENTS.md): ``id:N`` / ``event:result`` /
``:HTTP_STATUS/200`` / one-line ``data:{...}``, no ``[DONE]``; failures are ``event:error`` with a
``status:`` line. ``incremental`` true sends only new text per chunk; false sends the text so far.
With ``has_thoughts`` (a workflow app's streaming, seed 003) every chunk lists each node's
progress as ``{"response": "<JSON string>"}`` with nodeId / nodeName / nodeType / nodeStatus
(executing, success, failed) / nodeExecTime / nodeResult, starting with a Start node (the
inputs) and ending with an End node (the outputs); the streaming happens there, in the nodes'
results, and ``text`` is the End node's whole answer, in the last chunk only (earlier chunks
carry no ``text``), whether or not ``incremental``.
The caller's ``user_defined_tokens`` values are scrubbed from every nodeResult: thoughts are a
per-node trace, and tokens are never traced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from flowhost.engine.events import (
    ErrorInfo,
    ModelUsage,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    OutputDelta,
    OutputReady,
    RunEvent,
    RunFailed,
    RunFinished,
    RunStarted,
)
from flowhost.engine.executor import sum_usage
from flowhost.frozen import frozen
from flowhost.knowledge.references import doc_references
from flowhost.tracing.attributes import MIN_SECRET_LEN, Redactor
from flowhost.wire.chat import aclose, output_text
from flowhost.wire.sse import dumps, sse

__all__ = ["Options", "collect", "error_body", "secrets_of", "stream"]

NODE_TYPES = {
    "llm": "LLM",
    "python": "Script",
    "prompt": "Template",
    "knowledge_retrieval": "Retrieval",
}


def error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": request_id}


@frozen
class Options:
    session_id: str
    request_id: str
    answer_key: str
    incremental: bool = False
    has_thoughts: bool = False
    inputs: dict[str, Any] = field(default_factory=dict)
    display_names: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """``user_defined_tokens`` values: scrubbed from thoughts (a per-node trace on the wire)."""


def secrets_of(tokens: Any) -> tuple[str, ...]:
    """Every string (of at least MIN_SECRET_LEN characters) inside ``user_defined_tokens``."""
    out: list[str] = []
    _strings_in(tokens, out)
    return tuple(sorted(set(out), key=len, reverse=True))


def _strings_in(value: Any, out: list[str]) -> None:
    """Append the long enough strings inside ``value`` to ``out``. A module function: a nested
    function that calls itself is a reference cycle, left to the garbage collector on every
    request (tests/server/test_no_garbage.py)."""
    if isinstance(value, str):
        if len(value) >= MIN_SECRET_LEN:
            out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings_in(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _strings_in(v, out)


def _holdback(text: str, secrets: tuple[str, ...]) -> int:
    """The length of the longest end of ``text`` that begins a secret (0: none does)."""
    longest = 0
    for secret in secrets:
        for k in range(min(len(secret) - 1, len(text)), longest, -1):
            if text.endswith(secret[:k]):
                longest = k
                break
    return longest


@dataclass(slots=True)
class _Node:
    node_id: str
    node_type: str
    name: str
    status: str = "executing"
    exec_ms: int | None = None
    full: str = ""
    sent: int = 0  # characters of ``full`` already sent (incremental output)
    streamed: bool = False
    structured: Any = None

    def response(
        self, incremental: bool, secrets: tuple[str, ...] = (), redactor: Redactor | None = None
    ) -> dict[str, str]:
        """``secrets`` (held back while they may be arriving) and ``redactor`` (scrubs them,
        as written or JSON-escaped) come from ``Options.secrets``."""
        d: dict[str, Any] = {
            "nodeId": self.node_id,
            "nodeName": self.name,
            "nodeType": self.node_type,
            "nodeStatus": self.status,
        }
        if self.exec_ms is not None:
            d["nodeExecTime"] = f"{self.exec_ms}ms"
        if isinstance(self.structured, dict):
            d["nodeResult"] = dumps(self.structured)
        else:
            visible = self.full
            if secrets and self.streamed and self.status == "executing":
                # a secret may be arriving in pieces: hold back what could be its beginning
                visible = visible[: len(visible) - _holdback(visible, secrets)]
            if incremental and self.streamed:
                result, self.sent = visible[self.sent :], len(visible)
            else:
                result = visible
            d["nodeResult"] = dumps({"result": result})
        if redactor is not None:
            d["nodeResult"] = redactor.scrub(d["nodeResult"])
        return {"response": dumps(d)}


class _State:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.text = ""
        self.new_text = ""
        self.nodes: dict[str, _Node] = {}
        self.usage: list[ModelUsage] = []
        self.references: list[dict[str, Any]] = []
        self.redactor = Redactor(opts.secrets) if opts.secrets else None

    def apply(self, ev: RunEvent) -> bool:
        """Fold one event in; True when a chunk should go out now."""
        o = self.opts
        if isinstance(ev, RunStarted):
            start = _Node("Start", "Start", "Start", "success", 0, structured=o.inputs)
            self.nodes["Start"] = start
            return o.has_thoughts
        if isinstance(ev, NodeStarted):
            self.nodes[ev.node] = _Node(
                ev.node,
                NODE_TYPES.get(ev.node_type, ev.node_type),
                o.display_names.get(ev.node, ev.node),
            )
            return o.has_thoughts
        if isinstance(ev, NodeDelta):
            n = self.nodes[ev.node]
            n.streamed = True
            n.full += ev.delta
            return o.has_thoughts
        if isinstance(ev, NodeFinished | NodeFailed):
            n = self.nodes[ev.node]
            n.exec_ms = round(ev.duration * 1000)
            if isinstance(ev, NodeFinished):
                n.status = "success"
                if not n.streamed:
                    n.full, n.structured = output_text(ev.output), ev.output
                self.usage.extend(ev.usage)
                if ev.node_type == "knowledge_retrieval" and isinstance(ev.output, list):
                    self.references.extend(
                        doc_references(ev.output, start=len(self.references) + 1)
                    )
            else:
                n.status, n.full = "failed", ev.error.message
            return o.has_thoughts
        if isinstance(ev, OutputDelta) and ev.name == o.answer_key:
            self.text += ev.delta
            self.new_text += ev.delta
            return not o.has_thoughts  # with thoughts: the node's delta went out already
        if isinstance(ev, OutputReady) and ev.name == o.answer_key and not ev.streamed:
            value = output_text(ev.value)
            self.text += value
            self.new_text += value
            return not o.has_thoughts
        return False

    def output(self, finish: str) -> dict[str, Any]:
        o = self.opts
        out: dict[str, Any] = {"session_id": o.session_id, "finish_reason": finish}
        if not o.has_thoughts or finish == "stop":  # with thoughts: the answer at the end
            out["text"] = self.new_text if o.incremental else self.text
            self.new_text = ""
        if o.has_thoughts:
            out["thoughts"] = [
                n.response(o.incremental, o.secrets, self.redactor) for n in self.nodes.values()
            ]
        out["doc_references"] = self.references or None
        return out

    def usage_dict(self, usage: tuple[ModelUsage, ...] | None = None) -> dict[str, Any]:
        models = usage if usage is not None else sum_usage(self.usage)
        return {
            "models": [
                {
                    "model_id": u.model,
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                }
                for u in models
            ]
            or None
        }

    def end_node(self, outputs: dict[str, Any]) -> None:
        value = outputs.get(self.opts.answer_key) if len(outputs) <= 1 else outputs
        self.nodes["End"] = _Node(
            "End", "End", "End", "success", 0, output_text(value), structured=value
        )


def _chunk(n: int, payload: dict[str, Any]) -> bytes:
    return sse(dumps(payload), id=str(n), event="result", comment="HTTP_STATUS/200", colon=":")


def _error_frame(n: int, err: ErrorInfo, request_id: str) -> bytes:
    data = dumps(error_body(err.code, err.message, request_id))
    status = err.status if err.status >= 400 else 500
    return f"id:{n}\nevent:error\nstatus:{status}\n:HTTP_STATUS/{status}\ndata:{data}\n\n".encode()


async def stream(events: AsyncIterator[RunEvent], opts: Options) -> AsyncIterator[bytes]:
    st = _State(opts)
    n = 0
    try:
        async for ev in events:
            if isinstance(ev, RunFailed):
                n += 1
                yield _error_frame(n, ev.error, opts.request_id)
                return
            if isinstance(ev, RunFinished):
                if opts.has_thoughts:
                    st.end_node(ev.outputs)
                n += 1
                yield _chunk(
                    n,
                    {
                        "output": st.output("stop"),
                        "usage": st.usage_dict(ev.usage),
                        "request_id": opts.request_id,
                    },
                )
                return
            if st.apply(ev):
                n += 1
                yield _chunk(
                    n,
                    {
                        "output": st.output("null"),
                        "usage": st.usage_dict(),
                        "request_id": opts.request_id,
                    },
                )
    finally:
        await aclose(events)


async def collect(
    events: AsyncIterator[RunEvent], opts: Options
) -> tuple[dict[str, Any] | None, ErrorInfo | None]:
    st = _State(replace(opts, incremental=False))
    try:
        async for ev in events:
            if isinstance(ev, RunFailed):
                return None, ev.error
            if isinstance(ev, RunFinished):
                if opts.has_thoughts:
                    st.end_node(ev.outputs)
                st.text = output_text(ev.outputs.get(opts.answer_key))
                out = st.output("stop")
                if not opts.has_thoughts:
                    out["thoughts"] = None
                return {
                    "output": out,
                    "usage": st.usage_dict(ev.usage),
                    "request_id": opts.request_id,
                }, None
            st.apply(ev)
    finally:
        await aclose(events)
    return None, ErrorInfo("RunCanceled", "the run ended without a result", status=499)
