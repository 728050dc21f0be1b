"""Where a repository's statements run: one operation, one transaction, few hops.

An operation (open a session, read its history, append a turn, ...) is a plain synchronous
function of a SQLAlchemy ``Connection``. A runner executes it in one transaction:

- MySQL / MariaDB / PostgreSQL: on the store's async engine, through
  ``AsyncConnection.run_sync`` (the statements use the driver's own asyncio I/O).
- SQLite: on a synchronous ``sqlite3`` engine over the same file, the whole operation in one
  worker thread. aiosqlite hops to its thread for every cursor call (about four per statement,
  some 25 per chat turn, 3-4 ms on a busy machine); here an operation costs one hop at most.
  A chat turn's small operations (``read_quick``, ``write_quick``) cost none: they run on the
  calling thread, on a connection that never waits for a lock (``busy_timeout=0``) and never
  checkpoints the WAL itself; when another process holds the write lock they go to a thread
  like any other operation, and every ``CHECKPOINT_EVERY`` quick commits a passive checkpoint
  runs in a thread.
  Writers of this process queue on an ``anyio.Lock`` (not in threads) and take SQLite's write
  lock at ``BEGIN IMMEDIATE``; ``busy_timeout`` covers writers in other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from flowhost.jsontext import parse_json
from flowhost.store.engine import (
    SQLITE_BEGIN_OPTION,
    dialect_of,
    json_dumps,
    sqlite_on_begin,
    sqlite_on_connect,
)

__all__ = ["Runner", "make_runner"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# Worker threads (and pooled sqlite3 connections) one process uses for the store at most.
SQLITE_THREADS: Final = 8
# Quick commits between two passive WAL checkpoints (a chat turn adds about 3 pages to the WAL;
# SQLite's own automatic checkpoint comes at 1000 pages).
CHECKPOINT_EVERY: Final = 256


class Runner(Protocol):
    async def read(self, operation: Callable[[Connection], T]) -> T:
        """Run ``operation`` in a read transaction (rolled back at the end)."""
        ...

    async def read_quick(self, operation: Callable[[Connection], T]) -> T:
        """``read`` for a small indexed read (a session and its last turns): on SQLite it runs
        on the calling thread, where a thread hop and the GIL handoffs of its statements cost
        more than the read."""
        ...

    async def write(self, operation: Callable[[Connection], T]) -> T:
        """Run ``operation`` in a write transaction, committed when it returns."""
        ...

    async def write_quick(self, operation: Callable[[Connection], T]) -> T:
        """``write`` for a few-row write (a chat turn): on SQLite it runs on the calling thread
        unless another process holds the write lock."""
        ...

    async def close(self) -> None: ...


class AsyncRunner:
    """Operations on the async engine (the engine belongs to the ``Store``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def read(self, operation: Callable[[Connection], T]) -> T:
        async with self._engine.connect() as conn:
            return await conn.run_sync(operation)

    async def read_quick(self, operation: Callable[[Connection], T]) -> T:
        return await self.read(operation)

    async def write(self, operation: Callable[[Connection], T]) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(operation)

    async def write_quick(self, operation: Callable[[Connection], T]) -> T:
        return await self.write(operation)

    async def close(self) -> None:
        return None


class _Busy(Exception):
    """The quick connection could not take SQLite's write lock at once."""


class SqliteThreadRunner:
    """Operations on a synchronous SQLite engine: in a worker thread, or (quick ones) inline."""

    def __init__(self, url: URL) -> None:
        self._engine = create_sqlite_sync_engine(url)
        self._quick = create_sqlite_sync_engine(url, quick=True)
        self._writer = anyio.Lock()
        self._threads = anyio.CapacityLimiter(SQLITE_THREADS)
        self._quick_commits = 0
        self._checkpoint: asyncio.Task[None] | None = None

    async def read(self, operation: Callable[[Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._read, operation, limiter=self._threads)

    async def read_quick(self, operation: Callable[[Connection], T]) -> T:
        # WAL readers do not wait for writers; the operation must be a bounded, indexed read
        try:
            with _connect_quick(self._quick) as conn:
                return operation(conn)
        except _Busy:  # WAL recovery after a crash, or an exclusive lock elsewhere
            return await self.read(operation)

    async def write(self, operation: Callable[[Connection], T]) -> T:
        # Not cancellable once in the thread: a write is done whole or not at all, and the lock
        # is held until it is.
        async with self._writer:
            return await anyio.to_thread.run_sync(self._write, operation, limiter=self._threads)

    async def write_quick(self, operation: Callable[[Connection], T]) -> T:
        async with self._writer:
            try:
                result = self._write_inline(operation)
            except _Busy:  # another process is writing: wait for it in a thread
                return await anyio.to_thread.run_sync(self._write, operation, limiter=self._threads)
        self._quick_commits += 1
        if self._quick_commits >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._quick_commits = 0
            self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())
        return result

    async def _run_checkpoint(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._checkpoint_wal, limiter=self._threads)
        except Exception as e:  # the next one will try again; readers are never affected
            log.warning("WAL checkpoint failed: %s", e)
        finally:
            self._checkpoint = None

    def _checkpoint_wal(self) -> None:
        with self._engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _read(self, operation: Callable[[Connection], T]) -> T:
        with self._engine.connect() as conn:
            return operation(conn)

    def _write(self, operation: Callable[[Connection], T]) -> T:
        with self._engine.connect() as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "immediate"})
            with conn.begin():  # BEGIN IMMEDIATE: SQLite's write lock (busy_timeout applies)
                return operation(conn)

    def _write_inline(self, operation: Callable[[Connection], T]) -> T:
        """``_write`` on the quick connection; _Busy when the write lock is not free at once."""
        with _connect_quick(self._quick) as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "immediate"})
            try:
                transaction = conn.begin()
            except exc.OperationalError as e:
                if _is_busy(e):
                    raise _Busy from e
                raise
            with transaction:
                return operation(conn)

    async def close(self) -> None:
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
        await anyio.to_thread.run_sync(self._quick.dispose)
        await anyio.to_thread.run_sync(self._engine.dispose)


