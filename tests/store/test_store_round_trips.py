"""A chat turn's cost in statements, and turns that survive a dead pooled connection.

``open_session`` reads the session and its history in one statement; ``append_turn`` is one
transaction. Server pools do not ping on every checkout and do not roll back after a commit;
a pooled connection the server dropped (``KILL``, ``pg_terminate_backend``) costs a retry on a
fresh connection, never a user's turn.
"""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Connection, event, exc, text
from sqlalchemy.engine import ExceptionContext

from flowhost.store import (
    NewTurn,
    SessionAccessDenied,
    SessionNotFound,
    SessionOfAnotherApp,
    Store,
)
from flowhost.store import engine as store_engine
from flowhost.store.engine import create_store_engine, normalize_url, retry_on_disconnect
from flowhost.store.runner import SqliteThreadRunner

pytestmark = pytest.mark.anyio
OpenStore = Callable[..., Awaitable[Store]]


def _turn(session_id: str, n: int, status: str = "completed") -> NewTurn:
    return NewTurn(
        session_id=session_id,
        run_id=f"run-{n}",
        app_id="app",
        inputs={"question": f"问题 {n}", "n": n},
        outputs={"answer": f"a{n}"} if status == "completed" else None,
        status=status,  # type: ignore[arg-type]
    )


