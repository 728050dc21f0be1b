"""URLs, engines and the one place where driver exceptions become ``StoreError``s.

Three backends, each through its async driver: ``sqlite+aiosqlite`` (a file, WAL mode),
``mysql+asyncmy`` (MySQL or MariaDB) and ``postgresql+asyncpg``. A URL that names the backend
only (``mysql://``, ``postgresql://``, ``postgres://``, ``sqlite:///``) gets its async driver.

Server connection pools (MySQL, PostgreSQL) spend as few round trips as they safely can:

- No ping on every checkout (``pool_pre_ping`` costs one round trip per transaction on MySQL,
  three on asyncpg). A connection is pinged at checkout only after it sat idle in the pool for
  ``IDLE_PING_S``; connections are replaced after ``pool_recycle``. A stale connection that
  slips through (the server restarted or killed it meanwhile) fails with a disconnect error,
  which invalidates the pool; ``retry_on_disconnect`` runs the operation once more on a fresh
  connection, when that cannot apply it twice.
- No rollback on check-in after a successful commit (SQLAlchemy's reset-on-return sends one
  after every commit); any other connection is rolled back on check-in, as by default.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from sqlalchemy import Connection, PoolResetState, event, exc
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from flowhost.jsontext import compact_json, parse_json
from flowhost.store.errors import InvalidStoreURL, StoreError, StoreUnavailable

__all__ = [
    "IDLE_PING_S",
    "POOL_RECYCLE_S",
    "SQLITE_BEGIN_OPTION",
    "Dialect",
    "create_store_engine",
    "dialect_of",
    "json_dumps",
    "normalize_url",
    "retry_on_disconnect",
    "sqlite_on_begin",
    "sqlite_on_connect",
    "sqlite_path",
    "translate_errors",
]

T = TypeVar("T")
Dialect = Literal["sqlite", "mysql", "postgresql"]

_DRIVERS: Final[dict[str, tuple[Dialect, str]]] = {
    "sqlite": ("sqlite", "aiosqlite"),
    "mysql": ("mysql", "asyncmy"),
    "mariadb": ("mysql", "asyncmy"),
    "postgresql": ("postgresql", "asyncpg"),
    "postgres": ("postgresql", "asyncpg"),
}
# page_size applies to a database file that is still empty (a new store; an existing one keeps
# its own, and the pragma is a no-op): 8 KiB pages halve the WAL frames an append of trace rows
# (~0.8 KB each) writes and its checkpoints copy back (each a header and a page written): the
# store's writer ~16 -> ~14 µs a run on the echo app, alternating runs.
SQLITE_PAGE_SIZE: Final = 8192
_SQLITE_PRAGMAS: Final = (
    f"PRAGMA page_size={SQLITE_PAGE_SIZE}",
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


def _null(value: None) -> None:
    return value


# CPython's sqlite3 binds a None by asking it and the protocol object for ``__conform__`` and
# ``__adapt__``: two failed attribute lookups, each making and clearing an AttributeError, ~3.3k
# instructions a NULL. A stored trace row has four: 13k of an echo request's 531k instructions
# (``python -m bench.instructions``), 6k with this adapter, which sqlite3 finds in a dict. It is
# process-wide, and a None is bound as NULL exactly as before.
sqlite3.register_adapter(type(None), _null)

# SQLite transactions: "immediate" takes the write lock at BEGIN, so a writer waits (busy_timeout)
# instead of failing when it upgrades a read lock that another connection's write blocks.
_SQLITE_BEGIN: Final = {"deferred": "BEGIN DEFERRED", "immediate": "BEGIN IMMEDIATE"}
SQLITE_BEGIN_OPTION: Final = "flowhost_sqlite_begin"
# A pooled server connection idle for longer than this is pinged before use.
IDLE_PING_S: Final = 1.0
# ... and replaced once this old (below MySQL's default wait_timeout of 8 hours, and proxies').
POOL_RECYCLE_S: Final = 1800
# Keys of a pooled connection's ``info`` dict.
_IDLE_SINCE: Final = "flowhost_idle_since"
_COMMITTED: Final = "flowhost_committed"


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and give it the async driver of its backend.

    Raises:
        InvalidStoreURL: malformed, or not SQLite / MySQL / MariaDB / PostgreSQL, or a sync driver.
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError as e:
        raise InvalidStoreURL(f"cannot parse database URL: {e}") from e
    # Split the drivername by hand: URL.get_driver_name() imports the dialect to find its default.
    backend, _, given = parsed.drivername.partition("+")
    if backend not in _DRIVERS:
        raise InvalidStoreURL(
            f"unsupported database {backend!r}: use sqlite+aiosqlite, mysql+asyncmy "
            "or postgresql+asyncpg"
        )
    _, driver = _DRIVERS[backend]
    if given and given != driver:
        raise InvalidStoreURL(f"driver {given!r} is not supported for {backend}; use {driver}")
    name = "postgresql" if backend == "postgres" else backend
    return parsed.set(drivername=f"{name}+{driver}")


def dialect_of(url: URL) -> Dialect:
    """``"sqlite"``, ``"mysql"`` (MySQL and MariaDB) or ``"postgresql"``."""
    return _DRIVERS[url.get_backend_name()][0]


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL, or ``None`` for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return None
    if url.query.get("uri") in ("true", "1") and database.startswith("file:"):
        database = database.removeprefix("file:").split("?", 1)[0]
    return Path(database)


def json_dumps(value: Any) -> str:
    return compact_json(value)


def sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand BEGIN over to SQLAlchemy (see sqlite_on_begin), then set the connection's pragmas.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def sqlite_on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "deferred")
    connection.exec_driver_sql(_SQLITE_BEGIN[mode])


def create_store_engine(url: URL) -> AsyncEngine:
    """An engine for a normalized URL, with the pool and connection settings of its backend."""
    if dialect_of(url) == "sqlite":
        engine = create_async_engine(url, json_serializer=json_dumps, json_deserializer=parse_json)
        event.listen(engine.sync_engine, "connect", sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", sqlite_on_begin)
        return engine
    engine = create_async_engine(
        url,
        json_serializer=json_dumps,
        json_deserializer=parse_json,
        pool_recycle=POOL_RECYCLE_S,
        pool_reset_on_return=None,  # reset_on_checkin below does it
    )
    sync = engine.sync_engine
    dialect = sync.dialect

    def ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as e:
            # The pool drops this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"idle pooled connection is gone ({_detail(e)})") from e

    def reset_on_checkin(
        dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState
    ) -> None:
        """Reset-on-return, less the ROLLBACK that follows a successful COMMIT.

        ``Connection.close()`` rolls back an open transaction itself (``transaction_was_reset``)
        but after ``commit()`` SQLAlchemy resets the connection once more: one needless round
        trip per write. Anything else (a transaction left open) is rolled back as by default.
        """
        committed = record.info.pop(_COMMITTED, False)
        if state.terminate_only or not state.asyncio_safe:
            return  # the pool discards the connection
        if not (state.transaction_was_reset or committed):
            dialect.do_rollback(dbapi_connection)

    event.listen(sync, "checkin", _mark_idle)
    event.listen(sync, "checkout", ping_if_idle)
    event.listen(sync, "reset", reset_on_checkin)
    event.listen(sync, "begin", _forget_commit)
    event.listen(sync, "commit", _note_commit)
    event.listen(sync, "handle_error", _forget_commit_on_error)
    return engine


def _mark_idle(_dbapi_connection: Any, record: ConnectionPoolEntry | None) -> None:
    if record is not None:
        record.info[_IDLE_SINCE] = time.monotonic()


def _forget_commit(connection: Connection) -> None:
    connection.info.pop(_COMMITTED, None)


def _note_commit(connection: Connection) -> None:
    # Fired before COMMIT is sent; a COMMIT that fails clears it (_forget_commit_on_error).
    connection.info[_COMMITTED] = True


def _forget_commit_on_error(context: ExceptionContext) -> None:
    connection = context.connection
    # (an invalidated connection is discarded, not reset; .info would reconnect it)
    if connection is not None and not connection.invalidated and not connection.closed:
        _forget_commit(connection)


async def retry_on_disconnect(
    run: Callable[[Callable[[Connection], T]], Awaitable[T]],
    operation: Callable[[Connection], T],
    *,
    write: bool,
) -> T:
    """``await run(operation)``, once more when a pooled connection turned out to be gone.

    ``run`` is a runner's ``read`` or ``write``. A disconnect invalidates the pool, so the
    second attempt gets a fresh connection. A write is repeated only when the connection was
    lost before its COMMIT was sent (the server rolled the transaction back); a COMMIT whose
    outcome is unknown is never sent twice.
    """
    committing = False

    def attempt(conn: Connection) -> T:
        nonlocal committing
        committing = False
        result = operation(conn)
        committing = write
        return result

    try:
        return await run(attempt)
    except exc.DBAPIError as e:
        if not e.connection_invalidated or committing:
            raise
    return await run(attempt)


_UNAVAILABLE: Final = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
    OSError,
    TimeoutError,
)


def _detail(error: BaseException) -> str:
    cause = error.orig if isinstance(error, exc.DBAPIError) else error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    text = text[:300]
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


@contextlib.asynccontextmanager
async def translate_errors(action: str) -> AsyncIterator[None]:
    """Turn driver exceptions raised inside the block into ``StoreError``s.

    Connection, timeout and operational failures become ``StoreUnavailable``; any other
    database error becomes ``StoreError``. ``StoreError``s pass through unchanged.
    """
    try:
        yield
    except StoreError:
        raise
    except _UNAVAILABLE as e:
        raise StoreUnavailable(f"database unavailable while {action} ({_detail(e)})") from e
    except exc.SQLAlchemyError as e:
        raise StoreError(f"database error while {action} ({_detail(e)})") from e