def _is_busy(e: exc.OperationalError) -> bool:
    code = getattr(e.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == 5  # SQLITE_BUSY and its extended codes


@contextlib.contextmanager
def _connect_quick(engine: Engine) -> Iterator[Connection]:
    """``engine.connect()`` on the quick engine; _Busy when its one connection is taken."""
    try:
        conn = engine.connect()
    except exc.TimeoutError as e:
        raise _Busy from e
    with conn:
        yield conn


def create_sqlite_sync_engine(url: URL, *, quick: bool = False) -> Engine:
    """A ``sqlite+pysqlite`` engine on the file of ``url``, with the store's pragmas.

    ``quick``: one connection for the event loop's thread, which must never block: no busy
    timeout (a lock held elsewhere fails at once) and no automatic WAL checkpoint.
    """
    engine = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        json_serializer=json_dumps,
        json_deserializer=parse_json,
        pool_size=1 if quick else SQLITE_THREADS,
        max_overflow=0,
        # the quick connection is in use only between two awaits of one thread: another
        # thread finding it taken goes the thread way at once (see _Busy)
        pool_timeout=0 if quick else 30,
    )
    event.listen(engine, "connect", _on_connect_quick if quick else sqlite_on_connect)
    event.listen(engine, "begin", sqlite_on_begin)
    return engine


def _on_connect_quick(dbapi_connection: Any, record: Any) -> None:
    sqlite_on_connect(dbapi_connection, record)
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


def make_runner(engine: AsyncEngine) -> AsyncRunner | SqliteThreadRunner:
    """The runner for the store's engine: threads and ``sqlite3`` for SQLite, else the engine."""
    if dialect_of(engine.url) == "sqlite":
        return SqliteThreadRunner(engine.url)
    return AsyncRunner(engine)
