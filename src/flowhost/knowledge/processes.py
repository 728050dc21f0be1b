"""Worker processes for the CPU-bound parts of indexing: parsing documents, and embedding them
with the packaged model.

In threads of the server, that work is mostly pure Python (pypdf, python-docx, openpyxl, the
chunker, the model's tokenizer) and contends with the event loop for the GIL: every request of
the server slows while a document is read, and a thread cannot be stopped, so a parse stuck
inside one page outlives any limit. ``Processes`` is ``size`` ``spawn`` processes, each a
one-process ``ProcessPoolExecutor`` of its own, so that whatever befalls one call (its process
killed for its time, by the kernel for its memory, or crashed) befalls no other. They

- start with the first call (all ``size`` at once, each running ``initializer``) and stop
  after ``IDLE_S`` without calls;
- end with the server when the server is killed (nothing else would tell a process), and are
  what the kernel's out-of-memory killer takes first;
- run at most ``size`` calls at once, one each (a call never waits inside an executor, so its
  time is its own);
- survive a process that dies: the call is retried once in a new process, and
  ``ProcessesStopped`` is raised when that one dies too (``ProcessesUnavailable`` when the
  system refuses to start one);
- with a ``time_limit``, kill the process of a call that outlives it (``CallTimedOut``), and
  that of a call cancelled (its work is not wanted; without a limit such a process finishes
  its call and is used again, keeping what its ``initializer`` loaded);
- with a ``memory_limit``, may allocate that many bytes (``RLIMIT_DATA``: heap and anonymous
  mappings; Linux): past it an allocation fails, and the call raises ``MemoryError`` in the
  caller, its process kept, before the machine runs short and the kernel has to choose.

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
    """A call's process died, and so did the one it was retried in."""


class ProcessesUnavailable(ProcessesStopped):
    """No process could be started here (the system refused: ``OSError``)."""


class CallTimedOut(Exception):
    """A call outlived its time limit; its process was killed."""


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _start_worker(
    parent: int, initializer: Callable[[], None] | None, memory_limit: int | None = None
) -> None:
    """In a worker process: end with the server (``parent``); be the first process the
    kernel's out-of-memory killer picks (a document that explodes in memory then costs its
    own process, not the server: on Linux, raising one's own score needs no privilege); cap
    what it may allocate at ``memory_limit`` bytes; then ``initializer``."""
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    with contextlib.suppress(OSError):  # not Linux, or /proc not mounted
        Path("/proc/self/oom_score_adj").write_text("1000")
    if memory_limit is not None:
        with contextlib.suppress(ImportError, ValueError, OSError):  # no such limit here
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
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
        memory_limit: int | None = None,
    ) -> None:
        """``what`` names the work in errors ("embedding", "parsing"); ``memory_limit`` is in
        bytes."""
        self.size = max(1, size)
        self.what = what
        self.time_limit = time_limit
        self.memory_limit = memory_limit
        self._initializer = initializer
        self._idle: list[ProcessPoolExecutor] = []  # started, no call in hand
        self._busy: set[ProcessPoolExecutor] = set()
        self._calls = 0  # in flight
        self._last_call = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    @property
    def running(self) -> bool:
        return bool(self._idle or self._busy)

    def _start(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(), self._initializer, self.memory_limit),
        )
        executor.submit(os.getpid)  # the executor starts its process at the first submit
        return executor

    def _take(self) -> ProcessPoolExecutor:
        if not self._idle and not self._busy:
            # the first call starts them all: calls that come together then find theirs
            # started, rather than each starting one in the middle of the work
            try:
                while len(self._idle) < self.size:
                    self._idle.append(self._start())
            except OSError:  # the system refuses one: none stays half started
                started, self._idle = self._idle, []
                for executor in started:
                    self._drop(executor, kill=True)
                raise
        executor = self._idle.pop() if self._idle else self._start()
        self._busy.add(executor)
        return executor

    def _give_back(self, executor: ProcessPoolExecutor) -> None:
        self._busy.discard(executor)
        self._idle.append(executor)

    def _drop(self, executor: ProcessPoolExecutor, *, kill: bool = False) -> None:
        self._busy.discard(executor)
        if kill:
            _kill(executor)
        executor.shutdown(wait=False, cancel_futures=True)

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
                executor = self._take()
            except OSError as exc:  # no process can start (a sandbox, no /dev/shm, ...)
                raise ProcessesUnavailable(f"no {self.what} process can start: {exc}") from exc
            future: asyncio.Future[T] | None = None
            try:
                future = loop.run_in_executor(executor, fn, *args)  # broken already: raises
                async with asyncio.timeout(self.time_limit):
                    result = await future
            except BrokenProcessPool as exc:  # its process died (or could not start)
                self._drop(executor)
                if attempt == 2:
                    raise ProcessesStopped(f"the {self.what} process stopped: {exc}") from exc
                continue
            except TimeoutError as exc:
                if future is not None and future.done() and not future.cancelled():  # fn's own
                    self._give_back(executor)
                    raise
                self._drop(executor, kill=True)
                raise CallTimedOut(
                    f"{self.what} took longer than {self.time_limit:g} s and was stopped"
                ) from exc
            except asyncio.CancelledError:
                if self.time_limit is None:  # let it finish: the next call waits behind it
                    self._give_back(executor)
                else:  # a call nobody waits for, that may be stuck: stop it
                    self._drop(executor, kill=True)
                raise
            except BaseException:  # fn's own
                self._give_back(executor)
                raise
            self._give_back(executor)
            return result
        raise AssertionError("unreachable")

    def _check_idle(self) -> None:
        self._timer = None
        idle = time.monotonic() - self._last_call
        loop = asyncio.get_running_loop()
        if self._calls or idle < IDLE_S:
            self._timer = loop.call_later(max(1.0, IDLE_S - idle), self._check_idle)
        elif self._idle:
            executors, self._idle = self._idle, []
            # joining the processes takes a moment: not on the event loop
            for executor in executors:
                loop.run_in_executor(None, executor.shutdown)

    async def close(self) -> None:
        """Stop the processes (calls in hand fail)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        executors = [*self._idle, *self._busy]
        self._idle, self._busy = [], set()
        for executor in executors:
            _kill(executor)

        def shutdown() -> None:
            for executor in executors:
                executor.shutdown(cancel_futures=True)

        if executors:
            await anyio.to_thread.run_sync(shutdown)
