"""Runs whose nodes all run inline (quick sync functions, prompts) take the executor's straight
path: no node tasks, and exactly the events (and results) the task path gives."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from flowhost.engine import executor
from flowhost.engine.context import RunContext, run_context
from flowhost.engine.events import NodeStarted, RunEvent, RunFailed, RunFinished
from flowhost.flows.loader import Flow, load_flow
from flowhost.nodes.python import InlinePolicy, PythonNode

pytestmark = pytest.mark.anyio

Run = Callable[..., Awaitable[list[RunEvent]]]  # the `run` fixture (tests/engine/conftest.py)
Load = Callable[[str], Flow]  # the `load_flow_named` fixture

# (flow, inputs): every node a sync python function or a prompt; successes, skips, failures
CASES = [
    ("echo", {"question": "hi"}),
    ("branch", {"question": "is it?"}),
    ("branch", {"question": "it is."}),
    ("skipping", {"go": False}),
    ("skipping", {"go": True}),
    ("described", {"question": "q"}),
    ("fail", {"question": "q"}),
    ("lookup", {"question": "q"}),
    ("missing_field", {"question": "q"}),
    ("typed", {"question": "q", "count": 3}),
]

PROMPT_FLOW = """
inputs:
  name: {type: string}
outputs:
  greeting: {type: string, reference: "${shout.output}"}
  prompt: {type: string, reference: "${greet.output}"}
nodes:
- name: greet
  type: prompt
  source: {type: code, path: greet.jinja2}
  inputs: {name: "${inputs.name}"}
- name: shout
  type: python
  source: {type: code, path: shout.py}
  inputs: {text: "${greet.output}"}
"""
SHOUT = """
import contextvars

from flowhost import RunContext, run_context, tool

MARK = contextvars.ContextVar("mark", default="unset")

@tool
def shout(text: str, ctx: RunContext) -> str:
    assert run_context() is ctx
    ctx.extra["mark_before"] = MARK.get()
    MARK.set("set by shout")  # a node's context variables end with the node, as in a task
    return f"{text.upper()} ({ctx.run_id})"
"""


def set_inline(flow: Flow, inline: bool) -> None:
    """Python nodes as if their trial runs were over (inline) or still going (thread pool)."""
    for node in flow.nodes.values():
        if isinstance(node.impl, PythonNode):
            node.impl.policy.inline = inline


def normal(events: list[RunEvent]) -> list[RunEvent]:
    """The events without their clock readings."""
    out = []
    for e in events:
        changes: dict[str, Any] = {"timestamp": 0.0}
        if hasattr(e, "duration"):
            changes["duration"] = 0.0
        out.append(dataclasses.replace(e, **changes))
    return out


async def both_paths(
    run: Run, flow: Flow, inputs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[RunEvent], list[RunEvent]]:
    set_inline(flow, True)
    assert executor._inline_nodes(flow) is not None
    inline = await run(flow, inputs)
    with monkeypatch.context() as m:
        m.setattr(executor, "_inline_nodes", lambda flow: None)
        tasks = await run(flow, inputs)
    return inline, tasks


@pytest.mark.parametrize(("name", "inputs"), CASES)
async def test_inline_path_gives_the_task_paths_events(
    run: Run,
    load_flow_named: Load,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    inputs: dict[str, Any],
) -> None:
    flow = load_flow_named(name)
    inline, tasks = await both_paths(run, flow, inputs, monkeypatch)
    assert normal(inline) == normal(tasks)
    assert isinstance(inline[-1], RunFinished | RunFailed)


async def test_prompt_nodes_run_inline_with_the_run_context(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "flow.dag.yaml").write_text(PROMPT_FLOW)
    (tmp_path / "greet.jinja2").write_text("Hello, {{ name }}!")
    (tmp_path / "shout.py").write_text(SHOUT)
    flow = load_flow(tmp_path)
    inline, tasks = await both_paths(run, flow, {"name": "Ada"}, monkeypatch)
    assert normal(inline) == normal(tasks)
    last = inline[-1]
    assert isinstance(last, RunFinished)
    assert last.outputs == {"greeting": "HELLO, ADA! (run-1)", "prompt": "Hello, Ada!"}
    with pytest.raises(RuntimeError):
        run_context()  # set for the node only, not left on the caller's context
    # a second inline run on this task: the first run's context variable did not stay
    ctx = RunContext(run_id="run-2")
    set_inline(flow, True)
    await run(flow, {"name": "Ada"}, ctx=ctx)
    assert ctx.extra["mark_before"] == "unset"


async def test_an_inline_run_creates_no_task(run: Run, load_flow_named: Load) -> None:
    flow = load_flow_named("branch")
    ctx = RunContext(run_id="run-1")
    # quick trial runs in the thread pool, through both branches (a skipped node is not run),
    # until every node has earned its place on the loop (a slow trial run starts it over)
    trials = 0
    while executor._inline_nodes(flow) is None:
        await run(flow, {"question": "is it?" if trials % 2 else "it is."}, ctx=ctx)
        trials += 1
        assert trials <= 10 * InlinePolicy.TRIAL_RUNS
    assert trials >= 2 * InlinePolicy.TRIAL_RUNS
    before = asyncio.all_tasks()
    started = 0
    async for event in executor.execute(flow, {"question": "is it?"}, ctx, None):  # type: ignore[arg-type]
        if isinstance(event, NodeStarted):
            started += 1
            assert asyncio.all_tasks() == before
    assert started == len(flow.nodes) - 1  # one branch is skipped


async def test_one_node_not_ready_sends_the_whole_run_to_tasks(
    run: Run, load_flow_named: Load
) -> None:
    flow = load_flow_named("branch")
    set_inline(flow, True)
    first = next(n for n in flow.nodes.values() if isinstance(n.impl, PythonNode))
    assert isinstance(first.impl, PythonNode)
    first.impl.policy.inline = False
    assert executor._inline_nodes(flow) is None
    events = await run(flow, {"question": "is it?"})
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert last.outputs == {"answer": "You asked: is it? (2 words)"}
