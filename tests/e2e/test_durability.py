"""A server killed (SIGKILL) in the middle of 200 concurrent chat turns loses no completed turn.

A turn is stored before the last byte of its response leaves, so every response that a client
read to its end must be in the history after a restart, and the database must be intact.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from history_support import (
    SESSION_HEADER,
    SSE,
    messages,
    mysql_check_tables,
    new_id,
    service_counts,
    simple_stream_answer,
    turn_number,
    unique_service,
)

from flowhost.testing.databases import drop_service

Server = Any  # tests/conftest.py's Server

TURNS = 200
SESSIONS = 20
KILL_AFTER = 40  # completed responses before the kill
# echo, but turn i answers after i * 5 ms: on a fast server turns are still in flight at the kill
ECHO_SLOW = Path(__file__).resolve().parents[1] / "flows_fixtures" / "durability" / "echo_slow"


@dataclass(frozen=True)
class Done:
    session_id: str
    question: str
    answer: str


@dataclass
class Backend:
    name: str
    args: list[str]
    url: str | None = None
    service: str | None = None


@pytest.fixture(
    params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)],
)
def backend(
    request: pytest.FixtureRequest, db_service_url: Callable[[str], str]
) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", [])
        return
    url = db_service_url("FLOWHOST_TEST_MYSQL_URL")
    service = unique_service("dur")
    try:
        yield Backend("mysql", ["--database-url", url, "--service-name", service], url, service)
    finally:
        anyio.run(drop_service, url, service)


async def _flood(server: Server, ids: list[str]) -> tuple[list[Done], int]:
    """Send TURNS turns at once (half streaming); SIGKILL the server after KILL_AFTER answers."""
    done: list[Done] = []
    lost = 0

    def finished(item: Done) -> None:
        done.append(item)
        if len(done) == KILL_AFTER:
            server.proc.kill()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal lost
        sid = ids[i % len(ids)]
        question = f"{sid} q{i}"
        headers = {SESSION_HEADER: sid}
        try:
            if i % 2:
                async with client.stream(
                    "POST", "/", json={"question": question}, headers={**headers, **SSE}
                ) as resp:
                    body = (await resp.aread()).decode()  # raises unless the body is complete
                    assert resp.status_code == 200, body
                    answer = simple_stream_answer(body)
            else:
                resp = await client.post("/", json={"question": question}, headers=headers)
                assert resp.status_code == 200, resp.text
                answer = resp.json()["answer"]
        except httpx.TransportError:
            lost += 1
            return
        finished(Done(sid, question, answer))

    limits = httpx.Limits(max_connections=TURNS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(TURNS)))
    return done, lost


def _sqlite_checks(database: Path) -> None:
    db = sqlite3.connect(database)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        (sessions,) = [t for t in tables if t.startswith("flowhost_chat_session_")]
        (history,) = [t for t in tables if t.startswith("flowhost_chat_history_")]
        counted = db.execute(f"SELECT coalesce(sum(turn_count), 0) FROM {sessions}").fetchone()
        stored = db.execute(f"SELECT count(*) FROM {history}").fetchone()
        assert counted == stored  # a turn and its session's count are written together
    finally:
        db.close()


def test_sigkill_loses_no_completed_turn(
    backend: Backend, server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(ECHO_SLOW, *backend.args)
    ids = [new_id(f"d{k}") for k in range(SESSIONS)]
    done, lost = asyncio.run(_flood(server, ids))
    server.proc.wait(15)
    assert len(done) >= KILL_AFTER
    assert lost > 0, "every turn finished before the kill: nothing was tested"
    assert len(done) + lost == TURNS

    if backend.name == "sqlite":
        _sqlite_checks(tmp_path / "data" / "flowhost.db")
    else:
        assert backend.url is not None
        assert backend.service is not None
        checks = anyio.run(mysql_check_tables, backend.url, backend.service)
        assert set(checks.values()) == {"OK"}, checks
        _, n_turns, counted = anyio.run(service_counts, backend.url, backend.service)
        assert n_turns == counted
        assert n_turns >= len(done)

    restarted = server_factory(ECHO_SLOW, *backend.args)
    with httpx.Client(base_url=restarted.url, timeout=15.0) as c:
        stored: dict[str, list[dict[str, Any]]] = {}
        for sid in ids:
            resp = c.get(f"/api/v1/history/sessions/{sid}")
            stored[sid] = messages(c, sid) if resp.status_code == 200 else []
        by_question = {m["inputs"]["question"]: m for turns in stored.values() for m in turns}
        assert len(by_question) == sum(len(t) for t in stored.values())  # no duplicates
        for item in done:
            found = by_question.get(item.question)
            assert found is not None, f"completed turn lost: {item}"
            assert found["session_id"] == item.session_id
            assert found["status"] == "completed"
            assert found["outputs"] == {"answer": item.answer}
        for turns in stored.values():
            for position, m in enumerate(turns):
                assert turn_number(m["outputs"]["answer"]) <= position + 1

        # and the sessions go on
        sid = done[0].session_id
        completed = sum(m["status"] == "completed" for m in stored[sid])
        resp = c.post("/", json={"question": "after"}, headers={SESSION_HEADER: sid})
        assert turn_number(resp.json()["answer"]) == completed + 1
