"""Tracing fixtures: ``traced(...)`` builds a RunService with the tracing sink (see
``tracing_support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tracing_support import API_KEY, SERVER_TOKEN, MakeTraced, Traced, apps_folder

from flowhost.apps import AppRegistry
from flowhost.config import Settings
from flowhost.service import RunService
from flowhost.store import Store
from flowhost.testing import FakeLLM
from flowhost.tracing import Tracing, known_secrets


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def traced(llm: FakeLLM, tmp_path: Path) -> AsyncIterator[MakeTraced]:
    """``await traced(store=False, **settings)``: a traced RunService (closed after the test)."""
    made: list[Traced] = []
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_MODEL": "fake-chat",
        "FLOWHOST_LLM_MAX_RETRIES": "0",
    }

    async def make(*, store: bool = False, **overrides: Any) -> Traced:
        folder = apps_folder(tmp_path)
        settings = Settings(
            flows=folder, data_dir=tmp_path / "data", token=SERVER_TOKEN, history=False, **overrides
        )
        apps = AppRegistry.load(folder, env=env)
        exporter = InMemorySpanExporter()
        tracing = Tracing(
            settings,
            service_name="tracing_test",
            secrets=known_secrets(settings, apps),
            env={},
            exporters=[exporter],
        )
        opened = await Store.open(None, data_dir=settings.data_dir, service="tt") if store else None
        await tracing.start(opened)
        t = Traced(RunService(apps, settings, sinks=[tracing.sink]), tracing, exporter, opened)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.tracing.aclose()
        if t.store is not None:
            await t.store.close()
        await next(iter(t.service.apps.apps.values())).services.llm.aclose()
