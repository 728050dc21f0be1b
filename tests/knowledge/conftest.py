"""Fixtures for the knowledge tests: a store, a started KnowledgeService, shipped documents."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from flowhost.config import Settings
from flowhost.knowledge import KnowledgeService
from flowhost.store import Store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def kb_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        flows=tmp_path / "no-flows",
        kb_bootstrap=False,
        kb_chunk_size=200,
        kb_chunk_overlap=30,
        embedding_processes=0,  # threads: no process start per test (test_embed_processes)
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    st = await Store.open(None, data_dir=tmp_path / "data", service="kbtest")
    yield st
    await st.close()


@pytest.fixture
async def service(kb_settings: Settings, store: Store) -> AsyncIterator[KnowledgeService]:
    svc = KnowledgeService(kb_settings, store)
    await svc.start()
    yield svc
    await svc.close()


Started = Callable[..., AbstractAsyncContextManager[KnowledgeService]]


@pytest.fixture
def started(kb_settings: Settings, store: Store) -> Started:
    """``async with started(worker=False) as svc``: one more service on the test's store (as
    another process, or a restart, would open), closed on leaving; keyword arguments other
    than ``worker`` change its settings (``started(parse_processes=1)``)."""

    @contextlib.asynccontextmanager
    async def start(*, worker: bool = True, **settings: Any) -> AsyncIterator[KnowledgeService]:
        svc = KnowledgeService(kb_settings.model_copy(update=settings), store)
        await svc.start(worker=worker)
        try:
            yield svc
        finally:
            await svc.close()

    return start
