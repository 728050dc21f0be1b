"""The in-process indexing worker: claims persisted jobs and runs up to ``concurrency`` at once.

Running several jobs keeps the embedder busy while other jobs read, parse and write. Two jobs
of the same document never overlap: a job is claimed only while no other job of its file is
running (``KnowledgeRepository.claim_next``), in this process or, through the database, in
another.

Jobs live in SQL (``flowhost_kb_job_<service>``), so nothing is lost on a restart: a job that
was running when its process died keeps a lease that expires after ``LEASE``; the next sweep
(at start, then every ``SWEEP_S``) puts it back to pending and a worker runs it again from the
start (ingestion deletes the file's chunks first, so a rerun is idempotent). A job canceled by a
graceful shutdown goes back to pending at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from flowhost.knowledge.records import Job, utcnow
from flowhost.knowledge.repository import KnowledgeRepository

__all__ = ["LEASE", "JobWorker"]

log = logging.getLogger("flowhost.knowledge")

LEASE = timedelta(seconds=60)
POLL_S = 2.0
SWEEP_S = 30.0


class JobWorker:
    def __init__(
        self,
        repo: KnowledgeRepository,
        run: Callable[[Job], Awaitable[None]],
        *,
        idle: Callable[[], Awaitable[None]] | None = None,
        poll_s: float = POLL_S,
        concurrency: int = 1,
    ) -> None:
        self._repo = repo
        self._run = run
        self._idle = idle
        self._poll_s = poll_s
        self._concurrency = max(1, concurrency)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._jobs: dict[asyncio.Task[None], Job] = {}  # the running jobs
        self._dropped: set[asyncio.Task[None]] = set()  # stopped for good (see stop)
        self._maintaining = False
        self._not_busy = asyncio.Event()
        self._not_busy.set()
        self._last_sweep = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="flowhost-kb-worker")

    def notify(self) -> None:
        """A job was enqueued: look now instead of at the next poll."""
        self._wake.set()

    @property
    def busy(self) -> bool:
        """A job is running or the indexes are being refreshed."""
        return bool(self._running) or self._maintaining

    @property
    def running(self) -> int:
        return len(self._running)

    async def wait_not_busy(self, limit_s: float) -> None:
        """Return once no job runs and the indexes are not being refreshed, or after
        ``limit_s`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                await self._not_busy.wait()

    def _update_busy(self) -> None:
        if self.busy:
            self._not_busy.clear()
        else:
            self._not_busy.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the caller is cancelled too: not only the loop

    async def _loop(self) -> None:
        try:
            while True:
                self._wake.clear()
                job = await self._claim() if len(self._running) < self._concurrency else None
                if job is not None:
                    task = asyncio.create_task(self._execute(job), name=f"kb-job-{job.job_id}")
                    self._running.add(task)
                    self._jobs[task] = job
                    self._update_busy()
                    task.add_done_callback(self._finished)
                    continue
                if not self._running and self._idle is not None:
                    await self._maintain()
                    if self._wake.is_set():
                        continue
                # Woken by a new job, a finished one, or the poll (other processes' jobs).
                # Not asyncio.wait_for: on 3.11 it swallows a cancellation that comes as the
                # wait ends, and close() then waited for this loop forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._wake.wait()
        finally:
            running, self._running = list(self._running), set()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self._update_busy()

    async def stop(self, *, pipeline_id: str, file_id: str | None = None) -> None:
        """Cancel this process's running jobs of a base, or of one of its documents (being
        deleted), and wait for them to end: a document being read has its process stopped."""
        tasks = [
            task
            for task, job in self._jobs.items()
            if job.pipeline_id == pipeline_id and file_id in (None, job.file_id)
        ]
        self._dropped.update(tasks)  # not put back in the queue, as a shutdown's are
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._jobs.pop(task, None)
        self._dropped.discard(task)
        self._update_busy()
        self._wake.set()

    async def _claim(self) -> Job | None:
        try:
            if time.monotonic() - self._last_sweep > SWEEP_S:
                self._last_sweep = time.monotonic()
                if await self._repo.requeue_expired():
                    log.info("requeued indexing jobs whose worker stopped")
            return await self._repo.claim_next(LEASE)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the knowledge job worker cannot read its jobs")
            return None

    async def _maintain(self) -> None:
        assert self._idle is not None
        self._maintaining = True
        self._update_busy()
        try:
            await self._idle()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("refreshing the knowledge indexes failed")
        finally:
            self._maintaining = False
            self._update_busy()

    async def _execute(self, job: Job) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(job.job_id))
        try:
            await self._run(job)
        except asyncio.CancelledError:
            if asyncio.current_task() not in self._dropped:  # resumed by a later start
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self._repo.update_job(job.job_id, status="pending", lease_until=None)
                    )
            raise
        except Exception:  # run() records failures itself; this is a bug or a lost database
            log.exception("indexing job %s crashed", job.job_id)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(LEASE.total_seconds() / 3)
            with contextlib.suppress(Exception):
                await self._repo.update_job(job_id, lease_until=utcnow() + LEASE)
