"""``ChatRepository``: chat sessions and their turns, on any of the three backends.

Access rule: a session belongs to the ``user_id`` it was created with (``None`` is the anonymous
user, a user of its own). Calls that take ``user_id`` compare it for equality and raise
``SessionAccessDenied`` on a mismatch; trusted callers pass ``ANY_USER`` to skip the check.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import anyio
from sqlalchemy import ColumnElement, delete, exc, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flowhost.store.engine import SQLITE_BEGIN_OPTION, Dialect, translate_errors
from flowhost.store.errors import SessionAccessDenied, SessionNotFound, TurnNotFound
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
from flowhost.store.schema import Tables

__all__ = ["ChatRepository"]


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
    """Chat sessions and turns of one service. Built by ``Store``; share it freely."""

    def __init__(self, engine: AsyncEngine, tables: Tables, dialect: Dialect) -> None:
        self._engine = engine
        self._sessions = tables.session
        self._turns = tables.history
        # SQLite has one writer at a time: queue this process's writers here rather than on
        # the file lock, and take the write lock at BEGIN (busy_timeout covers other processes).
        self._sqlite_writer = anyio.Lock() if dialect == "sqlite" else None

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction, committed when the block ends without an exception."""
        if self._sqlite_writer is None:
            async with self._engine.begin() as conn:
                yield conn
            return
        async with self._sqlite_writer, self._engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_BEGIN_OPTION: "immediate"})
            async with conn.begin():
                yield conn

    async def _find(self, conn: AsyncConnection, session_id: str) -> SessionRecord | None:
        statement = select(self._sessions).where(self._sessions.c.session_id == session_id)
        row = (await conn.execute(statement)).mappings().first()
        return None if row is None else _session(row)

    async def _owned(
        self, conn: AsyncConnection, session_id: str, user_id: UserScope
    ) -> SessionRecord:
        record = await self._find(conn, session_id)
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
        """
        check_length("session_id", session_id, SESSION_ID_MAX)
        check_length("app_id", app_id, APP_ID_MAX)
        check_length("user_id", user_id, USER_ID_MAX)
        async with translate_errors("opening a session"):
            async with self._reading() as conn:
                found = await self._find(conn, session_id)
            if found is None:
                now = utcnow()
                created = SessionRecord(
                    session_id, app_id, user_id, title[:TITLE_MAX] if title else None, now, now, 0
                )
                try:
                    async with self._writing() as conn:
                        await conn.execute(
                            insert(self._sessions).values(
                                session_id=created.session_id,
                                app_id=created.app_id,
                                user_id=created.user_id,
                                title=created.title,
                                created_at=now,
                                updated_at=now,
                                turn_count=0,
                            )
                        )
                    return created
                except exc.IntegrityError:
                    pass  # created by a concurrent caller meanwhile: read theirs
                async with self._reading() as conn:
                    found = await self._find(conn, session_id)
                if found is None:
                    raise SessionNotFound(session_id)
        _check_access(found, user_id)
        return found

    async def get_session(self, session_id: str, *, user_id: UserScope) -> SessionRecord:
        """Raises ``SessionNotFound`` or ``SessionAccessDenied``."""
        async with translate_errors("reading a session"), self._reading() as conn:
            return await self._owned(conn, session_id, user_id)

    async def history(self, session_id: str, *, max_turns: int) -> list[TurnRecord]:
        """The last ``max_turns`` completed turns of the session, oldest first."""
        if max_turns <= 0:
            return []
        t = self._turns
        statement = (
            select(t)
            .where(t.c.session_id == session_id, t.c.status == "completed")
            .order_by(t.c.id.desc())
            .limit(max_turns)
        )
        async with translate_errors("reading chat history"), self._reading() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_turn(row) for row in reversed(rows)]

    async def append_turn(self, turn: NewTurn) -> TurnRecord:
        """Store a turn and bump the session's ``updated_at`` and ``turn_count``, atomically.

        Raises:
            SessionNotFound: no such session (create it first with ``ensure_session``).
        """
        s = self._sessions
        bump = (
            update(s)
            .where(s.c.session_id == turn.session_id)
            .values(turn_count=s.c.turn_count + 1, updated_at=utcnow())
        )
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
        async with translate_errors("appending a turn"), self._writing() as conn:
            # Update first: it locks the session row, so concurrent appends to one session
            # commit in id order.
            if (await conn.execute(bump)).rowcount == 0:
                raise SessionNotFound(turn.session_id)
            result = await conn.execute(insert(self._turns).values(**values))
            key = result.inserted_primary_key
            if key is None:
                raise RuntimeError("the database returned no id for the new turn")
            turn_id = int(key[0])
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
        async with translate_errors("listing sessions"), self._reading() as conn:
            total = (await conn.execute(count)).scalar_one()
            rows = (await conn.execute(page)).mappings().all()
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
        async with translate_errors("listing turns"), self._reading() as conn:
            total = (await conn.execute(count)).scalar_one()
            rows = (await conn.execute(page)).mappings().all()
        return [_turn(row) for row in rows], int(total)

    async def delete_session(self, session_id: str, *, user_id: UserScope) -> None:
        """Delete the session and its turns. Raises ``SessionNotFound``, ``SessionAccessDenied``."""
        async with translate_errors("deleting a session"), self._writing() as conn:
            await self._owned(conn, session_id, user_id)
            # ON DELETE CASCADE would do; deleting explicitly does not depend on it.
            await conn.execute(delete(self._turns).where(self._turns.c.session_id == session_id))
            await conn.execute(
                delete(self._sessions).where(self._sessions.c.session_id == session_id)
            )

    async def delete_turn(self, session_id: str, turn_id: int, *, user_id: UserScope) -> None:
        """Delete one turn.

        Raises ``SessionNotFound``, ``SessionAccessDenied`` or ``TurnNotFound``.
        """
        t, s = self._turns, self._sessions
        async with translate_errors("deleting a turn"), self._writing() as conn:
            await self._owned(conn, session_id, user_id)
            removed = await conn.execute(
                delete(t).where(t.c.session_id == session_id, t.c.id == turn_id)
            )
            if removed.rowcount == 0:
                raise TurnNotFound(session_id, turn_id)
            await conn.execute(
                update(s).where(s.c.session_id == session_id).values(turn_count=s.c.turn_count - 1)
            )
