"""Engine fixtures: flows from tests/flows_fixtures, node services wired to the fake LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowhost.engine.context import RunContext
from flowhost.engine.events import RunEvent
from flowhost.engine.executor import execute
from flowhost.flows.inputs import coerce_inputs
from flowhost.flows.loader import Flow, load_flow
from flowhost.llm.client import LLMClient
from flowhost.llm.connections import Connection, ConnectionRegistry
from flowhost.nodes.base import NodeServices
from flowhost.testing import FakeLLM

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "flows_fixtures"
EXAMPLES = ROOT / "examples" / "flows"

Run = Callable[..., Awaitable[list[RunEvent]]]


def flow_named(name: str) -> Flow:
    """A flow from tests/flows_fixtures/{engine,served} or examples/flows."""
    for base in (FIXTURES / "engine", FIXTURES / "served", EXAMPLES):
        if (base / name).is_dir():
            return load_flow(base / name)
    raise LookupError(name)


@pytest.fixture
def load_flow_named() -> Callable[[str], Flow]:
    """``flow_named`` for test modules (a conftest is not importable from them)."""
    return flow_named


@pytest.fixture
async def llm_client() -> AsyncIterator[LLMClient]:
    client = LLMClient()
    yield client
    await client.aclose()


def fake_connection(fake: FakeLLM, name: str = "fake") -> Connection:
    return Connection(name, fake.base_url, "sk-test", model="fake-chat", max_retries=0)


@pytest.fixture
def services(llm: FakeLLM, llm_client: LLMClient) -> NodeServices:
    """Node services whose only connection, ``fake``, is the fake LLM (retries off)."""
    return NodeServices(ConnectionRegistry({"fake": fake_connection(llm)}, "fake"), llm_client)


@pytest.fixture
def run(services: NodeServices) -> Run:
    """``await run(flow_or_name, inputs, ctx=..., services_=...)``: every event of one run.

    The inputs are checked and converted first, as the run service does.
    """

    async def go(
        flow: Flow | str,
        inputs: dict[str, Any] | None = None,
        *,
        ctx: RunContext | None = None,
        services_: NodeServices | None = None,
        node_timeout: float = 600.0,
    ) -> list[RunEvent]:
        if isinstance(flow, str):
            flow = flow_named(flow)
        events: list[RunEvent] = []
        with anyio.fail_after(20):  # a deadlocked run fails the test instead of hanging it
            async for ev in execute(
                flow,
                coerce_inputs(flow.spec.inputs, inputs or {}),  # as the run service does
                ctx or RunContext(run_id="run-1"),
                services_ or services,
                node_timeout=node_timeout,
            ):
                events.append(ev)
        return events

    return go
