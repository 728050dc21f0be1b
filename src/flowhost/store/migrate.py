"""Apply the packaged Alembic migrations for one service, under a database-level lock.

Several processes (workers, replicas) may start at once against one database. Each takes a lock
that lives in the database (or, for SQLite, next to the file), runs Alembic on that same
connection, and releases it; the later ones find the schema at head and do nothing.

- PostgreSQL: ``pg_try_advisory_lock(key)`` polled, key = 64-bit hash of the service name.
- MySQL / MariaDB: ``GET_LOCK('flowhost_migrate_<service>', 60)``.
- SQLite: ``fcntl.flock`` on ``<db>.migrate.lock``.

Alembic is synchronous: it runs through ``AsyncConnection.run_sync`` (Alembic's asyncio recipe),
with the connection handed to ``migrations/env.py`` in ``Config.attributes``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    inspect,
    text,
)
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flowhost.store.engine import (
    create_store_engine,
    dialect_of,
    normalize_url,
    sqlite_path,
    translate_errors,
)
from flowhost.store.errors import InvalidStoreURL, StoreError, StoreUnavailable
from flowhost.store.names import ServiceNames, service_names

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["LOCK_TIMEOUT_S", "MIGRATIONS_DIR", "alembic_config", "upgrade", "upgrade_engine"]

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")
LOCK_TIMEOUT_S: Final = 60.0
_POLL_S: Final = 0.1
_RELEASE_TIMEOUT_S: Final = 10.0


def alembic_config(names: ServiceNames) -> Config:
    """An in-code Alembic ``Config`` for the packaged migrations of one service."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["service_name"] = names.service
    return config


