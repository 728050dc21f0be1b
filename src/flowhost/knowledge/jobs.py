"""The in-process indexing worker: claims persisted jobs one at a time and runs them.

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
    ) -> None:
        self._repo = repo
        self._run = run
        self._idle = idle
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._last_sweep = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="flowhost-kb-worker")

    def notify(self) -> None:
        """A job was enqueued: look now instead of at the next poll."""
        self._wake.set()

    @property
    def busy(self) -> bool:
        return self._busy

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                if time.monotonic() - self._last_sweep > SWEEP_S:
                    self._last_sweep = time.monotonic()
                    if await self._repo.requeue_expired():
                        log.info("requeued indexing jobs whose worker stopped")
                job = await self._repo.claim_next(LEASE)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the knowledge job worker cannot read its jobs")
                job = None
            if job is None:
                if self._idle is not None:
                    self._busy = True
                    try:
                        await self._idle()
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("refreshing the knowledge indexes failed")
                    finally:
                        self._busy = False
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
                continue
            await self._execute(job)

    async def _execute(self, job: Job) -> None:
        self._busy = True
        heartbeat = asyncio.create_task(self._heartbeat(job.job_id))
        try:
            await self._run(job)
        except asyncio.CancelledError:
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
            self._busy = False

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(LEASE.total_seconds() / 3)
            with contextlib.suppress(Exception):
                await self._repo.update_job(job_id, lease_until=utcnow() + LEASE)
