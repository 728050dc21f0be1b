"""Several ``flowhost serve`` instances sharing MariaDB or PostgreSQL: one set of sessions.

Every service name is new (so are its tables), and its tables are dropped at the end: one for
the two instances this module's first tests share, one for each migration test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from alembic.script import ScriptDirectory
from history_support import (
    ECHO,
    SESSION_HEADER,
    messages,
    new_id,
    service_counts,
    session,
    turn_number,
    unique_service,
    version_rows,
)

from flowhost.store.migrate import alembic_config
from flowhost.store.names import service_names
from flowhost.testing.databases import drop_service

Server = Any  # tests/conftest.py's Server

BACKENDS = {"mysql": "FLOWHOST_TEST_MYSQL_URL", "postgres": "FLOWHOST_TEST_POSTGRES_URL"}
PK_WARNING = "ignored for PRIMARY key"


@dataclass
class SharedDB:
    """A database URL and a fresh service name; ``start()`` serves the echo flow on them."""

    url: str
    service: str
    factory: Callable[..., Server]
    servers: list[Server] = field(default_factory=list)

    def start(self, *args: str) -> Server:
        server = self.factory(
            ECHO, "--database-url", self.url, "--service-name", self.service, *args
        )
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:  # before dropping: no connection may hold the tables
            server.stop()
        anyio.run(drop_service, self.url, self.service)


BACKEND_PARAMS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKEND_PARAMS)
def fresh_db(
    request: pytest.FixtureRequest,
    db_service_url: Callable[[str], str],
    server_factory: Callable[..., Server],
) -> Iterator[SharedDB]:
    """A new service name (no tables yet) on each backend; servers of this test only."""
    db = SharedDB(db_service_url(BACKENDS[request.param]), unique_service("mi"), server_factory)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def pair(
    request: pytest.FixtureRequest,
    db_service_url: Callable[[str], str],
    module_server_factory: Callable[..., Server],
) -> Iterator[tuple[SharedDB, Server, Server]]:
    """Two instances on one database, shared by this module's tests.

    They start at the same moment on a new service name: both find no tables and race to
    create them (``test_two_instances_starting_at_once_migrate_once`` checks the outcome).
    """
    url = db_service_url(BACKENDS[request.param])
    db = SharedDB(url, unique_service("mi"), module_server_factory)
    try:
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(lambda _: db.start(), range(2))
        yield db, a, b
    finally:
        db.close()


def head_revisions() -> list[str]:
    """The packaged migrations' heads: what one complete, non-duplicated upgrade leaves."""
    config = alembic_config(service_names("any"))
    return sorted(ScriptDirectory.from_config(config).get_heads())


