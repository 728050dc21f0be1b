"""Helpers shared by the sessions / chat-history end-to-end tests (not a test module).

Imported as ``history_support`` (pytest puts this folder on ``sys.path``); ``conftest`` itself is
not importable from test modules, so fixtures come from there and plain helpers from here.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import Column, MetaData, String, Table, func, select, text

from flowhost.store.engine import create_store_engine, normalize_url
from flowhost.store.names import service_names
from flowhost.store.schema import tables_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"
ECHO = EXAMPLES / "echo"
CHAT = EXAMPLES / "chat"
SESSION_HEADER = "Chat-Session-Id"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
TURN = re.compile(r"\(turn (\d+)\)$")
SSE = {"Accept": "text/event-stream"}

T = TypeVar("T")


def new_id(prefix: str = "s") -> str:
    """A valid custom session id (32+ characters of the allowed alphabet)."""
    return f"{prefix}:{uuid.uuid4().hex}"


def unique_service(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def turn_number(answer: str) -> int:
    """The turn the echo flow says it answered: ``echo: q`` is 1, ``echo: q (turn N)`` is N."""
    m = TURN.search(answer)
    return int(m.group(1)) if m else 1


def sse_events(raw: str) -> Iterator[tuple[str | None, str]]:
    """(event name, data) of every frame of an SSE body."""
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        yield name, "\n".join(data)


def simple_stream_answer(raw: str, key: str = "answer") -> str:
    """The answer a simple-mode stream spelled out (its Message fragments joined)."""
    parts: list[str] = []
    for name, data in sse_events(raw):
        if name == "Error":
            raise AssertionError(f"stream failed: {data}")
        if name == "Message":
            parts.append(str(json.loads(data).get(key, "")))
    return "".join(parts)


def poll(
    check: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``check`` until it returns something other than None (bounded; no fixed waits)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what or check}")
        time.sleep(interval)


def messages(
    client: httpx.Client, session_id: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every stored turn of a session through the history API (all pages), oldest first."""
    out: list[dict[str, Any]] = []
    while True:
        resp = client.get(
            f"/api/v1/history/sessions/{session_id}/messages",
            params={"limit": 500, "offset": len(out)},
            headers=headers,
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        out.extend(body["messages"])
        if len(out) >= body["total"] or not body["messages"]:
            return out


def session(
    client: httpx.Client, session_id: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    resp = client.get(f"/api/v1/history/sessions/{session_id}", headers=headers)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def _service_metadata(service: str) -> tuple[MetaData, Table, Table]:
    names = service_names(service)
    metadata = MetaData()
    tables = tables_for(names, metadata)
    Table(names.version_table, metadata, Column("version_num", String(32), primary_key=True))
    return metadata, tables.session, tables.history


async def service_counts(url: str, service: str) -> tuple[int, int, int]:
    """(sessions, stored turns, sum of the sessions' turn_count) straight from the database."""
    _, sessions, history = _service_metadata(service)
    engine = create_store_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            n_sessions = (await conn.execute(select(func.count()).select_from(sessions))).scalar()
            n_turns = (await conn.execute(select(func.count()).select_from(history))).scalar()
            counted = (await conn.execute(select(func.sum(sessions.c.turn_count)))).scalar()
    finally:
        await engine.dispose()
    return int(n_sessions or 0), int(n_turns or 0), int(counted or 0)


async def mysql_check_tables(url: str, service: str) -> dict[str, str]:
    """``CHECK TABLE`` on the service's chat tables: table name -> last Msg_text."""
    names = service_names(service)
    engine = create_store_engine(normalize_url(url))
    out: dict[str, str] = {}
    try:
        async with engine.connect() as conn:
            for table in (names.session_table, names.history_table):
                rows = (await conn.execute(text(f"CHECK TABLE {table}"))).all()
                out[table] = str(rows[-1][-1])
    finally:
        await engine.dispose()
    return out


async def version_rows(url: str, service: str) -> list[str]:
    names = service_names(service)
    engine = create_store_engine(normalize_url(url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text(f"SELECT version_num FROM {names.version_table}"))
            return [str(r[0]) for r in rows]
    finally:
        await engine.dispose()
