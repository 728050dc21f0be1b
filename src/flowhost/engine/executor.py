"""Run a flow: ``execute(flow, inputs, ctx, services) -> AsyncIterator[RunEvent]``.

Every node gets a task at the start; a node waits for the nodes it references, then runs, so ready
nodes always run concurrently. Node tasks report through one queue that this generator drains, so
events leave in the order they happened. The first node failure cancels the rest and ends the run
with RunFailed. Closing the generator (the client went away) cancels every node task, and with
them their in-flight LLM requests, and waits for them: no task outlives the run.

A run whose nodes can all run inline as it starts (quick sync python functions, prompts: see
``InlineNode``) runs them one after the other on the generator's own task instead, in the same
(topological) order and with the same events: tasks, a queue and timeouts cost more than such a
flow's work, and they could neither time out nor cancel a call that never awaits.

Skipping follows promptflow: a node is skipped when its ``activate`` condition is false (or refers
to a skipped node), or when it references other nodes and all of them were skipped. A reference
to a skipped node reads as None.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any, cast

from flowhost.engine.context import RunContext, set_run_context
from flowhost.engine.events import (
    ErrorInfo,
    ModelUsage,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeSkipped,
    NodeStarted,
    OutputDelta,
    OutputReady,
    RunEvent,
    RunFailed,
    RunFinished,
    RunStarted,
)
from flowhost.exceptions import FlowhostError, NodeError, NodeTimeout
from flowhost.flows.loader import CompiledNode, Flow
from flowhost.flows.spec import Reference
from flowhost.nodes.base import InlineNode, NodeRuntime, NodeServices

__all__ = ["DEFAULT_NODE_TIMEOUT", "execute", "execute_inline", "sum_usage"]

DEFAULT_NODE_TIMEOUT = 600.0
_SKIPPED = object()


def sum_usage(usages: list[ModelUsage]) -> tuple[ModelUsage, ...]:
    """Add up usage per model, keeping first-seen order."""
    acc: dict[str, list[int]] = {}
    for u in usages:
        a = acc.setdefault(u.model, [0, 0])
        a[0] += u.input_tokens
        a[1] += u.output_tokens
    return tuple(ModelUsage(m, i, o) for m, (i, o) in acc.items())


class _PathError(LookupError):
    """A ``${node.output.field}`` path that the value does not have."""


def _lookup(value: Any, path: tuple[str, ...], ref: Reference) -> Any:
    for key in path:
        if isinstance(value, dict):
            if key not in value:
                raise _PathError(f"{ref}: the output has no field {key!r}")
            value = value[key]
        elif isinstance(value, list | tuple) and key.isdigit():
            if int(key) >= len(value):
                raise _PathError(f"{ref}: index {key} is out of range ({len(value)} items)")
            value = value[int(key)]
        elif not key.startswith("_") and hasattr(value, key):
            value = getattr(value, key)
        else:
            raise _PathError(f"{ref}: a {type(value).__name__} has no field {key!r}")
    return value


class _Channel:
    """The node tasks' events, in order, for the one consumer (``execute``): a list read from
    ``_head`` and emptied whenever it is drained, and at most one waiting future. An
    ``asyncio.Queue`` keeps four deques and an event per run, and one deque alone holds a
    64-slot block (~0.6 KB for each open stream)."""

    __slots__ = ("_head", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[RunEvent | _Failed] = []
        self._head = 0
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: RunEvent | _Failed) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> RunEvent | _Failed:
        while self._head == len(self._items):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items[self._head]
        self._head += 1
        if self._head == len(self._items):
            self._items.clear()
            self._head = 0
        return item


class _Failed:
    __slots__ = ("event",)

    def __init__(self, event: NodeFailed) -> None:
        self.event = event


class _Run:
    def __init__(
        self,
        flow: Flow,
        inputs: dict[str, Any],
        ctx: RunContext,
        services: NodeServices,
        node_timeout: float,
    ) -> None:
        self.flow, self.inputs, self.ctx, self.services = flow, inputs, ctx, services
        self.node_timeout = node_timeout
        self.run_id = ctx.run_id
        self.queue = _Channel()
        self.results: dict[str, Any] = {}
        # node tasks wait on these (set by _execute_tasks; an inline run waits for nothing)
        self.finished: dict[str, asyncio.Event] = {}
        self.usage: list[ModelUsage] = []
        self.echo = flow.echoes
        self.outputs: dict[str, Any] = {}

    def opening(self, trace_id: str, start: float) -> list[RunEvent]:
        """RunStarted, then the flow outputs the inputs complete; last a RunFailed when one of
        them cannot be read."""
        events: list[RunEvent] = [RunStarted(self.run_id, self.flow.name, time.time(), trace_id)]
        ready, error = self.outputs_after(None)
        events += ready
        if error is not None:
            events.append(self.failed(error, start))
        return events

    def failed(self, error: ErrorInfo, start: float) -> RunFailed:
        return RunFailed(self.run_id, error, _since(start), time.time(), sum_usage(self.usage))

    def outputs_after(self, source: str | None) -> tuple[list[OutputReady], ErrorInfo | None]:
        """The flow outputs that node ``source`` (None: the inputs) completes, and the error
        that fails the run when one of them cannot be read (the outputs before it are ready)."""
        names = self.flow.outputs_of.get(source)
        if not names:
            return [], None
        ready: list[OutputReady] = []
        for out in names:
            try:
                value = self.outputs[out] = self.resolve(self.flow.outputs[out])
            except Exception as exc:  # a bad ${node.output.field} path
                return ready, ErrorInfo("OutputError", f"output {out!r}: {exc}", node=source)
            streamed = source is not None and out in self.flow.streaming_outputs
            ready.append(OutputReady(self.run_id, out, value, streamed, time.time()))
        return ready, None

    def node_inputs(self, node: CompiledNode) -> dict[str, Any] | NodeSkipped | NodeFailed:
        """The node's resolved inputs; or NodeSkipped (its result is set), or NodeFailed when
        one of its references cannot be read."""
        name, ntype = node.name, node.impl.node_type
        try:
            if self._skipped(node):
                self.results[name] = _SKIPPED
                return NodeSkipped(self.run_id, name, ntype, time.time())
            return {k: self.resolve(v) for k, v in node.inputs.items()}
        except Exception as exc:  # a bad ${node.output.field} path
            return NodeFailed(self.run_id, name, ntype, _error(exc, name), 0.0, time.time())

    def resolve(self, value: Any) -> Any:
        if not isinstance(value, Reference):
            return value
        if value.is_input:
            base = self.inputs.get(value.name)
        else:
            base = self.results.get(value.source)
            if base is _SKIPPED:
                return None
        return _lookup(base, value.path, value) if value.path else base

    def _skipped(self, node: CompiledNode) -> bool:
        when = node.activate_when
        if node.spec.activate is not None:
            if (
                isinstance(when, Reference)
                and not when.is_input
                and self.results[when.source] is _SKIPPED
            ):
                return True
            return bool(self.resolve(when) != node.spec.activate.is_)
        refs = node.node_refs
        return bool(refs) and all(self.results[r.source] is _SKIPPED for r in refs)

    async def run_node(self, node: CompiledNode) -> None:
        name, ntype = node.name, node.impl.node_type
        for dep in node.deps:
            await self.finished[dep].wait()
        put = self.queue.put_nowait
        inputs = self.node_inputs(node)
        if isinstance(inputs, NodeSkipped):
            put(inputs)
            self._set_finished(name)
            return
        if isinstance(inputs, NodeFailed):
            put(_Failed(inputs))
            return
        echo = self.echo.get(name, ())

        async def emit(delta: str) -> None:
            now = time.time()
            put(NodeDelta(self.run_id, name, delta, now))
            for out in echo:
                put(OutputDelta(self.run_id, out, delta, now))

        rt = NodeRuntime(node=name, ctx=self.ctx, services=self.services, emit=emit)
        start = time.perf_counter()
        put(NodeStarted(self.run_id, name, ntype, time.time()))
        set_run_context(self.ctx)
        timeout = node.spec.timeout or self.node_timeout
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                output = await node.impl.run(inputs, rt)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                # only our own deadline: a TimeoutError the node raised is an ordinary failure
                exc = NodeTimeout(f"node {name!r} timed out after {timeout:g}s", node=name)
            put(
                _Failed(
                    NodeFailed(
                        self.run_id,
                        name,
                        ntype,
                        _error(exc, name),
                        _since(start),
                        time.time(),
                        rt.trace,
                        inputs,
                    )
                )
            )
            return
        self.results[name] = output
        self.usage.extend(rt.usage)
        put(
            NodeFinished(
                self.run_id,
                name,
                ntype,
                output,
                _since(start),
                time.time(),
                tuple(rt.usage),
                inputs,
                rt.trace,
            )
        )
        self._set_finished(name)

    def _set_finished(self, name: str) -> None:
        event = self.finished.get(name)
        if event is not None:
            event.set()

    def _call_inline(self, impl: InlineNode, inputs: dict[str, Any]) -> Any:
        set_run_context(self.ctx)
        return impl.run_inline(inputs, self.ctx)

    def run_inline(
        self, node: CompiledNode, impl: InlineNode, inputs: dict[str, Any], start: float
    ) -> NodeFinished | NodeFailed:
        """Run ``node`` now, on this task (see the module); ``start``: its perf_counter start.

        In a copy of the task's context, as a node task would be: what the node sets there (the
        run context, any context variable of its own) ends with it."""
        name = node.name
        try:
            output = contextvars.copy_context().run(self._call_inline, impl, inputs)
        except Exception as exc:
            err = _error(exc, name)
            return NodeFailed(
                self.run_id, name, node.impl.node_type, err, _since(start), time.time(), {}, inputs
            )
        self.results[name] = output
        return NodeFinished(
            self.run_id, name, node.impl.node_type, output, _since(start), time.time(), (), inputs
        )


def _since(start: float) -> float:
    return time.perf_counter() - start


def _error(exc: BaseException, node: str) -> ErrorInfo:
    if isinstance(exc, NodeError):
        return ErrorInfo(exc.code, exc.message, node=exc.node or node, status=exc.status)
    if isinstance(exc, FlowhostError):
        return ErrorInfo(exc.code, exc.message, node=node, status=exc.status)
    if isinstance(exc, _PathError):
        return ErrorInfo("NodeFailed", f"cannot read its inputs: {exc}", node=node, status=500)
    return ErrorInfo("NodeFailed", f"{type(exc).__name__}: {exc}", node=node, status=500)


def execute(
    flow: Flow,
    inputs: dict[str, Any],
    ctx: RunContext,
    services: NodeServices,
    *,
    node_timeout: float = DEFAULT_NODE_TIMEOUT,
    trace_id: str = "",
) -> AsyncGenerator[RunEvent, None]:
    """Run ``flow`` on already-validated ``inputs``; yield its events, ending in RunFinished or RunFailed."""
    run = _Run(flow, inputs, ctx, services, node_timeout)
    inline = _inline_nodes(flow)
    if inline is not None:
        return _as_async(_inline_events(run, inline, trace_id))
    return _execute_tasks(run, trace_id)


def execute_inline(
    flow: Flow,
    inputs: dict[str, Any],
    ctx: RunContext,
    services: NodeServices,
    *,
    trace_id: str = "",
) -> Iterator[RunEvent] | None:
    """``execute``'s events as a plain iterator when every node of ``flow`` can run inline
    right now (see the module), else None. The whole run happens while it is iterated, on the
    caller's thread, without ever giving the event loop a turn: a caller that wants only the
    outcome pays for no async generator, and has no wait to watch for a disconnect."""
    inline = _inline_nodes(flow)
    if inline is None:
        return None
    return _inline_events(_Run(flow, inputs, ctx, services, DEFAULT_NODE_TIMEOUT), inline, trace_id)


def _inline_nodes(flow: Flow) -> list[InlineNode] | None:
    """Every node's implementation when all can run inline right now, else None."""
    impls: list[InlineNode] = []
    for node in flow.nodes.values():
        ready = getattr(node.impl, "inline_ready", None)
        if ready is None or not ready():
            return None
        impls.append(cast(InlineNode, node.impl))
    return impls


