"""URLs, engines and the one place where driver exceptions become ``StoreError``s.

Three backends, each through its async driver: ``sqlite+aiosqlite`` (a file, WAL mode),
``mysql+asyncmy`` (MySQL or MariaDB) and ``postgresql+asyncpg``. A URL that names the backend
only (``mysql://``, ``postgresql://``, ``postgres://``, ``sqlite:///``) gets its async driver.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import Connection, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from flowhost.store.errors import InvalidStoreURL, StoreError, StoreUnavailable

__all__ = [
    "SQLITE_BEGIN_OPTION",
    "Dialect",
    "create_store_engine",
    "dialect_of",
    "json_dumps",
    "normalize_url",
    "sqlite_on_begin",
    "sqlite_on_connect",
    "sqlite_path",
    "translate_errors",
]

Dialect = Literal["sqlite", "mysql", "postgresql"]

_DRIVERS: Final[dict[str, tuple[Dialect, str]]] = {
    "sqlite": ("sqlite", "aiosqlite"),
    "mysql": ("mysql", "asyncmy"),
    "mariadb": ("mysql", "asyncmy"),
    "postgresql": ("postgresql", "asyncpg"),
    "postgres": ("postgresql", "asyncpg"),
}
_SQLITE_PRAGMAS: Final = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
# SQLite transactions: "immediate" takes the write lock at BEGIN, so a writer waits (busy_timeout)
# instead of failing when it upgrades a read lock that another connection's write blocks.
_SQLITE_BEGIN: Final = {"deferred": "BEGIN DEFERRED", "immediate": "BEGIN IMMEDIATE"}
SQLITE_BEGIN_OPTION: Final = "flowhost_sqlite_begin"


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
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
        engine = create_async_engine(url, json_serializer=json_dumps)
        event.listen(engine.sync_engine, "connect", sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", sqlite_on_begin)
        return engine
    return create_async_engine(
        url, json_serializer=json_dumps, pool_pre_ping=True, pool_recycle=1800
    )


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
