"""The run-event vocabulary: the only output of a run.

The engine turns one flow execution into an ordered stream of these events; every wire protocol is
a pure translator from this stream to bytes, and storage and tracing are sinks on the same stream.
The set is closed: adding an event means updating every adapter (mypy checks the matches).

Order guarantees for one run:
  RunStarted, then per node NodeStarted -> (NodeDelta*) -> NodeFinished | NodeFailed, or NodeSkipped;
  OutputDelta* for streamed outputs and OutputReady once per output, as soon as it is known;
  last, exactly one of RunFinished | RunFailed.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

from flowhost.frozen import frozen

__all__ = [
    "ErrorInfo",
    "ModelUsage",
    "NodeDelta",
    "NodeFailed",
    "NodeFinished",
    "NodeSkipped",
    "NodeStarted",
    "OutputDelta",
    "OutputReady",
    "RunEvent",
    "RunFailed",
    "RunFinished",
    "RunStarted",
]


@frozen
class ModelUsage:
    """Tokens spent on one model during a run (summed over its calls)."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0


@frozen
class ErrorInfo:
    """What went wrong, in a form every protocol can render.

    :ivar code: stable error name (``NodeFailed``, ``NodeTimeout``, ``LLMError``, ``RunCanceled``...).
    :ivar message: human-readable message; never contains secrets or stack traces.
    :ivar node: the failing node's name, when a node failed.
    :ivar status: the HTTP status a non-streaming response should carry.
    """

    code: str
    message: str
    node: str | None = None
    status: int = 500

    @property
    def described(self) -> str:
        """The message naming the failed node, once (``node 'n' failed: ...``)."""
        if self.node is None or self.message.startswith(f"node {self.node!r}"):
            return self.message
        return f"node {self.node!r} failed: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.node is not None:
            d["node"] = self.node
        return d


@frozen
class RunStarted:
    run_id: str
    app_id: str
    timestamp: float
    trace_id: str = ""
    kind: Literal["RunStarted"] = "RunStarted"


@frozen
class NodeStarted:
    run_id: str
    node: str
    node_type: str
    timestamp: float
    kind: Literal["NodeStarted"] = "NodeStarted"


@frozen
class NodeDelta:
    """A streamed fragment of a node's output (LLM token chunk or generator item)."""

    run_id: str
    node: str
    delta: str
    timestamp: float
    kind: Literal["NodeDelta"] = "NodeDelta"


@frozen
class NodeFinished:
    run_id: str
    node: str
    node_type: str
    output: Any
    duration: float
    timestamp: float
    usage: tuple[ModelUsage, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    """What the node recorded for tracing (``NodeRuntime.trace``): an llm node's ``model``,
    rendered ``messages`` and ``params``; a retrieval node's recalled ``documents``."""
    kind: Literal["NodeFinished"] = "NodeFinished"


@frozen
class NodeFailed:
    run_id: str
    node: str
    node_type: str
    error: ErrorInfo
    duration: float
    timestamp: float
    trace: dict[str, Any] = field(default_factory=dict)
    """As ``NodeFinished.trace``: what the node recorded before it failed."""
    inputs: dict[str, Any] | None = None
    """The node's resolved inputs; None when resolving them was what failed."""
    kind: Literal["NodeFailed"] = "NodeFailed"


@frozen
class NodeSkipped:
    """The node's ``activate`` condition was false, or it depends on a skipped node."""

    run_id: str
    node: str
    node_type: str
    timestamp: float
    kind: Literal["NodeSkipped"] = "NodeSkipped"


@frozen
class OutputDelta:
    """A streamed fragment of flow output ``name`` (the output references a streaming node)."""

    run_id: str
    name: str
    delta: str
    timestamp: float
    kind: Literal["OutputDelta"] = "OutputDelta"


@frozen
class OutputReady:
    """Flow output ``name`` is complete. ``streamed`` says whether OutputDeltas preceded it."""

    run_id: str
    name: str
    value: Any
    streamed: bool
    timestamp: float
    kind: Literal["OutputReady"] = "OutputReady"


@frozen
class RunFinished:
    run_id: str
    outputs: dict[str, Any]
    usage: tuple[ModelUsage, ...]
    duration: float
    timestamp: float
    kind: Literal["RunFinished"] = "RunFinished"


@frozen
class RunFailed:
    run_id: str
    error: ErrorInfo
    duration: float
    timestamp: float
    usage: tuple[ModelUsage, ...] = ()
    kind: Literal["RunFailed"] = "RunFailed"


RunEvent = (
    RunStarted
    | NodeStarted
    | NodeDelta
    | NodeFinished
    | NodeFailed
    | NodeSkipped
    | OutputDelta
    | OutputReady
    | RunFinished
    | RunFailed
)
