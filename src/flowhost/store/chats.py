"""``ChatRepository``: chat sessions and their turns, on any of the three backends.

Access rule: a session belongs to the ``user_id`` it was created with (``None`` is the anonymous
user, a user of its own). Calls that take ``user_id`` compare it for equality and raise
``SessionAccessDenied`` on a mismatch; trusted callers pass ``ANY_USER`` to skip the check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Select,
    bindparam,
    delete,
    exc,
    func,
    insert,
    null,
    select,
    type_coerce,
    union_all,
    update,
)

from flowhost.store.engine import retry_on_disconnect, translate_errors
from flowhost.store.errors import (
    SessionAccessDenied,
    SessionNotFound,
    SessionOfAnotherApp,
    TurnNotFound,
)
from flowhost.store.records import (
    APP_ID_MAX,
    SESSION_ID_MAX,
    TITLE_MAX,
    USER_ID_MAX,
    AnyUser,
    NewTurn,
    SessionRecord,
    TurnRecord,
    TurnStatus,
    UserScope,
    check_length,
    utcnow,
)
from flowhost.store.runner import Runner
from flowhost.store.schema import Tables

__all__ = ["ChatRepository", "Message"]

T = TypeVar("T")
# A stored turn as chat history: (inputs, outputs).
Message = tuple[dict[str, Any], dict[str, Any] | None]


def _check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")


def _check_access(record: SessionRecord, user_id: UserScope) -> None:
    if not isinstance(user_id, AnyUser) and record.user_id != user_id:
        raise SessionAccessDenied(record.session_id)


def _session(row: Mapping[Any, Any]) -> SessionRecord:
    return SessionRecord(
        session_id=row["session_id"],
        app_id=row["app_id"],
        user_id=row["user_id"],
        title=row["title"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        turn_count=row["turn_count"],
    )


def _turn(row: Mapping[Any, Any]) -> TurnRecord:
    return TurnRecord(
        id=int(row["id"]),
        session_id=row["session_id"],
        run_id=row["run_id"],
        app_id=row["app_id"],
        inputs=row["inputs"],
        outputs=row["outputs"],
        status=cast(TurnStatus, row["status"]),
        error=row["error"],
        protocol=row["protocol"],
        created_at=row["created_at"],
        duration_ms=row["duration_ms"],
        usage=row["usage"],
    )


class ChatRepository:
    """Chat sessions and turns of one service. Built by ``Store``; share it freely.

    Every call is one operation of the store's ``Runner`` (see ``flowhost.store.runner``): a
    synchronous function of one connection, in one transaction, run once more when its pooled
    connection turned out to be gone (``retry_on_disconnect``).

    A chat turn costs two operations and, on MySQL/MariaDB, five round trips: ``open_session``
    reads the session and its history in one SELECT (then ROLLBACK); ``append_turn`` sends
    UPDATE, INSERT and COMMIT. A new session adds one INSERT and COMMIT.
    """

    def __init__(self, runner: Runner, tables: Tables) -> None:
        self._db = runner
        self._sessions = s = tables.session
        self._turns = t = tables.history
        # The statements of a chat turn, built once: building one costs more than running it.
        self._find_session = select(s).where(s.c.session_id == bindparam("b_session"))
        self._create_session = insert(s)
        self._last_turns = (
            select(t)
            .where(t.c.session_id == bindparam("b_session"), t.c.status == "completed")
            .order_by(t.c.id.desc())
            .limit(bindparam("b_limit"))
        )
        self._last_messages = (
            select(t.c.inputs, t.c.outputs)
            .where(t.c.session_id == bindparam("b_session"), t.c.status == "completed")
            .order_by(t.c.id.desc())
            .limit(bindparam("b_limit"))
        )
        # The session and its last completed turns in one statement: the session's row (no
        # turn_id; none when there is no such session) and one row per turn, in any order.
        # Each row carries either the session's columns or a turn's, so each value is decoded
        # once; typed NULLs give the union's columns their result types. MySQL and PostgreSQL
        # take the LIMITed member as it is (a derived table costs MariaDB a temporary table,
        # and an ORDER BY over the union another); SQLite needs it as a subquery.
        turn = (t.c.id.label("turn_id"), t.c.inputs, t.c.outputs)
        no_turn = [type_coerce(null(), c.type).label(c.name) for c in turn]
        no_session = [null().label(c.name) for c in s.c]
        session_row = select(*s.c, *no_turn).where(s.c.session_id == bindparam("b_session"))

        def last_turns(*columns: Any) -> Select[Any]:
            return (
                select(*columns)
                .where(t.c.session_id == bindparam("b_session"), t.c.status == "completed")
                .order_by(t.c.id.desc())
                .limit(bindparam("b_limit"))
            )

        self._session_with_messages: CompoundSelect[Any] = union_all(
            session_row, last_turns(*no_session, *turn)
        )
        nested = last_turns(*turn).subquery("last_turns")
        self._session_with_messages_sqlite: CompoundSelect[Any] = union_all(
            session_row, select(*no_session, *nested.c)
        )
        self._bump_session = (
            update(s)
            .where(s.c.session_id == bindparam("b_session"))
            .values(turn_count=s.c.turn_count + 1, updated_at=bindparam("b_now"))
        )
        self._insert_turn = insert(t)

    async def _read(self, operation: Callable[[Connection], T]) -> T:
        return await retry_on_disconnect(self._db.read, operation, write=False)

    async def _read_quick(self, operation: Callable[[Connection], T]) -> T:
        return await retry_on_disconnect(self._db.read_quick, operation, write=False)

    async def _write(self, operation: Callable[[Connection], T]) -> T:
        return await retry_on_disconnect(self._db.write, operation, write=True)

    async def _write_quick(self, operation: Callable[[Connection], T]) -> T:
        return await retry_on_disconnect(self._db.write_quick, operation, write=True)

    def _find(self, conn: Connection, session_id: str) -> SessionRecord | None:
        row = conn.execute(self._find_session, {"b_session": session_id}).mappings().first()
        return None if row is None else _session(row)

    def _messages(self, conn: Connection, session_id: str, max_turns: int) -> list[Message]:
        if max_turns <= 0:
            return []
        params = {"b_session": session_id, "b_limit": max_turns}
        rows = conn.execute(self._last_messages, params).all()
        return [(row[0], row[1]) for row in reversed(rows)]

    def _find_with_messages(
        self, conn: Connection, session_id: str, user_id: str | None, max_turns: int
    ) -> tuple[SessionRecord | None, list[Message]]:
        """The session and, when ``user_id`` owns it, its last ``max_turns`` completed turns."""
        params = {"b_session": session_id, "b_limit": max(max_turns, 0)}
        sqlite = conn.dialect.name == "sqlite"
        statement = self._session_with_messages_sqlite if sqlite else self._session_with_messages
        found: SessionRecord | None = None
        turns: list[tuple[int, Message]] = []
        for row in conn.execute(statement, params).all():
            if row.turn_id is None:
                found = _session(row._mapping)
            else:
                turns.append((row.turn_id, (row.inputs, row.outputs)))
        if found is None or found.user_id != user_id:
            return found, []  # created by the caller, or refused by _check_access
        turns.sort(key=lambda turn: turn[0])
        return found, [message for _, message in turns]

    def _owned(self, conn: Connection, session_id: str, user_id: UserScope) -> SessionRecord:
        record = self._find(conn, session_id)
        if record is None:
            raise SessionNotFound(session_id)
        _check_access(record, user_id)
        return record

    async def ensure_session(
        self, session_id: str, *, app_id: str, user_id: str | None, title: str | None = None
    ) -> SessionRecord:
        """Return the session, creating it when absent (race-safe across processes).

        ``title`` (cut to 200 characters) is stored only when the session is created.

        Raises:
            SessionAccessDenied: the session exists with a different ``user_id``.
            SessionOfAnotherApp: the session exists with a different ``app_id``.
        """
        record, _ = await self.open_session(
            session_id, app_id=app_id, user_id=user_id, title=title, history_turns=0
        )
        return record

    async def open_session(
        self,
        session_id: str,
        *,
        app_id: str,
        user_id: str | None,
        title: str | None = None,
        history_turns: int,
    ) -> tuple[SessionRecord, list[Message]]:
        """``ensure_session`` plus the session's chat history, read together.

        The history is ``history_messages(session_id, history_turns)``: empty for a session
        created now. A chat turn needs both, and one read costs half of two.

        Raises:
            SessionAccessDenied: the session exists with a different ``user_id``.
            SessionOfAnotherApp: the session exists with a different ``app_id`` (its history
                would be another flow's, and its turns would mix two apps).
        """
        check_length("session_id", session_id, SESSION_ID_MAX)
        check_length("app_id", app_id, APP_ID_MAX)
        check_length("user_id", user_id, USER_ID_MAX)

        def read(conn: Connection) -> tuple[SessionRecord | None, list[Message]]:
            return self._find_with_messages(conn, session_id, user_id, history_turns)

        async with translate_errors("opening a session"):
            found, messages = await self._read_quick(read)
            if found is None:
                now = utcnow()
                created = SessionRecord(
                    session_id, app_id, user_id, title[:TITLE_MAX] if title else None, now, now, 0
                )
                row = {
                    "session_id": created.session_id,
                    "app_id": created.app_id,
                    "user_id": created.user_id,
                    "title": created.title,
                    "created_at": now,
                    "updated_at": now,
                    "turn_count": 0,
                }
                try:
                    await self._write_quick(lambda conn: conn.execute(self._create_session, row))
                    return created, []
                except exc.IntegrityError:
                    pass  # created by a concurrent caller meanwhile: read theirs
                found, messages = await self._read(read)
                if found is None:
                    raise SessionNotFound(session_id)
        _check_access(found, user_id)
        if found.app_id != app_id:
            raise SessionOfAnotherApp(session_id, found.app_id)
        return found, messages

    async def get_session(self, session_id: str, *, user_id: UserScope) -> SessionRecord:
        """Raises ``SessionNotFound`` or ``SessionAccessDenied``."""
        async with translate_errors("reading a session"):
            return await self._read(lambda conn: self._owned(conn, session_id, user_id))

    async def history(self, session_id: str, *, max_turns: int) -> list[TurnRecord]:
        """The last ``max_turns`` completed turns of the session, oldest first."""
        if max_turns <= 0:
            return []
        params = {"b_session": session_id, "b_limit": max_turns}
        async with translate_errors("reading chat history"):
            rows = await self._read(
                lambda conn: conn.execute(self._last_turns, params).mappings().all()
            )
        return [_turn(row) for row in reversed(rows)]

    async def history_messages(self, session_id: str, max_turns: int) -> list[Message]:
        """(inputs, outputs) of the last ``max_turns`` completed turns, oldest first.

        What a chat flow's history input needs, without the rest of each turn.
        """
        async with translate_errors("reading chat history"):
            return await self._read(lambda conn: self._messages(conn, session_id, max_turns))

    async def append_turn(self, turn: NewTurn) -> TurnRecord:
        """Store a turn and bump the session's ``updated_at`` and ``turn_count``, atomically.

        Raises:
            SessionNotFound: no such session (create it first with ``ensure_session``).
        """
        bump = {"b_session": turn.session_id, "b_now": utcnow()}
        values = {
            "session_id": turn.session_id,
            "run_id": turn.run_id,
            "app_id": turn.app_id,
            "inputs": turn.inputs,
            "outputs": turn.outputs,
            "status": turn.status,
            "error": turn.error,
            "protocol": turn.protocol,
            "created_at": turn.created_at,
            "duration_ms": turn.duration_ms,
            "usage": turn.usage,
        }

        def append(conn: Connection) -> int:
            # Update first: it locks the session row, so concurrent appends to one session
            # commit in id order.
            if conn.execute(self._bump_session, bump).rowcount == 0:
                raise SessionNotFound(turn.session_id)
            key = conn.execute(self._insert_turn, values).inserted_primary_key
            if key is None:
                raise RuntimeError("the database returned no id for the new turn")
            return int(key[0])

        async with translate_errors("appending a turn"):
            turn_id = await self._write_quick(append)
        return _turn({"id": turn_id, **values})

    async def list_sessions(
        self, *, user_id: UserScope, app_id: str | None, limit: int, offset: int
    ) -> tuple[list[SessionRecord], int]:
        """One page of sessions, most recently updated first, and the total count.

        ``user_id`` selects one user's sessions (``None``: the anonymous ones; ``ANY_USER``:
        everyone's); ``app_id=None`` does not filter by app.
        """
        _check_page(limit, offset)
        s = self._sessions
        where: list[ColumnElement[bool]] = []
        if isinstance(user_id, str):
            where.append(s.c.user_id == user_id)
        elif user_id is None:
            where.append(s.c.user_id.is_(None))
        if app_id is not None:
            where.append(s.c.app_id == app_id)
        page = (
            select(s)
            .where(*where)
            .order_by(s.c.updated_at.desc(), s.c.session_id.desc())
            .limit(limit)
            .offset(offset)
        )
        count = select(func.count()).select_from(s).where(*where)

        def read(conn: Connection) -> tuple[int, Any]:
            return conn.execute(count).scalar_one(), conn.execute(page).mappings().all()

        async with translate_errors("listing sessions"):
            total, rows = await self._read(read)
        return [_session(row) for row in rows], int(total)

    async def list_turns(
        self, session_id: str, *, limit: int, offset: int
    ) -> tuple[list[TurnRecord], int]:
        """One page of the session's turns of every status, oldest first, and the total count.

        Does not check access: call ``get_session`` first.
        """
        _check_page(limit, offset)
        t = self._turns
        page = (
            select(t)
            .where(t.c.session_id == session_id)
            .order_by(t.c.id)
            .limit(limit)
            .offset(offset)
        )
        count = select(func.count()).select_from(t).where(t.c.session_id == session_id)

        def read(conn: Connection) -> tuple[int, Any]:
            return conn.execute(count).scalar_one(), conn.execute(page).mappings().all()

        async with translate_errors("listing turns"):
            total, rows = await self._read(read)
        return [_turn(row) for row in rows], int(total)

    async def delete_session(self, session_id: str, *, user_id: UserScope) -> None:
        """Delete the session and its turns. Raises ``SessionNotFound``, ``SessionAccessDenied``."""

        def remove(conn: Connection) -> None:
            self._owned(conn, session_id, user_id)
            # ON DELETE CASCADE would do; deleting explicitly does not depend on it.
            conn.execute(delete(self._turns).where(self._turns.c.session_id == session_id))
            conn.execute(delete(self._sessions).where(self._sessions.c.session_id == session_id))

        async with translate_errors("deleting a session"):
            await self._write(remove)

    async def delete_turn(self, session_id: str, turn_id: int, *, user_id: UserScope) -> None:
        """Delete one turn.

        Raises ``SessionNotFound``, ``SessionAccessDenied`` or ``TurnNotFound``.
        """
        t, s = self._turns, self._sessions

        def remove(conn: Connection) -> None:
            self._owned(conn, session_id, user_id)
            removed = conn.execute(delete(t).where(t.c.session_id == session_id, t.c.id == turn_id))
            if removed.rowcount == 0:
                raise TurnNotFound(session_id, turn_id)
            conn.execute(
                update(s).where(s.c.session_id == session_id).values(turn_count=s.c.turn_count - 1)
            )

        async with translate_errors("deleting a turn"):
            await self._write(remove)
