"""Concurrent writers through two Store instances (two pools, as two workers would have)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import anyio
import pytest

from flowhost.store import NewTurn, Store

pytestmark = pytest.mark.anyio
OpenStore = Callable[..., Awaitable[Store]]
SESSIONS = 10
TURNS = 5


def _turn(session_id: str, n: int) -> NewTurn:
    return NewTurn(
        session_id=session_id,
        run_id=f"{session_id[:8]}-{n}",
        app_id="app",
        inputs={"question": f"第{n}个问题", "n": n},
        outputs={"answer": f"第{n}个回答"},
    )


async def _sessions(store: Store) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(SESSIONS)]
    for session_id in ids:
        await store.chats.ensure_session(session_id, app_id="app", user_id="u")
    return ids


async def test_50_concurrent_appends_keep_every_turn(open_store: OpenStore) -> None:
    stores = [await open_store(), await open_store()]
    ids = await _sessions(stores[0])

    async with anyio.create_task_group() as tg:
        for n in range(TURNS):
            for i, session_id in enumerate(ids):
                tg.start_soon(stores[(i + n) % 2].chats.append_turn, _turn(session_id, n))

    for session_id in ids:
        turns, total = await stores[1].chats.list_turns(session_id, limit=100, offset=0)
        assert total == TURNS
        assert sorted(t.inputs["n"] for t in turns) == list(range(TURNS))
        session = await stores[0].chats.get_session(session_id, user_id="u")
        assert session.turn_count == TURNS  # no lost update of the counter


async def test_concurrent_sessions_keep_their_turn_order(open_store: OpenStore) -> None:
    stores = [await open_store(), await open_store()]
    ids = await _sessions(stores[0])

    async def converse(i: int, session_id: str) -> None:
        # One conversation's turns follow each other; they alternate between the two stores.
        for n in range(TURNS):
            await stores[(i + n) % 2].chats.append_turn(_turn(session_id, n))

    async with anyio.create_task_group() as tg:
        for i, session_id in enumerate(ids):
            tg.start_soon(converse, i, session_id)

    for i, session_id in enumerate(ids):
        history = await stores[i % 2].chats.history(session_id, max_turns=TURNS)
        assert [t.inputs["n"] for t in history] == list(range(TURNS))
        assert [t.id for t in history] == sorted(t.id for t in history)
        last_two = await stores[0].chats.history(session_id, max_turns=2)
        assert [t.outputs for t in last_two] == [{"answer": "第3个回答"}, {"answer": "第4个回答"}]
