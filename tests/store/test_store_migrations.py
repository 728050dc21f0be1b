"""Migrations: per-service tables, idempotent, safe under concurrent starts, equal to schema.py."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text

import flowhost.store
from flowhost.store import Store, upgrade
from flowhost.store.migrate import alembic_config
from flowhost.store.names import service_names
from flowhost.store.schema import tables_for

OpenStore = Callable[..., Awaitable[Store]]

pytestmark = pytest.mark.anyio


def _service_tables(store: Store) -> set[str]:
    names = service_names(store.service)
    return {names.session_table, names.history_table, names.version_table}


async def _table_names(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


def _head(store: Store) -> list[str]:
    """Every head: chat, knowledge, memory and traces are independent branches off 0001."""
    script = ScriptDirectory.from_config(alembic_config(service_names(store.service)))
    return sorted(script.get_heads())


async def _version(store: Store) -> list[str]:
    table = service_names(store.service).version_table
    async with store.engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT version_num FROM {table}"))
        return sorted(row[0] for row in rows)


async def test_open_creates_the_service_tables(open_store: OpenStore, service: str) -> None:
    store = await open_store()
    assert _service_tables(store) <= await _table_names(store)
    assert await _version(store) == _head(store)
    assert store.service == service
    assert store.dialect in ("sqlite", "mysql", "postgresql")


async def test_second_open_is_a_noop(open_store: OpenStore) -> None:
    first = await open_store()
    await first.chats.ensure_session("s" * 32, app_id="app", user_id=None)
    second = await open_store()
    assert await _version(second) == _head(second)
    assert (await second.chats.get_session("s" * 32, user_id=None)).app_id == "app"
    await upgrade(str(second.engine.url.render_as_string(hide_password=False)), second.service)
    assert await _version(second) == _head(second)


async def test_open_without_migrate_only_pings(open_store: OpenStore) -> None:
    store = await open_store(migrate=False)
    await store.ping()
    assert not (_service_tables(store) & await _table_names(store))


async def test_concurrent_upgrades_in_one_process(store_url: str, service: str) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(upgrade, store_url, service)
    async with anyio.create_task_group() as tg:  # and again, at head already
        tg.start_soon(upgrade, store_url, service)
        tg.start_soon(upgrade, store_url, service)


async def test_concurrent_upgrades_in_two_processes(
    store_url: str, service: str, tmp_path: Path
) -> None:
    src = Path(flowhost.store.__file__).parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    snippet = (
        "import sys, anyio; from flowhost.store import upgrade; "
        "anyio.run(upgrade, sys.argv[1], sys.argv[2])"
    )
    results: list[anyio.abc.Process] = []
    started = time.monotonic()

    async def run() -> None:
        process = await anyio.run_process(
            [sys.executable, "-c", snippet, store_url, service], env=env, check=False
        )
        results.append(process)  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(run)
    for process in results:
        assert process.returncode == 0, process.stderr.decode()  # type: ignore[union-attr]
    assert time.monotonic() - started < 60
    store = await Store.open(store_url, data_dir=tmp_path, service=service, migrate=False)
    try:
        assert await _version(store) == _head(store)
        assert _service_tables(store) <= await _table_names(store)
    finally:
        await store.close()


async def test_services_share_a_database_apart(
    store_url: str,
    service: str,
    tmp_path: Path,
    drop_tables: Callable[[str, str], Awaitable[None]],
) -> None:
    other = f"{service}_b"
    first = await Store.open(store_url, data_dir=tmp_path, service=service)
    second = await Store.open(store_url, data_dir=tmp_path, service=other)
    try:
        await first.chats.ensure_session("x" * 32, app_id="a", user_id=None)
        assert (await second.chats.list_sessions(user_id=None, app_id=None, limit=10, offset=0))[
            1
        ] == 0
        assert (await first.chats.list_sessions(user_id=None, app_id=None, limit=10, offset=0))[
            1
        ] == 1
    finally:
        await first.close()
        await second.close()
        await drop_tables(store_url, other)


def _diff(conn: Connection, service: str) -> list[Any]:
    names = service_names(service)
    ours = {names.session_table, names.history_table}

    def include_name(name: str | None, type_: str, _parent: object) -> bool:
        return type_ != "table" or name in ours

    context = MigrationContext.configure(
        conn, opts={"include_name": include_name, "compare_type": True}
    )
    metadata = MetaData()
    tables_for(names, metadata)
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_schema_module(open_store: OpenStore) -> None:
    store = await open_store()
    async with store.engine.connect() as conn:
        diff = await conn.run_sync(_diff, store.service)
    assert diff == []


def _sqlite_schema(path: Path) -> list[tuple[str, str, str]]:
    import sqlite3

    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    return [(kind, name, " ".join(sql.split())) for kind, name, sql in rows]


async def test_a_new_sqlite_database_is_built_as_the_migrations_build_it(tmp_path: Path) -> None:
    """An empty SQLite database gets the newest schema from the code and the packaged heads,
    without Alembic: the same tables, indexes and version rows as replaying every revision,
    and Alembic then finds it current."""

    from flowhost.store.engine import create_store_engine, normalize_url
    from flowhost.store.migrate import _run_alembic, packaged_heads, prepare_sqlite

    fast_dir, replayed_dir = tmp_path / "fast", tmp_path / "replayed"
    store = await Store.open(None, data_dir=fast_dir, service="same")
    await store.close()

    url = normalize_url(f"sqlite+aiosqlite:///{replayed_dir / 'flowhost.db'}")
    prepare_sqlite(url)
    engine = create_store_engine(url)
    config = alembic_config(service_names("same"))
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run_alembic, config)
            await conn.commit()
    finally:
        await engine.dispose()

    fast = _sqlite_schema(fast_dir / "flowhost.db")
    assert fast == _sqlite_schema(replayed_dir / "flowhost.db")
    assert {name for kind, name, _ in fast if kind == "table"} >= {
        "flowhost_chat_session_same",
        "flowhost_trace_run_same",
        "flowhost_kb_doc_same",
        "flowhost_memory_same",
        "flowhost_alembic_same",
    }

    engine = create_store_engine(normalize_url(f"sqlite+aiosqlite:///{fast_dir / 'flowhost.db'}"))
    try:
        async with engine.connect() as conn:

            def heads(c: Connection) -> set[str]:
                context = MigrationContext.configure(
                    c, opts={"version_table": service_names("same").version_table}
                )
                return set(context.get_current_heads())

            assert await conn.run_sync(heads) == packaged_heads()
            await conn.run_sync(_run_alembic, config)  # nothing to do: no error, no change
            await conn.commit()
    finally:
        await engine.dispose()
    assert _sqlite_schema(fast_dir / "flowhost.db") == fast


async def test_a_new_sqlite_store_has_8k_pages_and_an_old_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    import sqlite3

    from flowhost.store.engine import SQLITE_PAGE_SIZE

    def page_size(path: Path) -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute("PRAGMA page_size").fetchone()[0])

    store = await Store.open(None, data_dir=tmp_path / "new", service="pages")
    await store.close()
    assert page_size(tmp_path / "new" / "flowhost.db") == SQLITE_PAGE_SIZE == 8192

    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "flowhost.db") as db:  # a store made with SQLite's default pages
        db.execute("PRAGMA page_size=4096")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE kept (x INTEGER)")
        db.execute("INSERT INTO kept VALUES (1)")
    store = await Store.open(None, data_dir=old, service="pages")
    await store.close()
    assert page_size(old / "flowhost.db") == 4096
    with sqlite3.connect(old / "flowhost.db") as db:
        assert db.execute("SELECT x FROM kept").fetchall() == [(1,)]
        assert "flowhost_trace_run_pages" in {
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
