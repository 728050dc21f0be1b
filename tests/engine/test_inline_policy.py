"""Sync python nodes: quick functions move onto the event loop, blocking ones stay in threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from flowhost.engine.context import RunContext
from flowhost.nodes.base import NodeRuntime, NodeServices
from flowhost.nodes.python import InlinePolicy, Measured, PythonNode

pytestmark = pytest.mark.anyio
TRIALS = InlinePolicy.TRIAL_RUNS


async def _no_emit(_: str) -> None:
    return None


def _runtime() -> NodeRuntime:
    services = NodeServices.__new__(NodeServices)  # the python node never touches them
    return NodeRuntime(node="n", ctx=RunContext(run_id="r"), services=services, emit=_no_emit)


class Recorder:
    """A node function that records the thread it ran on; ``block`` makes it sleep."""

    def __init__(self) -> None:
        self.threads: list[int] = []
        self.block = 0.0

    def __call__(self, x: int) -> int:
        self.threads.append(threading.get_ident())
        if self.block:
            time.sleep(self.block)
        return x + 1


def _node(fn: Any) -> PythonNode:
    return PythonNode(fn, node="n", input_names={"x"}, file="n.py")


async def test_a_quick_function_moves_onto_the_loop_after_its_trial_runs() -> None:
    fn, loop_thread = Recorder(), threading.get_ident()
    node, rt = _node(fn), _runtime()
    for i in range(TRIALS + 5):
        assert await node.run({"x": i}, rt) == i + 1
    assert all(t != loop_thread for t in fn.threads[:TRIALS])
    assert fn.threads[TRIALS:] == [loop_thread] * 5
    assert node.policy.inline


async def test_a_blocking_function_stays_in_the_thread_pool() -> None:
    fn, loop_thread = Recorder(), threading.get_ident()
    fn.block = 0.001  # sleeps: a voluntary switch, longer than QUICK_S
    node, rt = _node(fn), _runtime()
    for i in range(TRIALS + 5):
        assert await node.run({"x": i}, rt) == i + 1
    assert loop_thread not in fn.threads
    assert not node.policy.inline
    assert not node.policy.enabled


async def test_an_inline_function_that_blocks_goes_back_to_the_thread_pool() -> None:
    fn, loop_thread = Recorder(), threading.get_ident()
    node, rt = _node(fn), _runtime()
    for i in range(TRIALS):
        await node.run({"x": i}, rt)
    assert node.policy.inline
    fn.block = InlinePolicy.SLOW_S * 2
    await node.run({"x": 0}, rt)  # blocks the loop once ...
    assert fn.threads[-1] == loop_thread
    for _ in range(InlinePolicy.STRIKES):  # ... then its trial runs are slow: strikes
        await node.run({"x": 0}, rt)
        assert fn.threads[-1] != loop_thread
    assert not node.policy.enabled
    fn.block = 0.0
    for _ in range(TRIALS + 1):  # quick again, but it has shown it can block
        await node.run({"x": 0}, rt)
    assert loop_thread not in fn.threads[-TRIALS:]


async def test_a_preempted_quick_function_comes_back_after_its_trial_runs() -> None:
    fn, loop_thread = Recorder(), threading.get_ident()
    node, rt = _node(fn), _runtime()
    for i in range(TRIALS):
        await node.run({"x": i}, rt)
    node.policy.record_inline(InlinePolicy.SLOW_S * 5, "n")  # as if the OS had preempted it
    assert not node.policy.inline
    for _ in range(TRIALS + 1):
        await node.run({"x": 0}, rt)
    assert fn.threads[-1] == loop_thread
    assert node.policy.enabled


async def test_errors_of_inline_runs_reach_the_engine() -> None:
    calls = 0

    def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls > TRIALS:
            raise ValueError(f"bad {x}")
        return x

    node, rt = _node(flaky), _runtime()
    for i in range(TRIALS):
        await node.run({"x": i}, rt)
    with pytest.raises(ValueError, match="bad 7"):
        await node.run({"x": 7}, rt)
    assert node.policy.inline  # a quick failure is not a slow run


def test_cpu_bound_and_waiting_runs_are_slow_preempted_ones_are_not() -> None:
    def spin(x: int) -> int:
        end = time.thread_time() + 0.003
        while time.thread_time() < end:
            pass
        return x

    def wait(x: int) -> int:
        time.sleep(0.003)
        return x

    assert Measured(spin, {"x": 1}).slower_than(0.002)
    assert Measured(wait, {"x": 1}).slower_than(0.002)
    quick = Measured(lambda x: x, {"x": 1})
    quick.wall = 0.5  # as if the OS had preempted it for half a second
    quick.voluntary = 0
    assert not quick.slower_than(0.002)


def test_slow_trial_runs_are_strikes_three_in_a_window_keep_it_in_threads() -> None:
    policy = InlinePolicy()
    quick = Measured(lambda x: x, {"x": 1})
    slow = Measured(lambda x: x, {"x": 1})
    slow.cpu = 0.003
    policy.record_trial(slow, "n")
    for _ in range(InlinePolicy.WINDOW):  # a new window forgets the strike
        policy.record_trial(quick, "n")
    assert policy.inline
    policy.record_inline(1.0, "n")
    policy.record_trial(slow, "n")
    policy.record_trial(slow, "n")
    assert policy.enabled
    policy.record_trial(slow, "n")
    assert not policy.enabled
    assert not policy.inline
