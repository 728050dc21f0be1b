"""The executor: event order, concurrency, activation, failures, timeouts, streaming, cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import flowhost
from flowhost.engine.context import RunContext
from flowhost.engine.events import (
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
from flowhost.engine.executor import execute
from flowhost.flows.loader import Flow, load_flow
from flowhost.nodes.base import NodeServices

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[1] / "flows_fixtures"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"
Run = Callable[..., Awaitable[list[RunEvent]]]  # the `run` fixture (tests/engine/conftest.py)


def flow_named(name: str) -> Flow:
    for base in (FIXTURES / "engine", FIXTURES / "served", EXAMPLES):
        if (base / name).is_dir():
            return load_flow(base / name)
    raise LookupError(name)


def node_tasks() -> set[asyncio.Task[object]]:
    """Running tasks besides the test's own (and the anyio test runner's, which awaits it)."""
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task() and "TestRunner" not in repr(t.get_coro())
    }


def kinds(events: list[RunEvent]) -> list[str]:
    return [f"{e.kind}:{getattr(e, 'node', getattr(e, 'name', ''))}" for e in events]


def index(events: list[RunEvent], kind: type[RunEvent], node: str) -> int:
    for i, e in enumerate(events):
        if isinstance(e, kind) and getattr(e, "node", getattr(e, "name", None)) == node:
            return i
    raise AssertionError(f"no {kind.__name__} for {node} in {kinds(events)}")


def final(events: list[RunEvent]) -> RunFinished:
    last = events[-1]
    assert isinstance(last, RunFinished), kinds(events)
    return last


def failure(events: list[RunEvent]) -> RunFailed:
    last = events[-1]
    assert isinstance(last, RunFailed), kinds(events)
    return last


def assert_well_formed(events: list[RunEvent], run_id: str = "run-1") -> None:
    """The order guarantees engine/events.py documents, for any run."""
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunFinished | RunFailed)
    assert sum(isinstance(e, RunFinished | RunFailed) for e in events) == 1
    assert {e.run_id for e in events} == {run_id}
    started: set[str] = set()
    ended: set[str] = set()
    for e in events[1:-1]:
        if isinstance(e, NodeStarted):
            assert e.node not in started | ended
            started.add(e.node)
        elif isinstance(e, NodeDelta):
            assert e.node in started
            assert e.node not in ended
        elif isinstance(e, NodeFinished | NodeFailed):
            assert e.node in started or isinstance(e, NodeFailed)
            ended.add(e.node)
        elif isinstance(e, NodeSkipped):
            assert e.node not in started | ended
            ended.add(e.node)


async def test_branch_example_event_stream(run: Run) -> None:
    events = await run("branch", {"question": "is it?"})
    assert_well_formed(events)
    started = events[0]
    assert isinstance(started, RunStarted)
    assert started.app_id == "branch"
    assert kinds(events)[-2:] == ["OutputReady:answer", "RunFinished:"]
    assert final(events).outputs == {"answer": "You asked: is it? (2 words)"}
    # the condition is read from ${classify.output.is_question}: one branch runs, one is skipped
    assert index(events, NodeFinished, "classify") < index(events, NodeStarted, "answer_question")
    assert index(events, NodeFinished, "classify") < index(events, NodeSkipped, "answer_statement")
    assert not any(isinstance(e, NodeStarted) and e.node == "answer_statement" for e in events)


async def test_join_runs_with_none_for_the_skipped_branch(run: Run) -> None:
    events = await run("branch", {"question": "it is."})
    join = events[index(events, NodeFinished, "join")]
    assert isinstance(join, NodeFinished)
    assert join.inputs == {"from_question": None, "from_statement": "You said: it is.", "words": 2}
    assert final(events).outputs == {"answer": "You said: it is. (2 words)"}
    assert isinstance(events[index(events, NodeSkipped, "answer_question")], NodeSkipped)


async def test_skipping_follows_promptflow(run: Run) -> None:
    events = await run("skipping", {"go": False})
    assert_well_formed(events)
    skipped = {e.node for e in events if isinstance(e, NodeSkipped)}
    # gated: its condition is false; only_gated: all its node references are skipped;
    # when_gated: its activate condition reads a skipped node
    assert skipped == {"gated", "only_gated", "when_gated"}
    join = events[index(events, NodeFinished, "join")]
    assert isinstance(join, NodeFinished)
    assert join.inputs == {"a": None, "b": "tag:free"}
    assert final(events).outputs == {"answer": "a=None b=tag:free", "gated": None}

    events = await run("skipping", {"go": True})
    assert not any(isinstance(e, NodeSkipped) for e in events)
    assert final(events).outputs == {"answer": "a=tag:tag:gated b=tag:free", "gated": "tag:gated"}


async def test_parallel_branches_run_concurrently(run: Run) -> None:
    # each branch waits until the other has started: run one after the other, they would deadlock
    ctx = RunContext(
        run_id="run-1", extra={"started": {"left": asyncio.Event(), "right": asyncio.Event()}}
    )
    events = await run("parallel_async", {"question": "q"}, ctx=ctx)
    assert_well_formed(events)
    last_start = max(index(events, NodeStarted, n) for n in ("left", "right"))
    first_finish = min(index(events, NodeFinished, n) for n in ("left", "right"))
    assert last_start < first_finish, kinds(events)
    assert index(events, NodeFinished, "right") < index(events, NodeStarted, "join")
    assert index(events, NodeFinished, "left") < index(events, NodeStarted, "join")
    assert final(events).outputs == {"answer": "left+right"}


async def test_sync_nodes_run_in_parallel_threads(run: Run) -> None:
    # both branches wait at one barrier: it only opens when two threads are in it at once
    ctx = RunContext(run_id="run-1", extra={"barrier": threading.Barrier(2, timeout=10)})
    events = await run("parallel_sync", ctx=ctx)
    assert final(events).outputs == {"answer": "left+right"}
    last_start = max(index(events, NodeStarted, n) for n in ("left", "right"))
    assert last_start < min(index(events, NodeFinished, n) for n in ("left", "right"))


async def test_failing_node_fails_the_run_and_cancels_the_others(services: NodeServices) -> None:
    cancelled: list[str] = []
    ctx = RunContext(
        run_id="run-1", extra={"slow_started": asyncio.Event(), "cancelled": cancelled}
    )
    events: list[RunEvent] = []
    async for ev in execute(flow_named("fail_cancels"), {}, ctx, services):
        events.append(ev)
        if isinstance(ev, RunFailed):
            # by the time the failure is reported, the other running node has been cancelled
            assert cancelled == ["slow"]
            assert node_tasks() == set()
    assert_well_formed(events)
    failed = events[index(events, NodeFailed, "boom")]
    assert isinstance(failed, NodeFailed)
    err = failure(events).error
    assert err == failed.error
    assert (err.code, err.node, err.status) == ("NodeFailed", "boom", 500)
    assert err.message == "ValueError: boom: the value is bad"
    assert kinds(events)[-2:] == ["NodeFailed:boom", "RunFailed:"]
    assert not any(getattr(e, "node", None) == "after" for e in events)
    assert not any(isinstance(e, NodeFinished) and e.node == "slow" for e in events)


async def test_node_timeout(run: Run) -> None:
    events = await run("timeout", {"question": "q"})
    err = failure(events).error
    assert (err.code, err.node, err.status) == ("NodeTimeout", "slow", 504)
    assert err.message == "node 'slow' timed out after 0.2s"
    assert kinds(events)[-2:] == ["NodeFailed:slow", "RunFailed:"]


async def test_server_wide_node_timeout_applies_without_a_node_timeout(run: Run) -> None:
    ctx = RunContext(run_id="run-1", extra={"cancelled": []})
    events = await run("hang", ctx=ctx, node_timeout=0.1)
    assert failure(events).error.code == "NodeTimeout"
    assert ctx.extra["cancelled"] == ["hang"]


async def test_a_timeouterror_raised_by_a_node_is_not_a_node_timeout(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "flow.dag.yaml").write_text(
        "outputs:\n  answer: {reference: '${late.output}'}\n"
        "nodes:\n- {name: late, type: python, source: {type: code, path: late.py}}\n"
    )
    (tmp_path / "late.py").write_text(
        "async def late() -> str:\n    raise TimeoutError('the upstream API took too long')\n"
    )
    err = failure(await run(load_flow(tmp_path))).error
    assert (err.code, err.node) == ("NodeFailed", "late")
    assert err.message == "TimeoutError: the upstream API took too long"


async def test_generator_nodes_stream_node_and_output_deltas(run: Run) -> None:
    events = await run("streams", {"question": "the quick fox"})
    assert_well_formed(events)

    def deltas(kind: type[NodeDelta | OutputDelta], key: str) -> list[str]:
        return [
            e.delta
            for e in events
            if isinstance(e, kind) and (e.node if isinstance(e, NodeDelta) else e.name) == key
        ]

    assert deltas(NodeDelta, "words") == ["the", " quick", " fox"]  # sync generator
    assert deltas(OutputDelta, "answer") == ["the", " quick", " fox"]
    assert deltas(NodeDelta, "shout") == ["THE", " QUICK", " FOX"]  # async generator
    assert deltas(OutputDelta, "shouted") == ["THE", " QUICK", " FOX"]
    # each OutputDelta follows its NodeDelta, and all come before the node finishes
    for i, e in enumerate(events):
        if isinstance(e, OutputDelta):
            prev = events[i - 1]
            assert isinstance(prev, NodeDelta)
            assert prev.delta == e.delta
            node = "words" if e.name == "answer" else "shout"
            assert i < index(events, NodeFinished, node)
    ready = [e for e in events if isinstance(e, OutputReady)]
    assert {(r.name, r.value, r.streamed) for r in ready} == {
        ("answer", "the quick fox", True),
        ("shouted", "THE QUICK FOX", True),
    }
    assert final(events).outputs == {"answer": "the quick fox", "shouted": "THE QUICK FOX"}


async def test_generator_failing_after_deltas(run: Run) -> None:
    events = await run("gen_fail", {"question": "q"})
    assert kinds(events)[1:] == [
        "NodeStarted:words",
        "NodeDelta:words",
        "OutputDelta:answer",
        "NodeFailed:words",
        "RunFailed:",
    ]
    err = failure(events).error
    assert (err.node, err.message) == ("words", "RuntimeError: the stream broke off")


async def test_field_lookups(run: Run) -> None:
    events = await run("lookup", {"question": "where is it"})
    assert final(events).outputs == {
        "first_word": "where",
        "city": "Paris",
        "echoed": "where is it",
        "summary": "is in France",
    }
    # an output that reads an input is ready before any node starts
    assert kinds(events)[1] == "OutputReady:echoed"
    summarize = events[index(events, NodeFinished, "summarize")]
    assert isinstance(summarize, NodeFinished)
    assert summarize.inputs == {"second": "is", "country": "France"}


async def test_lookup_of_a_missing_field_fails_naming_it(run: Run) -> None:
    events = await run("missing_field", {"question": "q"})
    err = failure(events).error
    assert (err.code, err.node) == ("NodeFailed", "use")
    assert err.message == (
        "cannot read its inputs: ${split.output.nope}: the output has no field 'nope'"
    )


async def test_lookup_out_of_range_and_private_attributes(run: Run, tmp_path: Path) -> None:
    (tmp_path / "flow.dag.yaml").write_text(
        "outputs:\n"
        "  third: {reference: '${make.output.items.2}'}\n"
        "  private: {reference: '${make.output.__class__}'}\n"
        "nodes:\n- {name: make, type: python, source: {type: code, path: make.py}}\n"
    )
    (tmp_path / "make.py").write_text("def make() -> dict:\n    return {'items': [1, 2]}\n")
    err = failure(await run(load_flow(tmp_path))).error
    assert err.code == "OutputError"
    assert "${make.output.items.2}: index 2 is out of range (2 items)" in err.message


async def test_run_context_inside_python_nodes(run: Run) -> None:
    ctx = RunContext(
        run_id="run-ctx",
        app_id="ctx-app",
        session_id="s" * 32,
        user_id="u-1",
        user_defined_params={"search": {"top_k": 3}},
        user_defined_tokens={"search": {"token": "t-1"}},
    )
    events = await run("context", ctx=ctx)
    assert_well_formed(events, run_id="run-ctx")
    assert final(events).outputs == {
        "from_call": {"run_id": "run-ctx", "app_id": "ctx-app", "search": {"top_k": 3}},
        "from_param": {"session_id": "s" * 32, "user_id": "u-1", "token": {"token": "t-1"}},
    }
    assert "t-1" not in repr(ctx), "user tokens never show in a repr"
    with pytest.raises(RuntimeError, match="outside a flow run"):
        flowhost.run_context()


async def test_closing_the_stream_cancels_running_nodes(services: NodeServices) -> None:
    cancelled: list[str] = []
    ctx = RunContext(run_id="run-1", extra={"cancelled": cancelled})
    stream = execute(flow_named("hang"), {}, ctx, services)
    seen: list[RunEvent] = []
    async for ev in stream:
        seen.append(ev)
        if isinstance(ev, NodeStarted):
            break
    await stream.aclose()
    assert kinds(seen) == ["RunStarted:", "NodeStarted:hang"]
    assert cancelled == ["hang"]
    assert node_tasks() == set(), "a node task outlived its run"


async def test_cancelling_the_consumer_cancels_the_nodes(services: NodeServices) -> None:
    cancelled: list[str] = []
    ctx = RunContext(run_id="run-1", extra={"cancelled": cancelled})
    started = asyncio.Event()

    async def consume() -> None:
        async for ev in execute(flow_named("hang"), {}, ctx, services):
            if isinstance(ev, NodeStarted):
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == ["hang"]
    assert node_tasks() == set()