def prepare_sqlite(url: URL) -> Path:
    """The SQLite file of ``url``, its folder created; in-memory databases are refused."""
    path = sqlite_path(url)
    if path is None:
        raise InvalidStoreURL(
            "in-memory SQLite is not supported: each connection would see its own database; "
            "use a file (the default is <data_dir>/flowhost.db)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, not a folder, no permission: say which folder
        raise StoreUnavailable(
            f"cannot create the SQLite folder {path.parent}: {exc.strerror or exc}"
        ) from exc
    return path


async def upgrade(url: str, service: str) -> None:
    """Migrate the tables of ``service`` in the database at ``url`` to the newest revision.

    Safe to call from several processes at once. Raises ``StoreUnavailable`` when the database
    cannot be reached or the lock is not obtained within 60 s, and ``StoreError`` when the
    migration fails.
    """
    names = service_names(service)
    parsed = normalize_url(url)
    if dialect_of(parsed) == "sqlite":
        prepare_sqlite(parsed)
    engine = create_store_engine(parsed)
    try:
        await upgrade_engine(engine, names)
    finally:
        await engine.dispose()


_REVISION = re.compile(r'^revision(?::\s*str)?\s*=\s*"([^"]+)"', re.MULTILINE)
_DOWN = re.compile(r'^down_revision(?::[^=]+)?=\s*"([^"]+)"', re.MULTILINE)


def packaged_heads() -> frozenset[str]:
    """The head revisions of the packaged migrations, read from the files without Alembic.

    Lets a server whose schema is already current start without importing Alembic (about
    0.15 s) or taking the migration lock.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revisions.update(_REVISION.findall(source))
        parents.update(_DOWN.findall(source))
    return frozenset(revisions - parents)


async def _is_current(engine: AsyncEngine, names: ServiceNames) -> bool:
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text(f"SELECT version_num FROM {names.version_table}"))  # noqa: S608 - identifier from the sanitized service name
            return frozenset(r[0] for r in rows) == packaged_heads()
    except Exception:  # no version table yet, or unreachable: the full path will say
        return False


async def upgrade_engine(engine: AsyncEngine, names: ServiceNames) -> None:
    """``upgrade()`` on an engine the caller owns (``Store.open`` reuses its own)."""
    if await _is_current(engine, names):
        return
    async with translate_errors("migrating the schema"), _migration_lock(engine, names) as conn:
        if dialect_of(engine.url) != "sqlite" or not await conn.run_sync(_create_if_new, names):
            from alembic.util import CommandError

            try:
                await conn.run_sync(_run_alembic, alembic_config(names))
            except CommandError as e:
                raise StoreError(f"cannot migrate service {names.service!r}: {e}") from e
        await conn.commit()


def _current_metadata(names: ServiceNames) -> MetaData:
    """Every table of the service as the code defines it (the newest revision)."""
    from flowhost.knowledge.tables import kb_tables
    from flowhost.memory.tables import memory_tables
    from flowhost.store.schema import tables_for
    from flowhost.store.traces import trace_table

    metadata = MetaData()
    tables_for(names, metadata)
    trace_table(names, metadata)
    kb_tables(names.service, metadata)
    memory_tables(names.service, metadata)
    return metadata


def _create_if_new(connection: Connection, names: ServiceNames) -> bool:
    """A new SQLite database (no version table and none of the service's tables): create the
    newest schema straight from the code, stamped at the packaged heads (Alembic's recipe for a
    database built from scratch: create_all, then stamp), and return True; else False.

    Skips importing Alembic and replaying every revision (about 0.2 s of a first start; an
    ephemeral container starts on an empty data dir every time). A test checks that the result
    equals what the migrations build, and that Alembic finds it current.
    """
    metadata = _current_metadata(names)
    if set(inspect(connection).get_table_names()) & {names.version_table, *metadata.tables}:
        return False
    metadata.create_all(connection)
    version = Table(
        names.version_table,
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name=f"{names.version_table}_pkc"),
    )
    version.create(connection)
    connection.execute(version.insert(), [{"version_num": h} for h in sorted(packaged_heads())])
    return True


def _run_alembic(connection: Connection, config: Config) -> None:
    from alembic import command

    config.attributes["connection"] = connection
    command.upgrade(config, "heads")  # independent branches (chat, kb, traces) may each add a head


@contextlib.asynccontextmanager
async def _migration_lock(
    engine: AsyncEngine, names: ServiceNames
) -> AsyncIterator[AsyncConnection]:
    dialect = dialect_of(engine.url)
    if dialect == "sqlite":
        path = sqlite_path(engine.url)
        if path is None:
            raise InvalidStoreURL("in-memory SQLite is not supported")
        lock = path.with_name(f"{path.name}.migrate.lock")
        async with _file_lock(lock), engine.connect() as conn:
            yield conn
        return
    async with engine.connect() as conn:
        if dialect == "postgresql":
            await _pg_acquire(conn, names.advisory_key)
            release = text("SELECT pg_advisory_unlock(:key)").bindparams(key=names.advisory_key)
        else:
            await _mysql_acquire(conn, names.mysql_lock)
            release = text("SELECT RELEASE_LOCK(:name)").bindparams(name=names.mysql_lock)
        try:
            yield conn
        finally:
            # A session-level lock outlives transactions: release it, or drop the connection
            # rather than return a locked one to the pool. Shielded, so that a cancelled
            # caller still releases it.
            with anyio.CancelScope(shield=True), anyio.fail_after(_RELEASE_TIMEOUT_S):
                try:
                    await conn.rollback()
                    await conn.execute(release)
                    await conn.commit()
                except Exception:
                    await conn.invalidate()
                    raise


async def _pg_acquire(conn: AsyncConnection, key: int) -> None:
    statement = text("SELECT pg_try_advisory_lock(:key)").bindparams(key=key)
    deadline = anyio.current_time() + LOCK_TIMEOUT_S
    while True:
        acquired = (await conn.execute(statement)).scalar_one()
        await conn.commit()
        if acquired:
            return
        if anyio.current_time() >= deadline:
            raise StoreUnavailable(f"migration lock not obtained within {LOCK_TIMEOUT_S:.0f} s")
        await anyio.sleep(_POLL_S)


async def _mysql_acquire(conn: AsyncConnection, name: str) -> None:
    statement = text("SELECT GET_LOCK(:name, :timeout)").bindparams(
        name=name, timeout=int(LOCK_TIMEOUT_S)
    )
    acquired = (await conn.execute(statement)).scalar_one()
    await conn.commit()
    if acquired != 1:
        raise StoreUnavailable(f"migration lock not obtained within {LOCK_TIMEOUT_S:.0f} s")


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = anyio.current_time() + LOCK_TIMEOUT_S
        while not _try_flock(fd):
            if anyio.current_time() >= deadline:
                raise StoreUnavailable(f"migration lock {path} not obtained in 60 s")
            await anyio.sleep(_POLL_S / 2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
