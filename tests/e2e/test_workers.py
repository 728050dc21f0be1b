"""``flowhost serve --workers 2`` on the default local SQLite: processes share one history."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from history_support import ECHO, SESSION_HEADER, messages, new_id, poll, session, turn_number

Server = Any  # tests/conftest.py's Server

SESSIONS = 4
TURNS_AT_ONCE = 15  # per session, all sent at the same time
TURNS_IN_ORDER = 3  # per session, one after the other


def test_workers_share_sqlite_history(server_factory: Callable[..., Server]) -> None:
    server = server_factory(ECHO, "--workers", "2")
    # /health answers once one worker is up: wait for both, so that both take part
    poll(
        lambda: server.output().count("Application startup complete.") >= 2 or None,
        timeout=60.0,
        what="both workers to start",
    )
    ids = [new_id(f"w{k}") for k in range(SESSIONS)]

    async def one(client: httpx.AsyncClient, sid: str, question: str) -> str:
        resp = await client.post("/", json={"question": question}, headers={SESSION_HEADER: sid})
        assert resp.status_code == 200, resp.text
        answer: str = resp.json()["answer"]
        return answer

    async def run() -> list[list[str]]:
        limits = httpx.Limits(max_connections=SESSIONS * TURNS_AT_ONCE)
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0, limits=limits) as client:
            # every session's first turns arrive together: its creation races too
            await asyncio.gather(
                *(one(client, sid, f"{sid} q{i}") for i in range(TURNS_AT_ONCE) for sid in ids)
            )

            async def in_order(sid: str) -> list[str]:
                return [
                    await one(client, sid, f"{sid} q{i}")
                    for i in range(TURNS_AT_ONCE, TURNS_AT_ONCE + TURNS_IN_ORDER)
                ]

            return await asyncio.gather(*(in_order(sid) for sid in ids))

    chains = asyncio.run(run())
    total = TURNS_AT_ONCE + TURNS_IN_ORDER
    for answers in chains:
        assert [turn_number(a) for a in answers] == list(range(TURNS_AT_ONCE + 1, total + 1))

    with httpx.Client(base_url=server.url, timeout=15.0) as c:
        for sid in ids:
            stored = messages(c, sid)
            questions = [m["inputs"]["question"] for m in stored]
            assert sorted(questions[:TURNS_AT_ONCE]) == sorted(
                f"{sid} q{i}" for i in range(TURNS_AT_ONCE)
            )
            assert questions[TURNS_AT_ONCE:] == [f"{sid} q{i}" for i in range(TURNS_AT_ONCE, total)]
            assert {m["status"] for m in stored} == {"completed"}
            for position, m in enumerate(stored):
                assert turn_number(m["outputs"]["answer"]) <= position + 1
            assert session(c, sid)["turn_count"] == total

    database = Path(server.log.parent / "data" / "flowhost.db")
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        (history,) = [t for t in tables if t.startswith("flowhost_chat_history_")]
        assert db.execute(f"SELECT count(*) FROM {history}").fetchone() == (SESSIONS * total,)
    db.close()


def test_workers_limit_request_heads(server_factory: Callable[..., Server]) -> None:
    """The head limits reach worker processes (uvicorn pickles the config to them)."""
    env = {"FLOWHOST_MAX_HEADER_BYTES": "2048"}
    server = server_factory(ECHO, "--workers", "2", env=env)
    poll(
        lambda: server.output().count("Application startup complete.") >= 2 or None,
        timeout=60.0,
        what="both workers to start",
    )
    for _ in range(6):  # new connections: the kernel spreads them over the workers
        with httpx.Client(base_url=server.url, timeout=15.0) as c:
            r = c.get("/health", headers={"X-Big": "a" * 4096})
            assert r.status_code == 431, r.text
            assert r.json()["code"] == "RequestHeaderFieldsTooLarge"
            assert c.get("/health").status_code == 200


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_workers_get_their_secrets_outside_the_environment(
    server_factory: Callable[..., Server],
) -> None:
    """The token and the database URL reach each worker in the config uvicorn pickles to it,
    not in an environment variable that every process a worker starts would inherit."""
    token = "tok-only-on-the-command-line-7"
    server = server_factory(ECHO, "--workers", "2", token=token)
    poll(
        lambda: server.output().count("Application startup complete.") >= 2 or None,
        timeout=60.0,
        what="both workers to start",
    )
    children = _children(server.proc.pid)  # the workers, and multiprocessing's helper
    workers = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(workers) == 2
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert token.encode() not in environ
        assert b"FLOWHOST__SETTINGS_JSON" not in environ
    for _ in range(6):  # every worker has the token: new connections spread over them
        with httpx.Client(base_url=server.url, timeout=15.0) as c:
            assert c.post("/", json={"question": "x"}).status_code == 401
            ok = c.post("/", json={"question": "x"}, headers=server.headers)
            assert ok.status_code == 200, ok.text