# Server backends only: SQLite has no connection to lose and no round trips to count.
servers_only = pytest.mark.parametrize(
    "store_url",
    [
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
    indirect=True,
)


async def test_open_session_reads_session_and_last_turns_in_order(store: Store) -> None:
    session_id = uuid.uuid4().hex
    created, history = await store.chats.open_session(
        session_id, app_id="app", user_id="u", title="标题", history_turns=20
    )
    assert history == []
    statuses = ["completed", "failed", "completed", "canceled"] * 7  # 28 turns, 14 completed
    for n, status in enumerate(statuses):
        await store.chats.append_turn(_turn(session_id, n, status))

    with pytest.raises(SessionOfAnotherApp, match="belongs to app 'app'"):
        await store.chats.open_session(session_id, app_id="other", user_id="u", history_turns=1)
    found, history = await store.chats.open_session(
        session_id, app_id="app", user_id="u", title="ignored", history_turns=10
    )
    assert (found.session_id, found.app_id, found.user_id, found.title) == (
        session_id,
        "app",
        "u",
        "标题",
    )
    assert found.created_at == created.created_at
    assert isinstance(found.updated_at, datetime)
    assert found.updated_at.tzinfo is not None
    assert found.updated_at >= found.created_at
    assert found.turn_count == len(statuses)
    completed = [n for n, status in enumerate(statuses) if status == "completed"]
    assert [inputs["n"] for inputs, _ in history] == completed[-10:]
    assert history[-1] == ({"question": "问题 26", "n": 26}, {"answer": "a26"})
    assert history == await store.chats.history_messages(session_id, 10)
    _, everything = await store.chats.open_session(
        session_id, app_id="app", user_id="u", history_turns=100
    )
    assert [inputs["n"] for inputs, _ in everything] == completed
    with pytest.raises(SessionAccessDenied):
        await store.chats.open_session(session_id, app_id="app", user_id=None, history_turns=5)


class _Calls:
    """Counts what the store's engine sends: statements, COMMITs, ROLLBACKs and pings."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        sync = store.engine.sync_engine
        dialect = sync.dialect
        for name in ("do_commit", "do_rollback", "do_ping"):
            monkeypatch.setattr(dialect, name, self._counting(name, getattr(dialect, name)))

        def statement(conn: Any, cursor: Any, sql: str, *_: Any) -> None:
            self.counts[sql.split(None, 1)[0].upper()] += 1

        event.listen(sync, "before_cursor_execute", statement)

    def _counting(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            self.counts[name] += 1
            return call(*args)

        return counted


@servers_only
async def test_a_turn_costs_one_read_and_one_write_transaction(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = uuid.uuid4().hex
    await store.chats.open_session(session_id, app_id="app", user_id=None, history_turns=20)
    await store.chats.append_turn(_turn(session_id, 0))
    calls = _Calls(store, monkeypatch)

    _, history = await store.chats.open_session(
        session_id, app_id="app", user_id=None, history_turns=20
    )
    assert len(history) == 1
    assert calls.counts == {"SELECT": 1, "do_rollback": 1}
    calls.counts.clear()
    await store.chats.append_turn(_turn(session_id, 1))
    # no ping before, no ROLLBACK after the COMMIT, no SELECT after the INSERT
    assert calls.counts == {"UPDATE": 1, "INSERT": 1, "do_commit": 1}


@servers_only
async def test_a_transaction_left_open_is_rolled_back_at_check_in(store: Store) -> None:
    """Only a committed connection skips the reset: work left uncommitted is not kept."""
    session_id = uuid.uuid4().hex
    table = f"flowhost_chat_session_{store.service}"
    insert = (
        f"INSERT INTO {table} (session_id, app_id, user_id, title, created_at, updated_at, "
        f"turn_count) VALUES ('{session_id}', 'app', NULL, NULL, '2026-01-01 00:00:00', "
        "'2026-01-01 00:00:00', 0)"
    )

    def insert_behind_sqlalchemys_back(conn: Connection) -> None:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(insert)  # the driver opens a transaction; SQLAlchemy does not know
        cursor.close()

    async with store.engine.connect() as conn:
        await conn.run_sync(insert_behind_sqlalchemys_back)
    with pytest.raises(SessionNotFound):
        await store.chats.get_session(session_id, user_id=None)


async def _kill(store: Store, url: str) -> None:
    """Have the server drop the store's one pooled connection."""
    mysql = store.dialect == "mysql"
    own_id = "SELECT CONNECTION_ID()" if mysql else "SELECT pg_backend_pid()"
    victim = await store.runner.read(lambda conn: conn.execute(text(own_id)).scalar_one())
    assert store.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    killer = create_store_engine(normalize_url(url))
    try:
        async with killer.connect() as conn:
            if mysql:
                await conn.execute(text(f"KILL {int(victim)}"))
            else:
                stmt = text("SELECT pg_terminate_backend(:pid)").bindparams(pid=int(victim))
                assert (await conn.execute(stmt)).scalar_one() is True
    finally:
        await killer.dispose()


@pytest.fixture
def disconnects(store: Store) -> Iterator[list[BaseException]]:
    """The disconnect errors that statements of the store's engine ran into."""
    seen: list[BaseException] = []

    def on_error(context: ExceptionContext) -> None:
        if context.is_disconnect:
            seen.append(context.original_exception)

    event.listen(store.engine.sync_engine, "handle_error", on_error)
    yield seen
    event.remove(store.engine.sync_engine, "handle_error", on_error)


@servers_only
@pytest.mark.parametrize("idle_ping", ["never", "always"])
async def test_a_killed_pooled_connection_does_not_fail_a_turn(
    store: Store,
    store_url: str,
    idle_ping: str,
    disconnects: list[BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``never``: the statement fails and the operation is retried; ``always``: the checkout
    ping finds the dead connection and the pool replaces it before any statement."""
    monkeypatch.setattr(store_engine, "IDLE_PING_S", math.inf if idle_ping == "never" else 0.0)
    session_id = uuid.uuid4().hex
    await store.chats.open_session(session_id, app_id="app", user_id="u", history_turns=20)
    await store.chats.append_turn(_turn(session_id, 0))

    await _kill(store, store_url)
    found, history = await store.chats.open_session(
        session_id, app_id="app", user_id="u", history_turns=20
    )
    assert (found.turn_count, len(history)) == (1, 1)
    await _kill(store, store_url)
    await store.chats.append_turn(_turn(session_id, 1))
    if idle_ping == "always":
        await _kill(store, store_url)
        await store.ping()  # the engine's users other than the runner have the ping only

    session = await store.chats.get_session(session_id, user_id="u")
    turns, total = await store.chats.list_turns(session_id, limit=10, offset=0)
    assert (session.turn_count, total) == (2, 2)  # the retried write applied once
    assert [t.inputs["n"] for t in turns] == [0, 1]
    if idle_ping == "never":
        assert len(disconnects) == 2  # the read and the write each retried once
    else:
        assert disconnects == []


def _gone() -> exc.DBAPIError:
    gone = Exception("server has gone away")
    return exc.OperationalError("SELECT 1", {}, gone, connection_invalidated=True)


class _FakeRunner:
    """Runs an operation like a runner; fails the first ``fail`` attempts as told."""

    def __init__(self, fail: int, when: str, error: Callable[[], exc.DBAPIError] = _gone) -> None:
        self.fail, self.when, self.error = fail, when, error
        self.attempts = 0

    async def __call__(self, operation: Callable[[Connection], Any]) -> Any:
        self.attempts += 1
        failing = self.attempts <= self.fail
        if failing and self.when == "statement":
            raise self.error()
        result = operation(None)  # type: ignore[arg-type]
        if failing and self.when == "commit":
            raise self.error()
        return result


@pytest.mark.parametrize("write", [False, True])
async def test_retry_after_a_lost_connection(write: bool) -> None:
    runner = _FakeRunner(fail=1, when="statement")
    assert await retry_on_disconnect(runner, lambda conn: "ok", write=write) == "ok"
    assert runner.attempts == 2


async def test_a_read_is_retried_even_when_lost_at_its_end() -> None:
    runner = _FakeRunner(fail=1, when="commit")
    assert await retry_on_disconnect(runner, lambda conn: "ok", write=False) == "ok"
    assert runner.attempts == 2


async def test_a_write_lost_at_commit_is_not_sent_twice() -> None:
    runner = _FakeRunner(fail=1, when="commit")
    with pytest.raises(exc.OperationalError):
        await retry_on_disconnect(runner, lambda conn: "ok", write=True)
    assert runner.attempts == 1


async def test_only_one_retry_and_only_for_disconnects() -> None:
    twice = _FakeRunner(fail=2, when="statement")
    with pytest.raises(exc.OperationalError):
        await retry_on_disconnect(twice, lambda conn: "ok", write=False)
    assert twice.attempts == 2

    def integrity() -> exc.DBAPIError:
        return exc.IntegrityError("INSERT", {}, Exception("duplicate key"))

    other = _FakeRunner(fail=1, when="statement", error=integrity)
    with pytest.raises(exc.IntegrityError):
        await retry_on_disconnect(other, lambda conn: "ok", write=True)
    assert other.attempts == 1


async def test_sqlite_quick_operations_run_on_the_event_loop_thread(tmp_path: Any) -> None:
    """A chat turn's read and write skip the thread hop on SQLite; other reads and writes still
    run in worker threads."""
    import threading

    store = await Store.open(None, data_dir=tmp_path, service="quick")
    try:
        threads: list[int] = []

        def op(conn: Connection) -> int:
            threads.append(threading.get_ident())
            return int(conn.execute(text("SELECT 1")).scalar_one())

        assert await store.runner.read_quick(op) == 1
        assert await store.runner.write_quick(op) == 1
        assert await store.runner.read(op) == 1
        assert await store.runner.write(op) == 1
        here = threading.get_ident()
        assert threads[:2] == [here, here]
        assert here not in threads[2:]
    finally:
        await store.close()


async def test_sqlite_quick_write_waits_in_a_thread_while_another_process_writes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop never blocks on SQLite's write lock: held by another connection (another
    worker process), a quick write goes to a thread, waits there and then lands."""
    import sqlite3
    import threading

    import anyio

    store = await Store.open(None, data_dir=tmp_path, service="quick")
    other = sqlite3.connect(tmp_path / "flowhost.db", isolation_level=None)
    try:
        session_id = uuid.uuid4().hex
        await store.chats.open_session(session_id, app_id="app", user_id=None, history_turns=5)
        runner = store.runner
        assert isinstance(runner, SqliteThreadRunner)
        in_thread: list[int] = []
        real = runner._write

        def spy(operation: Callable[[Connection], Any]) -> Any:
            in_thread.append(threading.get_ident())
            return real(operation)

        monkeypatch.setattr(runner, "_write", spy)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.chats.append_turn, _turn(session_id, 0))
            # the loop is free while the write waits in its thread: release the lock
            await anyio.wait_all_tasks_blocked()
            other.execute("COMMIT")
        _, history = await store.chats.open_session(
            session_id, app_id="app", user_id=None, history_turns=5
        )
        assert [inputs["n"] for inputs, _ in history] == [0]
        assert len(in_thread) == 1
        assert in_thread[0] != threading.get_ident()
    finally:
        other.close()
        await store.close()


async def test_sqlite_write_lock_held_past_the_busy_timeout_is_store_unavailable(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quick write that finds the lock taken waits in a thread for busy_timeout; past it the
    caller gets StoreUnavailable (a clear 503), as any other database that cannot answer."""
    import sqlite3

    from flowhost.store import StoreUnavailable

    pragmas = tuple(
        "PRAGMA busy_timeout=50" if p.startswith("PRAGMA busy_timeout") else p
        for p in store_engine._SQLITE_PRAGMAS
    )
    monkeypatch.setattr(store_engine, "_SQLITE_PRAGMAS", pragmas)
    store = await Store.open(None, data_dir=tmp_path, service="quick")
    other = sqlite3.connect(tmp_path / "flowhost.db", isolation_level=None)
    try:
        session_id = uuid.uuid4().hex
        await store.chats.open_session(session_id, app_id="app", user_id=None, history_turns=5)
        other.execute("BEGIN IMMEDIATE")  # held for the whole call
        with pytest.raises(StoreUnavailable, match="database is locked"):
            await store.chats.append_turn(_turn(session_id, 0))
        other.execute("ROLLBACK")
        await store.chats.append_turn(_turn(session_id, 1))  # the lock is free again
    finally:
        other.close()
        await store.close()


async def test_sqlite_quick_writes_checkpoint_the_wal_in_a_thread(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick connection never checkpoints (that may fsync); every CHECKPOINT_EVERY quick
    commits a passive checkpoint runs in a worker thread and moves the WAL into the database."""
    import threading

    from flowhost.store import runner as store_runner

    monkeypatch.setattr(store_runner, "CHECKPOINT_EVERY", 5)
    store = await Store.open(None, data_dir=tmp_path, service="quick")
    try:
        runner = store.runner
        assert isinstance(runner, SqliteThreadRunner)
        ran_in: list[int] = []
        real = runner._checkpoint_wal

        def spy() -> None:
            ran_in.append(threading.get_ident())
            real()

        monkeypatch.setattr(runner, "_checkpoint_wal", spy)
        session_id = uuid.uuid4().hex
        await store.chats.open_session(session_id, app_id="app", user_id=None, history_turns=5)
        for n in range(4):
            await store.chats.append_turn(_turn(session_id, n))
        assert ran_in == []  # 5 quick commits so far: the session and 4 turns
        await store.chats.append_turn(_turn(session_id, 4))
        checkpoint = runner._checkpoint
        assert checkpoint is not None
        await checkpoint
        assert len(ran_in) == 1
        assert ran_in[0] != threading.get_ident()

        def wal_state(conn: Connection) -> tuple[int, int, int]:
            busy, log, done = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            return int(busy), int(log), int(done)

        busy, log, done = await runner.read(wal_state)
        assert busy == 0
        assert log == done
    finally:
        await store.close()


def test_sqlite_binds_none_as_null_through_the_registered_adapter() -> None:
    # flowhost.store.engine registers an adapter for None (binding it otherwise costs two
    # failed attribute lookups); a None must still be stored as NULL, not as text or 0
    assert sqlite3.adapters[type(None), sqlite3.PrepareProtocol] is store_engine._null
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(None, None), (1, "x")])
    assert db.execute("SELECT a, b, typeof(a), typeof(b) FROM t").fetchall() == [
        (None, None, "null", "null"),
        (1, "x", "integer", "text"),
    ]
    assert db.execute("SELECT count(*) FROM t WHERE a IS NULL AND b IS ?", (None,)).fetchone() == (
        1,
    )
