"""``Store``: the process's one SQL store, holding the engine and the repositories."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from flowhost.store.chats import ChatRepository
from flowhost.store.engine import (
    Dialect,
    create_store_engine,
    dialect_of,
    normalize_url,
    translate_errors,
)
from flowhost.store.migrate import prepare_sqlite, upgrade_engine
from flowhost.store.names import ServiceNames, service_names
from flowhost.store.runner import Runner, make_runner
from flowhost.store.schema import tables_for

__all__ = ["DEFAULT_SQLITE_NAME", "Store"]

DEFAULT_SQLITE_NAME = "flowhost.db"


class Store:
    """One per process: the engine (connection pool) and the repositories of one service.

    Build it with ``await Store.open(...)`` and ``await store.close()`` it at shutdown.
    """

    chats: ChatRepository

    def __init__(self, engine: AsyncEngine, names: ServiceNames) -> None:
        self._engine = engine
        self._dialect = dialect_of(engine.url)
        self._names = names
        self._metadata = MetaData()
        self._runner = make_runner(engine)
        self.chats = ChatRepository(self._runner, tables_for(names, self._metadata))

    @classmethod
    async def open(
        cls, url: str | None, *, data_dir: Path, service: str, migrate: bool = True
    ) -> Store:
        """Connect to ``url`` (default: SQLite ``<data_dir>/flowhost.db``) for ``service``.

        ``migrate`` applies the packaged migrations first (under the migration lock); without
        it the database is only pinged.

        Raises:
            InvalidStoreURL, InvalidServiceName: bad arguments.
            StoreUnavailable: the database cannot be reached.
            StoreError: the migration failed.
        """
        names = service_names(service)
        default = URL.create("sqlite+aiosqlite", database=str(data_dir / DEFAULT_SQLITE_NAME))
        parsed = normalize_url(url if url is not None else default)
        if dialect_of(parsed) == "sqlite":
            prepare_sqlite(parsed)
        engine = create_store_engine(parsed)
        try:
            if migrate:
                await upgrade_engine(engine, names)
            store = cls(engine, names)
            await store.ping()
        except BaseException:
            await engine.dispose()
            raise
        return store

    @property
    def dialect(self) -> Dialect:
        """``"sqlite"``, ``"mysql"`` (MySQL and MariaDB) or ``"postgresql"``."""
        return self._dialect

    @property
    def service(self) -> str:
        """The sanitized service name that the tables carry."""
        return self._names.service

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for other repositories of the store package."""
        return self._engine

    @property
    def runner(self) -> Runner:
        """The runner that ``chats`` uses, for other repositories of the store package.

        Share it rather than make another: on SQLite one runner queues this process's writers
        on one lock, where two would meet on SQLite's file lock (whose busy handler sleeps in
        steps of up to 100 ms). The store closes it.
        """
        return self._runner

    async def ping(self) -> None:
        """Run ``SELECT 1``. Raises ``StoreUnavailable``."""
        async with translate_errors("pinging the database"), self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Close every pooled connection. Idempotent."""
        await self._runner.close()
        await self._engine.dispose()

    def __repr__(self) -> str:
        url = self._engine.url.render_as_string(hide_password=True)
        return f"Store(url={url!r}, service={self._names.service!r})"
