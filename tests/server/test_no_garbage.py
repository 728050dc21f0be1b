"""A served request leaves no reference cycles: its objects are freed when it ends.

The app raises the collector's young-generation threshold to 50,000 objects and freezes what
start-up built (``flowhost.server.app``), so a collection is rare and cheap only while requests
leave no cyclic garbage. One cycle per run (a run's trace holding the prepared run that held
the trace) made collections of ~34k objects every few hundred requests, 5-15 ms each: p99 at
one connection went from 2 to 10 ms. Each protocol's usual requests, with history on and off,
tracing on, are counted here: on the inline echo app, the branch app (node tasks) and the chat
app (an LLM node over the fake LLM, answering and failing).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flowhost.apps import AppRegistry
from flowhost.config import Settings
from flowhost.server.app import create_app
from flowhost.testing import FakeLLM

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"
SESSION = "s" * 32
JSON = (b"content-type", b"application/json")
SSE = (b"accept", b"text/event-stream")
REQUESTS: list[tuple[str, bytes, list[tuple[bytes, bytes]]]] = [
    ("/", b'{"question": "hi"}', []),
    ("/", b'{"question": "hi"}', [SSE]),
    ("/", b'{"question": "hi"}', [(b"chat-session-id", SESSION.encode())]),
    ("/", b'{"nope": 1}', []),  # 400
    ("/", b"not json", []),  # 400
    ("/run", b'{"inputs": {"question": "hi"}}', [SSE]),
    (
        "/v1/chat/completions",
        b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]}',
        [],
    ),
    (
        "/v1/chat/completions",
        b'{"model": "echo", "stream": true, "messages": [{"role": "user", "content": "hi"}]}',
        [],
    ),
    ("/api/v1/apps/echo/completion", b'{"input": {"prompt": "hi"}}', []),
    (
        "/api/v1/apps/echo/completion",
        b'{"input": {"prompt": "hi"}}',
        [(b"x-dashscope-sse", b"enable")],
    ),
    ("/apps/nope", b'{"question": "hi"}', []),  # 404
    ("/apps/branch", b'{"question": "is it?"}', []),
    ("/apps/branch", b'{"question": "it is"}', [SSE]),
    ("/apps/chat", b'{"question": "hi"}', []),
    ("/apps/chat", b'{"question": "hi [[fake:chunks=a|b|c]]"}', [SSE]),
    ("/apps/chat", b'{"question": "[[fake:status=500]]"}', []),  # the LLM fails: 5xx
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app(tmp_path: Path, llm: FakeLLM) -> AsyncIterator[Any]:
    flows = tmp_path / "flows"
    flows.mkdir()
    for name in ("echo", "branch", "chat"):
        (flows / name).symlink_to(EXAMPLES / name)
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_MODEL": "fake-chat",
        "FLOWHOST_LLM_MAX_RETRIES": "0",
    }
    settings = Settings(flows=flows, default_app="echo", data_dir=tmp_path / "data")
    app = create_app(settings, apps=AppRegistry.load(flows, default_app="echo", env=env))
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    await messages.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get, send)
    )
    await started.wait()
    yield app
    await messages.put({"type": "lifespan.shutdown"})
    await lifespan


async def _request(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    status = 0
    sent = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # a client that stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), JSON, *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return status


async def test_requests_leave_no_garbage_cycles(app: Any) -> None:
    async def every_kind() -> list[int]:
        return [await _request(app, *r) for r in REQUESTS]

    first = await every_kind()  # warm: caches, lazily built routes, the session's creation
    assert first[:3] == [200, 200, 200]
    assert first[3:5] == [400, 400]
    assert first[5:-1] == [200, 200, 200, 200, 200, 404, 200, 200, 200, 200]
    assert first[-1] >= 500
    await app.state.tracing.flush()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            assert await every_kind() == first
        await app.state.tracing.flush()
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage == 0
