"""Where a repository's statements run: one operation, one transaction, few hops.

An operation (open a session, read its history, append a turn, ...) is a plain synchronous
function of a SQLAlchemy ``Connection``. A runner executes it in one transaction:

- MySQL / MariaDB / PostgreSQL: on the store's async engine, through
  ``AsyncConnection.run_sync`` (the statements use the driver's own asyncio I/O).
- SQLite: on a synchronous ``sqlite3`` engine over the same file, the whole operation in one
  worker thread (``read_quick``, for small indexed reads: on the calling thread). aiosqlite
  hops to its thread for every cursor call (about four per statement, some 25 per chat turn,
  3-4 ms on a busy machine); here a turn of an existing session costs one hop.
  Writers of this process queue on an ``anyio.Lock`` (not in threads) and take SQLite's write
  lock at ``BEGIN IMMEDIATE``; ``busy_timeout`` covers writers in other processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine, create_engine, event
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

T = TypeVar("T")
# Worker threads (and pooled sqlite3 connections) one process uses for the store at most.
SQLITE_THREADS: Final = 8


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

    async def close(self) -> None:
        return None


class SqliteThreadRunner:
    """Operations on a synchronous SQLite engine, one worker thread per operation."""

    def __init__(self, url: URL) -> None:
        self._engine = create_sqlite_sync_engine(url)
        self._writer = anyio.Lock()
        self._threads = anyio.CapacityLimiter(SQLITE_THREADS)

    async def read(self, operation: Callable[[Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._read, operation, limiter=self._threads)

    async def read_quick(self, operation: Callable[[Connection], T]) -> T:
        # WAL readers never wait for writers (busy_timeout cannot block the loop here); the
        # operation must be a bounded, indexed read
        return self._read(operation)

    async def write(self, operation: Callable[[Connection], T]) -> T:
        # Not cancellable once in the thread: a write is done whole or not at all, and the lock
        # is held until it is.
        async with self._writer:
            return await anyio.to_thread.run_sync(self._write, operation, limiter=self._threads)

    def _read(self, operation: Callable[[Connection], T]) -> T:
        with self._engine.connect() as conn:
            return operation(conn)

    def _write(self, operation: Callable[[Connection], T]) -> T:
        with self._engine.connect() as conn:
            conn = conn.execution_options(**{SQLITE_BEGIN_OPTION: "immediate"})
            with conn.begin():
                return operation(conn)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._engine.dispose)


def create_sqlite_sync_engine(url: URL) -> Engine:
    """A ``sqlite+pysqlite`` engine on the file of ``url``, with the store's pragmas."""
    engine = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        json_serializer=json_dumps,
        json_deserializer=parse_json,
        pool_size=SQLITE_THREADS + 1,  # + the event loop's read_quick: never waits for one
        max_overflow=0,
    )
    event.listen(engine, "connect", sqlite_on_connect)
    event.listen(engine, "begin", sqlite_on_begin)
    return engine


def make_runner(engine: AsyncEngine) -> AsyncRunner | SqliteThreadRunner:
    """The runner for the store's engine: threads and ``sqlite3`` for SQLite, else the engine."""
    if dialect_of(engine.url) == "sqlite":
        return SqliteThreadRunner(engine.url)
    return AsyncRunner(engine)