async def _as_async(events: Iterator[RunEvent]) -> AsyncGenerator[RunEvent, None]:
    for event in events:
        yield event


def _inline_events(run: _Run, impls: list[InlineNode], trace_id: str) -> Iterator[RunEvent]:
    """Every node on the caller's task, in the flow's (topological) order: see the module."""
    start = time.perf_counter()
    opening = run.opening(trace_id, start)
    yield from opening
    if isinstance(opening[-1], RunFailed):
        return
    for node, impl in zip(run.flow.nodes.values(), impls, strict=True):
        inputs = run.node_inputs(node)
        if isinstance(inputs, dict):
            node_start = time.perf_counter()
            yield NodeStarted(run.run_id, node.name, node.impl.node_type, time.time())
            done: RunEvent = run.run_inline(node, impl, inputs, node_start)
        else:
            done = inputs
        yield done
        if isinstance(done, NodeFailed):
            yield run.failed(done.error, start)
            return
        ready, error = run.outputs_after(node.name)
        yield from ready
        if error is not None:
            yield run.failed(error, start)
            return
    yield RunFinished(run.run_id, run.outputs, (), _since(start), time.time())


async def _execute_tasks(run: _Run, trace_id: str) -> AsyncGenerator[RunEvent, None]:
    """A task per node, their events drained from the run's queue: see the module."""
    flow = run.flow
    start = time.perf_counter()
    opening = run.opening(trace_id, start)
    for event in opening:
        yield event
    if isinstance(opening[-1], RunFailed):
        return
    # a node no one references needs no event
    run.finished = {dep: asyncio.Event() for dep in flow.waited_for}
    tasks = [
        asyncio.create_task(run.run_node(n), name=f"node:{n.name}") for n in flow.nodes.values()
    ]
    remaining = len(tasks)
    try:
        while remaining:
            item = await run.queue.get()
            if isinstance(item, _Failed):
                yield item.event
                await _cancel(tasks)  # the other nodes stop before the run is reported failed
                yield run.failed(item.event.error, start)
                return
            yield item
            if isinstance(item, (NodeFinished, NodeSkipped)):
                remaining -= 1
                ready, error = run.outputs_after(item.node)
                for event in ready:
                    yield event
                if error is not None:
                    await _cancel(tasks)
                    yield run.failed(error, start)
                    return
        yield RunFinished(run.run_id, run.outputs, sum_usage(run.usage), _since(start), time.time())
    finally:
        await _cancel(tasks)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the node tasks still running and wait until every one has ended."""
    running = []
    for t in tasks:
        if not t.done():
            t.cancel()
            running.append(t)
        elif not t.cancelled():
            t.exception()  # retrieved: a node task's own failure is never logged as lost
    if running:  # a finished run has none: no gather (a future and a callback per task)
        await asyncio.gather(*running, return_exceptions=True)
