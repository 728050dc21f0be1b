"""The packaged model's embedding processes (LocalEmbedder.embed_documents)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import numpy as np
import pytest

from flowhost.config import Settings
from flowhost.knowledge import KnowledgeService, embedding
from flowhost.knowledge.embedding import POOL_IDLE_S, LocalEmbedder
from flowhost.store import Store

pytestmark = pytest.mark.anyio

TEXTS = [f"第{i}段: the kettle number {i} boils water. 水壶{i}号。" for i in range(40)]


def _pids(embedder: LocalEmbedder) -> list[int]:
    assert embedder._pool is not None
    return [p.proc.pid for p in embedder._pool._procs if p.alive]


async def test_processes_embed_as_the_model_does_in_this_process() -> None:
    embedder = LocalEmbedder(processes=2)
    try:
        batches = [TEXTS[i : i + 7] for i in range(0, len(TEXTS), 7)]
        results = await asyncio.gather(*(embedder.embed_documents(b) for b in batches))
        assert len(_pids(embedder)) == 2
        got = np.concatenate(results)
        expected = embedder.embed_sync(TEXTS)
        assert got.shape == expected.shape == (len(TEXTS), 512)
        assert np.allclose(got, expected, atol=1e-5)
        assert (await embedder.embed_documents([])).shape == (0, 512)
    finally:
        await embedder.aclose()
    assert _pids(embedder) == []


async def test_a_cancelled_call_leaves_the_next_answers_in_order() -> None:
    embedder = LocalEmbedder(processes=1)
    try:
        await embedder.embed_documents(TEXTS[:1])  # the process runs
        assert embedder._pool is not None
        (proc,) = embedder._pool._procs
        first = asyncio.ensure_future(embedder.embed_documents(TEXTS[:20]))
        second = asyncio.ensure_future(embedder.embed_documents(TEXTS[20:25]))
        await asyncio.sleep(0)  # one turn of the loop: both tasks write their request
        assert len(proc.pending) == 2
        first.cancel()
        got = await second
        assert np.allclose(got, embedder.embed_sync(TEXTS[20:25]), atol=1e-5)
        again = await embedder.embed_documents(TEXTS[:3])
        assert np.allclose(again, embedder.embed_sync(TEXTS[:3]), atol=1e-5)
    finally:
        await embedder.aclose()


async def test_a_killed_process_is_replaced() -> None:
    embedder = LocalEmbedder(processes=1)
    try:
        await embedder.embed_documents(TEXTS[:2])
        (pid,) = _pids(embedder)
        os.kill(pid, signal.SIGKILL)
        got = await embedder.embed_documents(TEXTS[:4])
        assert np.allclose(got, embedder.embed_sync(TEXTS[:4]), atol=1e-5)
        assert _pids(embedder) != [pid]
    finally:
        await embedder.aclose()


async def test_a_service_indexes_through_the_processes(kb_settings: Settings, store: Store) -> None:
    settings = kb_settings.model_copy(update={"embedding_processes": 2})
    svc = KnowledgeService(settings, store)
    await svc.start()
    try:
        base = await svc.create_base("b")
        docs = [
            (await svc.add_document(base.pipeline_id, f"d{i}.txt", text.encode()))[0]
            for i, text in enumerate(TEXTS[:6])
        ]
        await svc.wait_idle()
        for doc in docs:
            assert (await svc.get_document(doc.file_id)).status == "completed"
        hits = await svc.retrieve(
            TEXTS[3], pipeline_ids=[base.pipeline_id], options=None, top_k=1, score_threshold=None
        )
        assert hits[0].file_id == docs[3].file_id
    finally:
        await svc.close()


@pytest.mark.parametrize("executable", ["/nonexistent/python", "/bin/true"])
async def test_without_processes_documents_embed_in_threads(
    executable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", executable)  # cannot start / exits at once
    embedder = LocalEmbedder(processes=2)
    try:
        got = await embedder.embed_documents(TEXTS[:5])
        assert np.allclose(got, embedder.embed_sync(TEXTS[:5]), atol=1e-5)
        assert embedder._pool is None  # threads from now on
    finally:
        await embedder.aclose()


async def test_idle_processes_stop_and_start_again() -> None:
    embedder = LocalEmbedder(processes=1)
    try:
        await embedder.embed_documents(TEXTS[:2])
        pool = embedder._pool
        assert pool is not None
        (first,) = _pids(embedder)
        pool._last_call -= POOL_IDLE_S + 1  # as if a minute went by without calls
        pool._check_idle()
        await asyncio.gather(*embedding._background)
        assert _pids(embedder) == []
        got = await embedder.embed_documents(TEXTS[:3])  # starts one again
        assert np.allclose(got, embedder.embed_sync(TEXTS[:3]), atol=1e-5)
        assert _pids(embedder) not in ([], [first])
    finally:
        await embedder.aclose()
