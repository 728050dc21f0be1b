"""Worker processes for the CPU-bound parts of indexing: parsing documents, and embedding them
with the packaged model.

In threads of the server, that work is mostly pure Python (pypdf, python-docx, openpyxl, the
chunker, the model's tokenizer) and contends with the event loop for the GIL: every request of
the server slows while a document is read, and a thread cannot be stopped, so a parse stuck
inside one page outlives any limit. ``Processes`` is a ``spawn`` ``ProcessPoolExecutor`` that

- starts with the first call (all ``size`` processes at once, each running ``initializer``)
  and stops after ``IDLE_S`` without calls;
- ends with the server when the server is killed (nothing else would tell a process), and is
  what the kernel's out-of-memory killer takes first;
- survives a process that dies: the pool breaks, the call is retried once on a new pool, and
  ``ProcessesStopped`` is raised when that one breaks too (``ProcessesUnavailable`` when the
  system refuses to start one);
- with a ``time_limit``, runs at most ``size`` calls at once (a call never waits in the pool,
  so its time is its own) and kills the processes of a call that outlives it
  (``CallTimedOut``; calls of other documents in the same pool are retried on a new one).

``spawn``, not ``fork``: a fork of a threaded server could inherit a held lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import anyio

__all__ = [
    "IDLE_S",
    "CallTimedOut",
    "Processes",
    "ProcessesStopped",
    "ProcessesUnavailable",
    "cpus",
]

IDLE_S = 60.0  # processes without a call for this long stop
T = TypeVar("T")


class ProcessesStopped(Exception):
    """The processes died during a call twice, or could not start."""


class ProcessesUnavailable(ProcessesStopped):
    """No process could be started here (the system refused: ``OSError``)."""


class CallTimedOut(Exception):
    """A call outlived its time limit; its processes were killed."""


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _start_worker(parent: int, initializer: Callable[[], None] | None) -> None:
    """In a worker process: end with the server (``parent``); be the first process the
    kernel's out-of-memory killer picks (a document that explodes in memory then costs its
    own process, not the server: on Linux, raising one's own score needs no privilege);
    then ``initializer``."""
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    with contextlib.suppress(OSError):  # not Linux, or /proc not mounted
        Path("/proc/self/oom_score_adj").write_text("1000")
    if initializer is not None:
        initializer()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill ``pool``'s processes now (its calls in hand fail with ``BrokenProcessPool``)."""
    kill = getattr(pool, "kill_workers", None)  # Python 3.14
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError):  # already gone
            process.kill()


class Processes:
    """``size`` worker processes; see the module."""

    def __init__(
        self,
        size: int,
        *,
        what: str,
        initializer: Callable[[], None] | None = None,
        time_limit: float | None = None,
    ) -> None:
        """``what`` names the work in errors ("embedding", "parsing")."""
        self.size = max(1, size)
        self.what = what
        self.time_limit = time_limit
        self._initializer = initializer
        self._pool: ProcessPoolExecutor | None = None
        self._calls = 0  # in flight
        self._last_call = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    @property
    def running(self) -> bool:
        return self._pool is not None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            pool = ProcessPoolExecutor(
                self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(), self._initializer),
            )
            # The executor starts a process for a call that finds none idle: calls submitted
            # together start them all now, rather than one in the middle of the work.
            for _ in range(self.size):
                pool.submit(os.getpid)
            self._pool = pool
        return self._pool

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.size))
        return self._slots[1]

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a process (``fn`` and ``args`` picklable); ``fn``'s own exception
        is raised as it is."""
        loop = asyncio.get_running_loop()
        self._calls += 1
        try:
            if self.time_limit is None:
                return await self._call(loop, fn, args)
            async with self._semaphore():
                return await self._call(loop, fn, args)
        finally:
            self._calls -= 1
            self._last_call = time.monotonic()
            if self._timer is None:
                self._timer = loop.call_later(IDLE_S, self._check_idle)

    async def _call(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], args: Any) -> T:
        for attempt in (1, 2):
            try:
                pool = self._executor()
                future = loop.run_in_executor(pool, fn, *args)
            except OSError as exc:  # no process can start (a sandbox, no /dev/shm, ...)
                raise ProcessesUnavailable(f"no {self.what} process can start: {exc}") from exc
            try:
                if self.time_limit is None:
                    return await future
                async with asyncio.timeout(self.time_limit):
                    return await future
            except BrokenProcessPool as exc:  # a process died (or could not start)
                self._discard(pool)
                if attempt == 2:
                    raise ProcessesStopped(f"the {self.what} processes stopped: {exc}") from exc
            except TimeoutError as exc:
                if future.done() and not future.cancelled():
                    raise  # fn's own TimeoutError
                self._discard(pool, kill=True)
                raise CallTimedOut(
                    f"{self.what} took longer than {self.time_limit:g} s and was stopped"
                ) from exc
            except asyncio.CancelledError:
                if self.time_limit is not None:  # a call nobody waits for: stop it
                    self._discard(pool, kill=True)
                raise
        raise AssertionError("unreachable")

    def _discard(self, pool: ProcessPoolExecutor, *, kill: bool = False) -> None:
        if self._pool is pool:
            self._pool = None
        if kill:
            _kill(pool)
        pool.shutdown(wait=False, cancel_futures=True)

    def _check_idle(self) -> None:
        self._timer = None
        idle = time.monotonic() - self._last_call
        loop = asyncio.get_running_loop()
        if self._calls or idle < IDLE_S:
            self._timer = loop.call_later(max(1.0, IDLE_S - idle), self._check_idle)
        elif self._pool is not None:
            pool, self._pool = self._pool, None
            # joining the processes takes a moment: not on the event loop
            loop.run_in_executor(None, pool.shutdown)

    async def close(self) -> None:
        """Stop the processes (calls in hand fail)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pool, self._pool = self._pool, None
        if pool is not None:
            _kill(pool)
            await anyio.to_thread.run_sync(lambda: pool.shutdown(cancel_futures=True))
