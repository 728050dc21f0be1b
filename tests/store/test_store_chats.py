"""ChatRepository conformance: the same behaviour on SQLite, MariaDB/MySQL and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from flowhost.store import (
    ANY_USER,
    NewTurn,
    SessionAccessDenied,
    SessionNotFound,
    Store,
    TurnNotFound,
    TurnStatus,
)

pytestmark = pytest.mark.anyio
OpenStore = Callable[..., Awaitable[Store]]


def sid() -> str:
    return uuid.uuid4().hex


def turn(session_id: str, n: int, status: TurnStatus = "completed", **kw: Any) -> NewTurn:
    outputs = {"answer": f"a{n}"} if status == "completed" else None
    return NewTurn(
        session_id=session_id,
        run_id=f"run-{n}",
        app_id="app",
        inputs={"question": f"q{n}"},
        outputs=outputs,
        status=status,
        **kw,
    )


async def test_ensure_session_creates_then_reuses(store: Store) -> None:
    session_id = sid()
    created = await store.chats.ensure_session(
        session_id, app_id="app", user_id="alice", title="你好" * 150
    )
    assert created.turn_count == 0
    assert created.title == "你好" * 100
    assert created.created_at == created.updated_at
    assert created.created_at.tzinfo is UTC
    assert abs(datetime.now(UTC) - created.created_at) < timedelta(minutes=1)
    again = await store.chats.ensure_session(
        session_id, app_id="app", user_id="alice", title="other"
    )
    assert again == created
    assert await store.chats.get_session(session_id, user_id="alice") == created


@pytest.mark.parametrize(("owner", "caller"), [("alice", "bob"), ("alice", None), (None, "alice")])
async def test_sessions_are_isolated_per_user(
    store: Store, owner: str | None, caller: str | None
) -> None:
    session_id = sid()
    await store.chats.ensure_session(session_id, app_id="app", user_id=owner)
    with pytest.raises(SessionAccessDenied):
        await store.chats.ensure_session(session_id, app_id="app", user_id=caller)
    with pytest.raises(SessionAccessDenied):
        await store.chats.get_session(session_id, user_id=caller)
    with pytest.raises(SessionAccessDenied):
        await store.chats.delete_session(session_id, user_id=caller)
    assert (await store.chats.get_session(session_id, user_id=ANY_USER)).user_id == owner


async def test_get_missing_session(store: Store) -> None:
    with pytest.raises(SessionNotFound) as caught:
        await store.chats.get_session("missing" * 5, user_id=None)
    assert "missing" in caught.value.message


async def test_concurrent_ensure_session_creates_once(open_store: OpenStore) -> None:
    stores = [await open_store(), await open_store()]
    session_id = sid()
    results = []

    async def ensure(i: int) -> None:
        store = stores[i % 2]
        results.append(await store.chats.ensure_session(session_id, app_id="app", user_id="u"))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(ensure, i)
    assert len({r.created_at for r in results}) == 1
    _, total = await stores[0].chats.list_sessions(user_id="u", app_id=None, limit=10, offset=0)
    assert total == 1


async def test_history_returns_last_completed_turns_oldest_first(store: Store) -> None:
    session_id = sid()
    await store.chats.ensure_session(session_id, app_id="app", user_id=None)
    statuses: list[TurnStatus] = [
        "completed", "failed", "completed", "canceled", "completed", "completed", "failed",
    ]  # fmt: skip
    appended = [
        await store.chats.append_turn(turn(session_id, n, status, error=_error(status)))
        for n, status in enumerate(statuses)
    ]
    assert [t.id for t in appended] == sorted(t.id for t in appended)
    history = await store.chats.history(session_id, max_turns=3)
    assert [t.run_id for t in history] == ["run-2", "run-4", "run-5"]
    assert all(t.status == "completed" for t in history)
    everything = await store.chats.history(session_id, max_turns=100)
    assert [t.run_id for t in everything] == ["run-0", "run-2", "run-4", "run-5"]
    assert await store.chats.history(session_id, max_turns=0) == []
    assert await store.chats.history(sid(), max_turns=5) == []

    turns, total = await store.chats.list_turns(session_id, limit=100, offset=0)
    assert total == len(statuses)
    assert [t.status for t in turns] == statuses
    assert turns == appended
    page, total = await store.chats.list_turns(session_id, limit=2, offset=5)
    assert [t.run_id for t in page] == ["run-5", "run-6"]
    assert total == len(statuses)


def _error(status: TurnStatus) -> dict[str, Any] | None:
    return None if status == "completed" else {"code": status.upper(), "message": "x"}


async def test_append_turn_bumps_the_session(store: Store) -> None:
    session_id = sid()
    created = await store.chats.ensure_session(session_id, app_id="app", user_id="u")
    await store.chats.append_turn(turn(session_id, 0))
    await store.chats.append_turn(turn(session_id, 1, "failed"))
    session = await store.chats.get_session(session_id, user_id="u")
    assert session.turn_count == 2
    assert session.updated_at > created.updated_at
    assert session.created_at == created.created_at


async def test_append_turn_to_missing_session(store: Store) -> None:
    missing = sid()
    with pytest.raises(SessionNotFound):
        await store.chats.append_turn(turn(missing, 0))
    assert (await store.chats.list_turns(missing, limit=10, offset=0)) == ([], 0)


async def test_turn_fields_round_trip(store: Store) -> None:
    session_id = sid()
    await store.chats.ensure_session(session_id, app_id="app", user_id=None)
    inputs = {
        "question": "杭州明天天气怎么样？😀",
        "chat_history": [{"inputs": {"q": "你好"}, "outputs": {"a": "您好！"}}],
        "nested": {"list": [1, 2.5, True, None, "引号\"和'反斜杠\\"], "empty": {}},
    }
    given = NewTurn(
        session_id=session_id,
        run_id="r" * 64,
        app_id="a" * 128,
        inputs=inputs,
        outputs={"answer": "明天晴，最高 25℃。", "refs": [{"title": "天气", "score": 0.93}]},
        status="completed",
        error=None,
        protocol="dashscope",
        duration_ms=1234,
        usage={"models": [{"model_id": "qwen-plus", "input_tokens": 12, "output_tokens": 34}]},
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone_plus8()),
    )
    stored = await store.chats.append_turn(given)
    [read] = await store.chats.history(session_id, max_turns=1)
    assert read == stored
    assert read.inputs == inputs
    assert read.outputs == given.outputs
    assert read.usage == given.usage
    assert read.protocol == "dashscope"
    assert read.duration_ms == 1234
    assert read.created_at == given.created_at
    assert read.created_at.tzinfo is UTC
    assert read.created_at.hour == 19

    failed = await store.chats.append_turn(
        turn(session_id, 1, "failed", error={"code": "NodeError", "message": "节点失败", "x": [1]})
    )
    turns, _ = await store.chats.list_turns(session_id, limit=10, offset=0)
    assert turns[-1] == failed
    assert turns[-1].error == {"code": "NodeError", "message": "节点失败", "x": [1]}
    assert turns[-1].outputs is None


def timezone_plus8() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=8))


async def test_list_sessions_newest_first_with_filters(store: Store) -> None:
    alice = [sid() for _ in range(5)]
    for i, session_id in enumerate(alice):
        await store.chats.ensure_session(
            session_id, app_id="app1" if i % 2 else "app2", user_id="alice"
        )
    bob = sid()
    await store.chats.ensure_session(bob, app_id="app1", user_id="bob")
    anonymous = sid()
    await store.chats.ensure_session(anonymous, app_id="app1", user_id=None)
    await store.chats.append_turn(turn(alice[1], 0))  # now alice's most recent

    chats = store.chats
    page, total = await chats.list_sessions(user_id="alice", app_id=None, limit=2, offset=0)
    assert total == 5
    assert [s.session_id for s in page] == [alice[1], alice[4]]
    page, total = await chats.list_sessions(user_id="alice", app_id=None, limit=2, offset=2)
    assert [s.session_id for s in page] == [alice[3], alice[2]]
    page, _ = await chats.list_sessions(user_id="alice", app_id=None, limit=2, offset=4)
    assert [s.session_id for s in page] == [alice[0]]
    page, total = await chats.list_sessions(user_id="alice", app_id=None, limit=2, offset=10)
    assert (page, total) == ([], 5)

    page, total = await chats.list_sessions(user_id="alice", app_id="app1", limit=10, offset=0)
    assert [s.session_id for s in page] == [alice[1], alice[3]]
    assert total == 2
    page, total = await chats.list_sessions(user_id=None, app_id=None, limit=10, offset=0)
    assert [s.session_id for s in page] == [anonymous]
    page, total = await chats.list_sessions(user_id=ANY_USER, app_id="app1", limit=10, offset=0)
    assert total == 4
    assert page[0].session_id == alice[1]
    assert {s.session_id for s in page} == {alice[1], alice[3], bob, anonymous}
    with pytest.raises(ValueError, match="negative"):
        await chats.list_sessions(user_id=None, app_id=None, limit=-1, offset=0)


async def test_delete_session_removes_its_turns(store: Store) -> None:
    session_id, other = sid(), sid()
    for s in (session_id, other):
        await store.chats.ensure_session(s, app_id="app", user_id="u")
        for n in range(3):
            await store.chats.append_turn(turn(s, n))
    await store.chats.delete_session(session_id, user_id="u")
    with pytest.raises(SessionNotFound):
        await store.chats.get_session(session_id, user_id="u")
    assert await store.chats.list_turns(session_id, limit=10, offset=0) == ([], 0)
    assert await store.chats.history(session_id, max_turns=10) == []
    assert len(await store.chats.history(other, max_turns=10)) == 3
    with pytest.raises(SessionNotFound):
        await store.chats.delete_session(session_id, user_id="u")
    # The id can start a new conversation afterwards.
    fresh = await store.chats.ensure_session(session_id, app_id="app", user_id="v")
    assert fresh.turn_count == 0
    await store.chats.delete_session(other, user_id=ANY_USER)


async def test_delete_one_turn(store: Store) -> None:
    session_id, other = sid(), sid()
    await store.chats.ensure_session(session_id, app_id="app", user_id="u")
    await store.chats.ensure_session(other, app_id="app", user_id="u")
    turns = [await store.chats.append_turn(turn(session_id, n)) for n in range(3)]
    foreign = await store.chats.append_turn(turn(other, 9))

    await store.chats.delete_turn(session_id, turns[1].id, user_id="u")
    assert [t.run_id for t in await store.chats.history(session_id, max_turns=10)] == [
        "run-0",
        "run-2",
    ]
    assert (await store.chats.get_session(session_id, user_id="u")).turn_count == 2
    with pytest.raises(TurnNotFound):
        await store.chats.delete_turn(session_id, turns[1].id, user_id="u")
    with pytest.raises(TurnNotFound):
        await store.chats.delete_turn(session_id, foreign.id, user_id="u")
    with pytest.raises(SessionAccessDenied):
        await store.chats.delete_turn(session_id, turns[0].id, user_id="intruder")
    with pytest.raises(SessionNotFound):
        await store.chats.delete_turn(sid(), turns[0].id, user_id="u")
    assert len(await store.chats.history(other, max_turns=10)) == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("status", "done", "status must be one of"),
        ("run_id", "r" * 65, "run_id is longer than 64"),
        ("app_id", "", "app_id must not be empty"),
        ("created_at", datetime(2026, 1, 1), "timezone-aware"),
        ("duration_ms", -1, "negative"),
    ],
)
def test_new_turn_is_validated(field: str, value: Any, message: str) -> None:
    fields: dict[str, Any] = {
        "session_id": "s" * 32,
        "run_id": "r",
        "app_id": "a",
        "inputs": {},
        field: value,
    }
    with pytest.raises(ValueError, match=message):
        NewTurn(**fields)


async def test_ensure_session_checks_lengths(store: Store) -> None:
    with pytest.raises(ValueError, match="session_id is longer than 255"):
        await store.chats.ensure_session("s" * 256, app_id="app", user_id=None)
    longest = "s" * 255
    made = await store.chats.ensure_session(longest, app_id="a" * 128, user_id="u" * 255)
    assert made.session_id == longest


async def test_open_session_reads_the_history_along(store: Store) -> None:
    session_id = sid()
    created, history = await store.chats.open_session(
        session_id, app_id="app", user_id="alice", title="t", history_turns=5
    )
    assert history == []
    assert created.turn_count == 0
    for n, status in enumerate(["completed", "failed", "completed", "canceled", "completed"]):
        await store.chats.append_turn(turn(session_id, n, status))  # type: ignore[arg-type]

    found, history = await store.chats.open_session(
        session_id, app_id="app", user_id="alice", history_turns=2
    )
    assert found.turn_count == 5
    assert history == [
        ({"question": "q2"}, {"answer": "a2"}),
        ({"question": "q4"}, {"answer": "a4"}),
    ]
    assert history == await store.chats.history_messages(session_id, 2)
    assert [(t.inputs, t.outputs) for t in await store.chats.history(session_id, max_turns=9)] == (
        await store.chats.history_messages(session_id, 9)
    )
    assert await store.chats.history_messages(session_id, 0) == []
    _, none = await store.chats.open_session(
        session_id, app_id="app", user_id="alice", history_turns=0
    )
    assert none == []
    with pytest.raises(SessionAccessDenied):
        await store.chats.open_session(session_id, app_id="app", user_id="bob", history_turns=5)
