"""Indexing jobs: several at once, never two of one document, reruns, failures, progress."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import anyio
import numpy as np
import pytest

from flowhost.config import Settings
from flowhost.knowledge import KnowledgeService, ingest
from flowhost.knowledge.filters import StoreFilter
from flowhost.knowledge.jobs import JobWorker
from flowhost.knowledge.records import Job, utcnow
from flowhost.knowledge.repository import KnowledgeRepository
from flowhost.knowledge.vectorstore import ChunkRow
from flowhost.store import Store

pytestmark = pytest.mark.anyio

TEXT = "Kettles boil water. " * 200  # several chunks of 200 characters


@contextlib.asynccontextmanager
async def small_batches(kb_settings: Settings, store: Store) -> AsyncIterator[KnowledgeService]:
    """A started service embedding 2 chunks a call, closed afterwards."""
    svc = KnowledgeService(kb_settings.model_copy(update={"embedding_batch_size": 2}), store)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


async def test_the_worker_runs_jobs_at_once_but_one_per_document(
    kb_settings: Settings, store: Store
) -> None:
    svc = KnowledgeService(kb_settings, store)
    await svc.start(worker=False)
    try:
        base = await svc.create_base("b")
        files = []
        for i in range(3):
            doc, _, _ = await svc.add_document(base.pipeline_id, f"d{i}.txt", f"doc {i}".encode())
            files.append(doc.file_id)
        again = await svc.reindex_document(files[0])

        started: asyncio.Queue[Job] = asyncio.Queue()
        release = asyncio.Event()

        async def run(job: Job) -> None:
            await started.put(job)
            await release.wait()
            await svc.repo.end_job(job.job_id, job.file_id, chunks=1)

        worker = JobWorker(svc.repo, run, concurrency=4)
        worker.start()
        try:
            running = [await started.get() for _ in range(3)]
            assert sorted(j.file_id for j in running) == sorted(files)
            assert worker.running == 3  # the reindex of files[0] waits for its first job
            assert (await svc.get_job(again.job_id)).status == "pending"
            release.set()
            rerun = await started.get()
            assert rerun.job_id == again.job_id
            await worker.wait_not_busy(30)
            assert not worker.busy
            assert await svc.repo.pending_count() == 0
        finally:
            await worker.close()
    finally:
        await svc.close()


async def test_close_stops_the_worker_woken_at_the_same_moment(
    kb_settings: Settings, store: Store
) -> None:
    """A job finishing (or one enqueued) as the server shuts down must not keep the worker
    alive: Python 3.11's ``asyncio.wait_for`` returned the wait's result instead of raising
    the cancellation then, and ``close`` (so the server's shutdown) waited forever."""
    svc = KnowledgeService(kb_settings, store)
    await svc.start(worker=False)
    idle = asyncio.Event()

    class Repo(KnowledgeRepository):
        async def claim_next(self, lease: timedelta) -> Job | None:
            job = await super().claim_next(lease)
            if job is None:
                idle.set()
            return job

    async def run(job: Job) -> None:
        raise AssertionError("no job")

    worker = JobWorker(Repo(store), run, poll_s=60)
    worker.start()
    try:
        with anyio.fail_after(10):
            await idle.wait()  # the loop found nothing and waits to be woken
            for _ in range(3):
                await asyncio.sleep(0)  # ... inside its wait
            worker.notify()
            await worker.close()
    finally:
        await svc.close()


async def _chunks(svc: KnowledgeService, space: str, pid: str, file_id: str) -> int:
    return await svc.vectors.count(space, StoreFilter((pid,), (file_id,)))


async def test_a_rerun_replaces_what_its_first_attempt_wrote(
    kb_settings: Settings, store: Store
) -> None:
    first = KnowledgeService(kb_settings, store)
    await first.start(worker=False)
    base = await first.create_base("b")
    doc, job, _ = await first.add_document(base.pipeline_id, "a.txt", TEXT.encode())
    assert job is not None
    # a worker claimed the job, wrote a stray chunk and died
    claimed = await first.repo.claim_next(timedelta(seconds=60))
    assert claimed is not None
    await first.vectors.ensure_space(base.space, base.embedding.dim)
    stray = ChunkRow(
        chunk_id=f"{doc.file_id}_999",
        pipeline_id=base.pipeline_id,
        file_id=doc.file_id,
        doc_name="a.txt",
        title="",
        text="stray",
        position=999,
        labels=(),
        meta={},
        vector=np.ones(base.embedding.dim, dtype=np.float32),
    )
    await first.vectors.add(base.space, [stray])
    await first.close()
    await first.repo.update_job(job.job_id, lease_until=utcnow() - timedelta(1))
    second = KnowledgeService(kb_settings, store)
    await second.start()
    try:
        await second.wait_idle()
        done = await second.get_job(job.job_id)
        assert (done.status, done.attempts) == ("completed", 2)
        indexed = await second.get_document(doc.file_id)
        assert indexed.chunk_count > 1
        count = await _chunks(second, base.space, base.pipeline_id, doc.file_id)
        assert count == indexed.chunk_count
    finally:
        await second.close()


class FailingEmbedder:
    """Wraps an embedder; its ``fail_on``-th call raises."""

    def __init__(self, inner: Any, fail_on: int) -> None:
        self.inner = inner
        self.model = inner.model
        self.connection = inner.connection
        self.parallel = 1
        self.calls = 0
        self.fail_on = fail_on

    async def dim(self) -> int:
        return int(await self.inner.dim())

    async def embed(self, texts: Sequence[str]) -> Any:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("embedding endpoint down")
        return await self.inner.embed(texts)

    async def aclose(self) -> None:
        return None


async def test_a_failure_after_some_writes_removes_the_documents_chunks(
    kb_settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with small_batches(kb_settings, store) as svc:
        base = await svc.create_base("b")
        inner = await svc.embedder_for(base)
        failing = FailingEmbedder(inner, fail_on=4)

        async def embedder_for(_: Any) -> Any:
            return failing

        monkeypatch.setattr(svc, "embedder_for", embedder_for)
        monkeypatch.setattr(ingest, "WRITE_ROWS", 2)  # a write after every batch
        doc, job, _ = await svc.add_document(base.pipeline_id, "a.txt", TEXT.encode())
        assert job is not None
        await svc.wait_idle()
        failed = await svc.get_job(job.job_id)
        assert failed.status == "failed"
        assert failed.error == "RuntimeError: embedding endpoint down"
        assert failing.calls >= 4
        assert (await svc.get_document(doc.file_id)).status == "failed"
        assert await _chunks(svc, base.space, base.pipeline_id, doc.file_id) == 0
        # the base stays usable
        monkeypatch.setattr(svc, "embedder_for", lambda b: _same(inner))
        ok, _, _ = await svc.add_document(base.pipeline_id, "b.txt", b"Kettles whistle.")
        await svc.wait_idle()
        assert (await svc.get_document(ok.file_id)).status == "completed"


async def _same(embedder: Any) -> Any:
    return embedder


async def test_progress_and_total_are_written_while_a_job_runs(
    kb_settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with small_batches(kb_settings, store) as svc:
        monkeypatch.setattr(ingest, "PROGRESS_S", 0.0)  # every batch
        reported: list[dict[str, Any]] = []
        update_job = svc.repo.update_job

        async def record(job_id: str, **values: Any) -> bool:
            reported.append(values)
            return await update_job(job_id, **values)

        monkeypatch.setattr(svc.repo, "update_job", record)
        base = await svc.create_base("b")
        doc, job, _ = await svc.add_document(base.pipeline_id, "a.txt", TEXT.encode())
        assert job is not None
        await svc.wait_idle()
        done = await svc.get_job(job.job_id)
        chunks = (await svc.get_document(doc.file_id)).chunk_count
        assert (done.status, done.progress, done.total) == ("completed", chunks, chunks)
        progress = [r["progress"] for r in reported if "progress" in r]
        assert progress
        assert progress == sorted(progress)
        assert all(0 < p < chunks for p in progress)
        assert {r["total"] for r in reported if "progress" in r} == {chunks}


class GatedEmbedder(FailingEmbedder):
    """Holds its ``fail_on``-th call (instead of failing it) until ``release`` is set
    (``reached`` says it is there)."""

    def __init__(self, inner: Any, gate_on: int) -> None:
        super().__init__(inner, fail_on=gate_on)
        self.reached, self.release = asyncio.Event(), asyncio.Event()

    async def embed(self, texts: Sequence[str]) -> Any:
        self.calls += 1
        if self.calls == self.fail_on:
            self.reached.set()
            await self.release.wait()
        return await self.inner.embed(texts)


@pytest.mark.parametrize("deleted_by", ["this server", "another replica"])
async def test_a_document_deleted_while_indexing_leaves_no_chunk_and_stops_its_job(
    kb_settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch, deleted_by: str
) -> None:
    async with small_batches(kb_settings, store) as svc:
        monkeypatch.setattr(ingest, "PROGRESS_S", 0.0)  # a progress write after every batch
        monkeypatch.setattr(ingest, "WRITE_ROWS", 2)  # and a vector write
        base = await svc.create_base("b")
        gated = GatedEmbedder(await svc.embedder_for(base), gate_on=3)

        async def embedder_for(_: Any) -> Any:
            return gated

        monkeypatch.setattr(svc, "embedder_for", embedder_for)
        doc, job, _ = await svc.add_document(base.pipeline_id, "a.txt", TEXT.encode())
        assert job is not None
        with anyio.fail_after(30):
            await gated.reached.wait()  # two batches embedded and written
        if deleted_by == "this server":
            await svc.delete_document(doc.file_id)
        else:  # what another replica's delete does: its own worker runs no job of it
            await svc.vectors.delete(base.space, base.pipeline_id, doc.file_id)
            await svc.repo.delete_document(doc.file_id)
        gated.release.set()
        await svc.wait_idle()
        # this server's delete stops the job before removing the chunks; a job whose row
        # another replica deleted stops at its next progress write and removes what it wrote
        # after the delete: either way no more embedding, and no chunk left
        assert gated.calls <= 4
        assert await _chunks(svc, base.space, base.pipeline_id, doc.file_id) == 0
        assert await svc.list_documents(base.pipeline_id) == []