def ask(client: httpx.Client, base: str, question: str, sid: str | None = None) -> httpx.Response:
    headers = {SESSION_HEADER: sid} if sid else {}
    resp = client.post(f"{base}/", json={"question": question}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp


def test_two_instances_starting_at_once_migrate_once(
    pair: tuple[SharedDB, Server, Server],
) -> None:
    shared_db, a, b = pair
    with httpx.Client(timeout=15.0) as c:
        sid = ask(c, a.url, "one").headers[SESSION_HEADER]
        assert ask(c, b.url, "two", sid).json() == {"answer": "echo: two (turn 2)"}
    assert sorted(anyio.run(version_rows, shared_db.url, shared_db.service)) == head_revisions()
    for server in (a, b):
        assert PK_WARNING not in server.output()
        assert "Traceback" not in server.output()


def test_a_session_continues_on_another_instance(pair: tuple[SharedDB, Server, Server]) -> None:
    _, a, b = pair
    with httpx.Client(timeout=15.0) as c:
        sid = ask(c, a.url, "one").headers[SESSION_HEADER]
        assert ask(c, b.url, "two", sid).json() == {"answer": "echo: two (turn 2)"}
        assert ask(c, a.url, "three", sid).json() == {"answer": "echo: three (turn 3)"}
        # the bailian and openai routes of the other instance see the same session
        bailian = c.post(
            f"{b.url}/api/v1/apps/echo/completion",
            json={"input": {"prompt": "four", "session_id": sid}},
        )
        assert bailian.json()["output"]["text"] == "echo: four (turn 4)"
        openai = c.post(
            f"{a.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "five"}]},
            headers={SESSION_HEADER: sid},
        )
        assert openai.json()["choices"][0]["message"]["content"] == "echo: five (turn 5)"

        c.base_url = httpx.URL(b.url)
        stored = messages(c, sid)
        assert [m["inputs"]["question"] for m in stored] == ["one", "two", "three", "four", "five"]
        c.base_url = httpx.URL(a.url)
        assert session(c, sid)["turn_count"] == 5
        # and a user's session is theirs on every instance
        user = new_id("u")
        owned = c.post(f"{a.url}/", json={"question": "x"}, headers={"Chat-User-Id": user})
        owned_sid = owned.headers[SESSION_HEADER]
        stolen = c.post(
            f"{b.url}/",
            json={"question": "y"},
            headers={SESSION_HEADER: owned_sid, "Chat-User-Id": new_id("other")},
        )
        assert stolen.status_code == 403
        deleted = c.delete(f"{b.url}/api/v1/history/sessions/{sid}")
        assert deleted.status_code == 204
        assert c.get(f"{a.url}/api/v1/history/sessions/{sid}").status_code == 404


async def _turn(
    client: httpx.AsyncClient, base: str, sid: str, question: str
) -> tuple[str, str, str]:
    resp = await client.post(f"{base}/", json={"question": question}, headers={SESSION_HEADER: sid})
    assert resp.status_code == 200, resp.text
    return sid, question, resp.json()["answer"]


def test_concurrent_turns_over_two_instances(pair: tuple[SharedDB, Server, Server]) -> None:
    shared_db, a, b = pair
    bases = [a.url, b.url]
    sessions = [new_id(f"c{k}") for k in range(10)]

    async def blast() -> list[tuple[str, str, str]]:
        # 50 turns at once: 5 per session, alternating instances
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            return await asyncio.gather(
                *(
                    _turn(client, bases[(k + i) % 2], sid, f"{sid} q{i}")
                    for i in range(5)
                    for k, sid in enumerate(sessions)
                )
            )

    async def continue_in_order() -> list[list[str]]:
        # then each session goes on turn by turn, hopping instances: each sees all before it
        async def chain(k: int, sid: str) -> list[str]:
            return [
                (await _turn(client, bases[(k + i) % 2], sid, f"{sid} q{i}"))[2]
                for i in range(5, 8)
            ]

        async with httpx.AsyncClient(timeout=30.0) as client:
            return await asyncio.gather(*(chain(k, sid) for k, sid in enumerate(sessions)))

    answered = asyncio.run(blast())
    assert len(answered) == 50
    chains = asyncio.run(continue_in_order())
    for answers in chains:
        assert [turn_number(x) for x in answers] == [6, 7, 8]

    with httpx.Client(base_url=a.url, timeout=15.0) as c:
        for sid in sessions:
            stored = messages(c, sid)
            questions = [m["inputs"]["question"] for m in stored]
            # nothing lost or doubled
            assert sorted(questions[:5]) == [f"{sid} q{i}" for i in range(5)]
            assert questions[5:] == [f"{sid} q{i}" for i in range(5, 8)]
            assert {m["status"] for m in stored} == {"completed"}
            assert session(c, sid)["turn_count"] == 8
            # order: a turn can only have seen the turns stored before it
            for position, m in enumerate(stored):
                assert turn_number(m["outputs"]["answer"]) <= position + 1, stored
            assert [turn_number(m["outputs"]["answer"]) for m in stored[5:]] == [6, 7, 8]
    # the sessions' turn counts agree with the stored turns, across the whole service
    _, n_turns, counted = anyio.run(service_counts, shared_db.url, shared_db.service)
    assert n_turns == counted
    assert n_turns >= 80


def test_db_upgrade_command_is_quiet(fresh_db: SharedDB) -> None:
    shared_db = fresh_db
    cmd = [
        sys.executable,
        "-m",
        "flowhost",
        "db",
        "upgrade",
        "--database-url",
        shared_db.url,
        "--service-name",
        shared_db.service,
    ]
    # creating the tables (the version table's primary key warned on MySQL / MariaDB)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert PK_WARNING not in done.stdout
    assert done.stdout.startswith("ok  ")
    assert shared_db.service in done.stdout
    assert sorted(anyio.run(version_rows, shared_db.url, shared_db.service)) == head_revisions()
