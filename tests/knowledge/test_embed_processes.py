"""The packaged model's embedding processes (LocalEmbedder.embed_documents)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import numpy as np
import pytest

from flowhost.config import Settings
from flowhost.knowledge import KnowledgeService, embedding
from flowhost.knowledge.embedding import LocalEmbedder
from flowhost.knowledge.processes import IDLE_S, cpus
from flowhost.store import Store

pytestmark = pytest.mark.anyio

TEXTS = [f"第{i}段: the kettle number {i} boils water. 水壶{i}号。" for i in range(40)]


async def _pids(embedder: LocalEmbedder) -> set[int]:
    """The embedding processes' pids (asked of them; none when they are stopped)."""
    pool = embedder._pool
    if pool is None or not pool.running:
        return set()
    return set(await asyncio.gather(*(pool.call(_slow_pid) for _ in range(4 * pool.size))))


def _slow_pid() -> int:
    import time

    time.sleep(0.05)  # long enough that every process takes one of the calls
    return os.getpid()


def _fail_to_start() -> None:
    raise RuntimeError("this process cannot embed")


async def test_processes_embed_as_the_model_does_in_this_process() -> None:
    async with contextlib.aclosing(LocalEmbedder(processes=2)) as embedder:
        batches = [TEXTS[i : i + 7] for i in range(0, len(TEXTS), 7)]
        results = await asyncio.gather(*(embedder.embed_documents(b) for b in batches))
        pids = await _pids(embedder)
        assert len(pids) == 2
        assert os.getpid() not in pids
        got = np.concatenate(results)
        expected = embedder.embed_sync(TEXTS)
        assert got.shape == expected.shape == (len(TEXTS), 512)
        assert np.allclose(got, expected, atol=1e-5)
        assert (await embedder.embed_documents([])).shape == (0, 512)
    assert await _pids(embedder) == set()


async def test_a_cancelled_call_leaves_the_next_answers_right() -> None:
    """... in the same process: an embedding process outlives a cancelled call (its model
    stays loaded)."""
    async with contextlib.aclosing(LocalEmbedder(processes=1)) as embedder:
        await embedder.embed_documents(TEXTS[:1])  # the process runs
        (pid,) = await _pids(embedder)
        first = asyncio.ensure_future(embedder.embed_documents(TEXTS[:20]))
        second = asyncio.ensure_future(embedder.embed_documents(TEXTS[20:25]))
        await asyncio.sleep(0)  # one turn of the loop: both calls are submitted
        first.cancel()
        got = await second
        assert np.allclose(got, embedder.embed_sync(TEXTS[20:25]), atol=1e-5)
        again = await embedder.embed_documents(TEXTS[:3])
        assert np.allclose(again, embedder.embed_sync(TEXTS[:3]), atol=1e-5)
        assert await _pids(embedder) == {pid}


async def test_a_killed_process_is_replaced() -> None:
    async with contextlib.aclosing(LocalEmbedder(processes=1)) as embedder:
        await embedder.embed_documents(TEXTS[:2])
        (pid,) = await _pids(embedder)
        os.kill(pid, signal.SIGKILL)
        got = await embedder.embed_documents(TEXTS[:4])
        assert np.allclose(got, embedder.embed_sync(TEXTS[:4]), atol=1e-5)
        assert pid not in await _pids(embedder)


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


async def test_without_processes_documents_embed_in_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Processes that cannot start (here: their start-up fails) leave the documents to
    threads of this process, from then on."""
    monkeypatch.setattr(embedding, "_load_model", _fail_to_start)
    async with contextlib.aclosing(LocalEmbedder(processes=2)) as embedder:
        got = await embedder.embed_documents(TEXTS[:5])
        assert np.allclose(got, embedder.embed_sync(TEXTS[:5]), atol=1e-5)
        assert embedder._pool is None  # threads from now on


async def test_idle_processes_stop_and_start_again() -> None:
    async with contextlib.aclosing(LocalEmbedder(processes=1)) as embedder:
        await embedder.embed_documents(TEXTS[:2])
        pool = embedder._pool
        assert pool is not None
        (first,) = await _pids(embedder)
        pool._last_call -= IDLE_S + 1  # as if a minute went by without calls
        pool._check_idle()
        assert not pool.running
        got = await embedder.embed_documents(TEXTS[:3])  # starts one again
        assert np.allclose(got, embedder.embed_sync(TEXTS[:3]), atol=1e-5)
        assert (await _pids(embedder)) - {first}


def test_blas_threads_follow_the_embedder_never_the_models_default() -> None:
    """The model limits numpy's BLAS around each call; its own default (4 threads) made it 20
    times slower on 2 CPUs. Queries use every CPU; documents in this process run one thread
    each (several at once); so do the embedding processes."""
    for embedder, want in (
        (LocalEmbedder(), cpus()),
        (LocalEmbedder(processes=0), 1),
        (LocalEmbedder(threads=3), 3),
    ):
        embedder.embed_sync(TEXTS[:1])
        assert embedder._use.threads == want
    assert embedding._shared_model(1) is embedding._shared_model(1)
