"""``PreparedRun.outcome()`` (a response sent whole) and ``events()`` on an inline run: the
flow's last event, and every sink sees the events a run on node tasks gives it."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_inline_runs import normal, set_inline

from flowhost.apps import AppRegistry
from flowhost.config import Settings
from flowhost.engine import executor
from flowhost.engine.context import RunContext
from flowhost.engine.events import RunEvent, RunFailed, RunFinished
from flowhost.service import PreparedRun, RunRequest, RunService

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
APPS = {
    "echo": ROOT / "examples" / "flows" / "echo",
    "branch": ROOT / "examples" / "flows" / "branch",
    "fail": ROOT / "tests" / "flows_fixtures" / "served" / "fail",
}
SLOW_FLOW = """
inputs: {}
outputs:
  answer: {type: string, reference: "${wait.output}"}
nodes:
- name: wait
  type: python
  source: {type: code, path: wait.py}
"""
SLOW = """
import asyncio

async def wait() -> str:
    await asyncio.sleep(60)
    return "never"
"""


class Recorder:
    """A sink: every event each run showed it, and what it was closed with."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self.closed: list[RunEvent | None] = []
        self.trace_id = ""

    def open(self, prepared: PreparedRun) -> Recorder:
        return self

    def on_event(self, event: RunEvent) -> None:
        self.events.append(event)

    def close(self, final: RunEvent | None) -> None:
        self.closed.append(final)


@pytest.fixture
def service(tmp_path: Path) -> tuple[RunService, Recorder]:
    folder = tmp_path / "apps"
    for name, src in APPS.items():
        shutil.copytree(src, folder / name)
    (folder / "slow").mkdir()
    (folder / "slow" / "flow.dag.yaml").write_text(SLOW_FLOW)
    (folder / "slow" / "wait.py").write_text(SLOW)
    settings = Settings(flows=folder, data_dir=tmp_path / "data", history=False)
    recorder = Recorder()
    return RunService(AppRegistry.load(folder), settings, sinks=[recorder]), recorder


def plain(events: list[Any]) -> list[RunEvent]:
    """The events without their clock readings and run ids (each run has its own)."""
    return [dataclasses.replace(e, run_id="") for e in normal(events)]


async def prepare(svc: RunService, app: str, inputs: dict[str, Any]) -> PreparedRun:
    return await svc.prepare(RunRequest(app_id=app, inputs=inputs, protocol="test"))


@pytest.mark.parametrize(
    ("app", "inputs", "finished"),
    [
        ("echo", {"question": "hi"}, True),
        ("branch", {"question": "is it?"}, True),
        ("fail", {"question": "q"}, False),
    ],
)
async def test_outcome_is_the_last_event_and_sinks_see_what_a_task_run_shows_them(
    service: tuple[RunService, Recorder],
    monkeypatch: pytest.MonkeyPatch,
    app: str,
    inputs: dict[str, Any],
    finished: bool,
) -> None:
    svc, recorder = service
    flow, services, ctx = svc.apps.get(app).flow, svc.apps.get(app).services, RunContext("r")
    set_inline(flow, True)
    assert executor.execute_inline(flow, inputs, ctx, services) is not None
    inline = await (await prepare(svc, app, inputs)).outcome()
    inline_seen, recorder.events = recorder.events, []
    with monkeypatch.context() as m:
        m.setattr(executor, "_inline_nodes", lambda flow: None)
        assert executor.execute_inline(flow, inputs, ctx, services) is None
        tasks = await (await prepare(svc, app, inputs)).outcome()
    assert isinstance(inline, RunFinished if finished else RunFailed)
    assert plain([inline]) == plain([tasks])
    assert plain(inline_seen) == plain(recorder.events)
    assert inline_seen[-1] is inline
    assert recorder.closed == [inline, tasks]  # each run's sinks closed once, with its end


async def test_an_inline_run_is_over_before_its_first_event_is_read(
    service: tuple[RunService, Recorder],
) -> None:
    svc, recorder = service
    set_inline(svc.apps.get("echo").flow, True)
    events = (await prepare(svc, "echo", {"question": "hi"})).events()
    first = await anext(events)
    assert first.kind == "RunStarted"
    assert [e.kind for e in recorder.events][-1] == "RunFinished"  # the sinks saw it all
    assert len(recorder.closed) == 1
    assert isinstance(recorder.closed[0], RunFinished)
    rest = [e async for e in events]
    assert [first, *rest] == recorder.events


async def test_cancelling_outcome_cancels_the_run_and_closes_its_sinks(
    service: tuple[RunService, Recorder],
) -> None:
    svc, recorder = service
    prepared = await prepare(svc, "slow", {})
    task = asyncio.ensure_future(prepared.outcome())
    while not any(e.kind == "NodeStarted" for e in recorder.events):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorder.closed == [None]  # canceled: no last event
    assert all(t.get_name() != "node:wait" for t in asyncio.all_tasks())
