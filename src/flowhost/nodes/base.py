"""What every node type implements, and what it gets from the engine while it runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flowhost.engine.context import RunContext
from flowhost.engine.events import ModelUsage

if TYPE_CHECKING:
    from flowhost.llm.client import LLMClient
    from flowhost.llm.connections import ConnectionRegistry

__all__ = ["InlineNode", "NodeImpl", "NodeRuntime", "NodeServices"]


@dataclass(frozen=True, slots=True)
class NodeServices:
    """Long-lived services nodes call (built once per server, shared by all runs)."""

    connections: ConnectionRegistry
    llm: LLMClient
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class NodeRuntime:
    """Per node execution: the run context, a delta emitter and a usage recorder."""

    node: str
    ctx: RunContext
    services: NodeServices
    emit: Callable[[str], Awaitable[None]]
    usage: list[ModelUsage] = field(default_factory=list)
    trace: dict[str, Any] = field(default_factory=dict)

    def add_usage(self, usage: ModelUsage) -> None:
        self.usage.append(usage)


class NodeImpl(Protocol):
    """A compiled node. ``streaming`` says whether ``run`` emits deltas through ``rt.emit``.

    ``run`` returns the node's complete output (for a streaming node, the joined deltas). Errors
    are raised as exceptions; the engine turns them into NodeFailed.
    """

    node_type: str
    streaming: bool

    async def run(self, inputs: dict[str, Any], rt: NodeRuntime) -> Any: ...


class InlineNode(Protocol):
    """A node that can also run synchronously, on the engine's own task.

    When every node of a flow says ``inline_ready()`` as a run starts, the engine calls
    ``run_inline`` on each in turn instead of giving each a task (see ``engine.executor``): same
    events, same results. Only for work that never awaits and takes microseconds (a quick sync
    function, a template): such a call could not be timed out or cancelled on a task either.
    """

    def inline_ready(self) -> bool: ...

    def run_inline(self, inputs: dict[str, Any], ctx: RunContext) -> Any: ...
