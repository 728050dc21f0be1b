"""Knowledge job claims on every SQL backend: one running job per document at a time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from flowhost.knowledge.repository import KnowledgeRepository

pytestmark = pytest.mark.anyio

LEASE = timedelta(seconds=60)


@pytest.fixture
async def repo(open_store: Any, base_values: Callable[..., dict[str, Any]]) -> KnowledgeRepository:
    """The knowledge catalogue of a new store, holding base ``kb1``."""
    repo = KnowledgeRepository(await open_store())
    await repo.create_base(base_values("kb1"))
    return repo


async def _add(repo: KnowledgeRepository, file_id: str) -> str:
    _, job = await repo.add_document(
        {
            "file_id": file_id,
            "pipeline_id": "kb1",
            "name": f"{file_id}.txt",
            "file_type": "txt",
            "size": 3,
            "sha256": file_id,
            "tags": [],
            "doc_metadata": {},
        },
        b"abc",
        f"job_{file_id}",
    )
    return job.job_id


async def test_a_file_with_a_running_job_waits_and_others_go_ahead(
    repo: KnowledgeRepository,
) -> None:
    await _add(repo, "file_a")
    reindex = await repo.create_job("job_a2", "kb1", "file_a")
    await _add(repo, "file_b")

    first = await repo.claim_next(LEASE)
    assert first is not None
    assert (first.file_id, first.status, first.attempts) == ("file_a", "running", 1)
    assert (await repo.get_document("file_a")).status == "running"
    second = await repo.claim_next(LEASE)
    assert second is not None
    assert second.file_id == "file_b"  # the reindex of file_a waits for its first job
    assert await repo.claim_next(LEASE) is None

    await repo.end_job(first.job_id, "file_a", chunks=3)
    third = await repo.claim_next(LEASE)
    assert third is not None
    assert third.job_id == reindex.job_id


async def test_job_inputs_tell_whether_the_file_may_have_chunks(repo: KnowledgeRepository) -> None:
    await _add(repo, "file_a")
    job = await repo.claim_next(LEASE)
    assert job is not None
    doc, base, content, may_have_chunks = await repo.job_inputs(job)
    assert (doc.file_id, base.pipeline_id, content) == ("file_a", "kb1", b"abc")
    assert not may_have_chunks  # the first attempt of the upload's own job
    # a rerun (the first attempt's worker died) starts from whatever it wrote
    await repo.update_job(job.job_id, status="pending", lease_until=None)
    rerun = await repo.claim_next(LEASE)
    assert rerun is not None
    assert rerun.attempts == 2
    assert (await repo.job_inputs(rerun))[3]
    await repo.end_job(rerun.job_id, "file_a", chunks=1)
    # so does a reindex
    await repo.create_job("job_a2", "kb1", "file_a")
    reindex = await repo.claim_next(LEASE)
    assert reindex is not None
    assert reindex.attempts == 1
    assert (await repo.job_inputs(reindex))[3]


async def test_end_job_records_the_job_and_its_document(repo: KnowledgeRepository) -> None:
    await _add(repo, "file_a")
    await _add(repo, "file_b")
    done = await repo.claim_next(LEASE)
    failed = await repo.claim_next(LEASE)
    assert done is not None
    assert failed is not None
    await repo.end_job(done.job_id, done.file_id, chunks=7)
    await repo.end_job(failed.job_id, failed.file_id, chunks=0, error="bad file")
    job = await repo.get_job(done.job_id)
    assert (job.status, job.progress, job.total, job.error) == ("completed", 7, 7, None)
    doc = await repo.get_document(done.file_id)
    assert (doc.status, doc.chunk_count) == ("completed", 7)
    job = await repo.get_job(failed.job_id)
    assert (job.status, job.error) == ("failed", "bad file")
    doc = await repo.get_document(failed.file_id)
    assert (doc.status, doc.chunk_count, doc.error) == ("failed", 0, "bad file")
    assert await repo.pending_count() == 0
