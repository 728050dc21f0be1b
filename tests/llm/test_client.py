"""LLMClient: the hot path and the SDK path send the same request and fail the same way.

Every behaviour test runs on both paths (``path`` fixture): the hot path (aiohttp, with the
openai SDK's headers, retry policy and status errors) and the SDK path (``AsyncOpenAI.post``).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from flowhost.llm.client import ChatChunk, LLMCallError, LLMClient
from flowhost.llm.connections import Connection
from flowhost.testing import FakeLLM, Reply

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]


@pytest.fixture(params=["hot", "sdk"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[LLMClient]:
    c = LLMClient()
    c._sdk_path = request.param == "sdk"
    yield c
    await c.aclose()


def conn_to(base_url: str, *, retries: int = 0, name: str = "fake", **kw: Any) -> Connection:
    return Connection(name, base_url, "sk-test", model="fake-chat", max_retries=retries, **kw)


async def collect(
    client: LLMClient, conn: Connection, messages: list[dict[str, Any]] | None = None, **params: Any
) -> list[ChatChunk]:
    chunks = client.stream_chat(
        conn, model="fake-chat", messages=messages or MESSAGES, params=params
    )
    async with contextlib.aclosing(chunks):
        return [c async for c in chunks]


async def deltas_until_error(client: LLMClient, conn: Connection) -> tuple[list[str], LLMCallError]:
    """The deltas a call yielded before it failed, and its error."""
    got: list[str] = []
    chunks = client.stream_chat(conn, model="fake-chat", messages=MESSAGES, params={})
    try:
        async with contextlib.aclosing(chunks):
            async for c in chunks:
                got.append(c.delta)
    except LLMCallError as exc:
        return got, exc
    raise AssertionError(f"no error after {got}")


async def test_hot_path_is_used_with_the_installed_sdk(llm: FakeLLM) -> None:
    client = LLMClient()
    try:
        assert await client._endpoint(conn_to(llm.base_url)) is not None
    finally:
        await client.aclose()


async def test_changed_sdk_helpers_send_calls_the_sdks_way(
    llm: FakeLLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An SDK release whose private helpers no longer take the hot path's responses (openai
    3.6x began reading the request's headers) costs speed, not correctness."""
    import openai

    def changed(self: Any, response: Any) -> Any:
        return response.request.headers["authorization"]  # what a new release might read

    monkeypatch.setattr(openai.AsyncOpenAI, "_make_status_error_from_response", changed)
    client = LLMClient()
    try:
        conn = conn_to(llm.base_url)
        assert await client._endpoint(conn) is None
        assert "LLM calls use the SDK's own (slower) request path" in caplog.text
        monkeypatch.undo()  # the SDK path builds its errors with the real helper
        llm.enqueue(Reply(status=500))
        with pytest.raises(LLMCallError, match=r"HTTP 500 .*fake HTTP 500 \(scripted\)"):
            await collect(client, conn)
        assert "".join(c.delta for c in await collect(client, conn)) == "echo: hi there"
    finally:
        await client.aclose()


async def test_deltas_then_usage_and_the_request_sent(client: LLMClient, llm: FakeLLM) -> None:
    conn = conn_to(llm.base_url, headers={"X-Team": "search"})
    chunks = await collect(client, conn, temperature=0.5, max_tokens=16)
    assert [c.delta for c in chunks if c.delta] == ["echo:", " hi", " there"]
    assert chunks[-1] == ChatChunk(model="fake-chat", input_tokens=4, output_tokens=3)
    [req] = llm.requests
    assert req.body == {
        "model": "fake-chat",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "max_tokens": 16,
    }
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("AsyncOpenAI/Python")
    assert req.headers["x-team"] == "search"


async def test_non_ascii_content_round_trips(client: LLMClient, llm: FakeLLM) -> None:
    messages = [{"role": "user", "content": "你好 世界"}]
    chunks = await collect(client, conn_to(llm.base_url), messages)
    assert "".join(c.delta for c in chunks) == "echo: 你好 世界"
    assert llm.requests[0].body["messages"] == messages


async def test_many_calls_reuse_the_client(client: LLMClient, llm: FakeLLM) -> None:
    conn = conn_to(llm.base_url)
    for _ in range(5):
        chunks = await collect(client, conn)
        assert "".join(c.delta for c in chunks) == "echo: hi there"
    assert len(client._clients) == 1
    assert len(client._endpoints) == (0 if client._sdk_path else 1)


@pytest.mark.parametrize(("status", "hint"), [(401, "the API key was rejected"), (500, "an error")])
async def test_status_errors_carry_the_sdks_message(
    client: LLMClient, llm: FakeLLM, status: int, hint: str
) -> None:
    llm.enqueue(Reply(status=status))  # the fake says x-should-retry: false
    with pytest.raises(LLMCallError) as info:
        await collect(client, conn_to(llm.base_url, retries=2))
    assert info.value.status == status
    assert str(info.value) == (
        f"connection 'fake': HTTP {status} from {llm.base_url}: the "
        + ("API key was rejected; check the connection's api_key" if status == 401 else "")
        + ("endpoint returned an error" if status == 500 else "")
        + f" (Error code: {status} - fake HTTP {status} (scripted))"
    )
    assert hint in str(info.value)
    assert len(llm.requests) == 1, "x-should-retry: false is obeyed"


async def test_a_stream_that_breaks_off(client: LLMClient, llm: FakeLLM) -> None:
    llm.enqueue(Reply(chunks=["a", "b", "c", "d"], fail_after=2))
    got, exc = await deltas_until_error(client, conn_to(llm.base_url, retries=2))
    assert got == ["a", "b"]
    assert str(exc).startswith("connection 'fake': LLM stream broke off (")
    assert len(llm.requests) == 1, "a stream that has begun is not retried"


async def test_refused_connection(client: LLMClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(LLMCallError) as info:
        await collect(client, conn_to(url))
    assert str(info.value).startswith(f"connection 'fake': cannot reach the LLM endpoint {url} (")
    assert info.value.status is None


async def test_closing_early_drops_the_upstream_stream(client: LLMClient, llm: FakeLLM) -> None:
    llm.enqueue(Reply(chunks=["a", "b", "c"], chunk_delay=5))
    chunks = client.stream_chat(conn_to(llm.base_url), model="m", messages=MESSAGES, params={})
    async with contextlib.aclosing(chunks):
        async for c in chunks:
            assert c.delta == "a"
            break
    for _ in range(500):  # bounded: the fake notices within a few ms
        if llm.disconnects:
            break
        await _sleep(0.01)
    [gone] = llm.disconnects
    assert (gone.stream, gone.chunks_sent) == (True, 1)


# --- behaviour the fake cannot script: a small server of our own ---

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An upstream answering with ``handler(request, n)``; yields (base_url, request bodies)."""
    bodies: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        return await handler(request, len(bodies))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", bodies
    finally:
        await runner.cleanup()


async def sse(request: web.Request, events: list[Any], *, crlf: bool = False) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    end = "\r\n" if crlf else "\n"
    for ev in events:
        text = ev if isinstance(ev, str) else json.dumps(ev)
        await resp.write(f"data: {text}{end}{end}".encode())
    await resp.write_eof()
    return resp


def chunk(content: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return {"id": "c1", "model": "up-model", "choices": choices, "usage": usage}


async def test_retryable_status_is_retried_as_the_sdk_does(client: LLMClient) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            body = {"error": {"message": "busy", "type": "server_error"}}
            return web.json_response(body, status=503, headers={"retry-after-ms": "1"})
        return await sse(request, [chunk("ok"), chunk(usage={"prompt_tokens": 1}), "[DONE]"])

    async with serve(handler) as (url, bodies):
        chunks = await collect(client, conn_to(url, retries=2))
    assert [c.delta for c in chunks if c.delta] == ["ok"]
    assert chunks[-1].input_tokens == 1
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]


async def test_retries_run_out(client: LLMClient) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        body = {"error": {"message": f"busy {n}"}}
        return web.json_response(body, status=429, headers={"retry-after-ms": "1"})

    async with serve(handler) as (url, bodies):
        with pytest.raises(LLMCallError) as info:
            await collect(client, conn_to(url, retries=2))
    assert len(bodies) == 3
    assert info.value.status == 429
    assert str(info.value).endswith("(Error code: 429 - busy 3)")


async def test_a_non_retryable_status_is_sent_once(client: LLMClient) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"error": {"message": "bad max_tokens"}}, status=400)

    async with serve(handler) as (url, bodies):
        with pytest.raises(LLMCallError) as info:
            await collect(client, conn_to(url, retries=2))
    assert len(bodies) == 1
    assert (info.value.status, str(info.value)) == (
        400,
        f"connection 'fake': HTTP 400 from {url}: the endpoint returned an error "
        "(Error code: 400 - bad max_tokens)",
    )


async def test_an_error_event_in_the_stream(client: LLMClient) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return await sse(request, [chunk("par"), {"error": {"message": "overloaded"}}])

    async with serve(handler) as (url, _):
        got, exc = await deltas_until_error(client, conn_to(url))
    assert got == ["par"]
    assert str(exc) == "connection 'fake': LLM stream failed: overloaded"


async def test_sse_framing_crlf_multiline_and_comments(client: LLMClient) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        one = json.dumps(chunk("a b"), indent=1).replace("\n", "\r\ndata: ")  # multi-line data
        parts = [": keep-alive\r\n\r\n", f"data: {one}\r\n\r\n", "event: x\r\n"]
        parts += [f"data:{json.dumps(chunk('!'))}\r\n\r\n", "data: [DONE]\r\n\r\n"]
        raw = "".join(parts).encode()
        for i in range(0, len(raw), 7):  # split anywhere, even inside CRLF
            await resp.write(raw[i : i + 7])
        await resp.write_eof()
        return resp

    async with serve(handler) as (url, _):
        chunks = await collect(client, conn_to(url))
    assert [c.delta for c in chunks] == ["a b", "!"]
    assert {c.model for c in chunks} == {"up-model"}


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


def test_env_proxies_are_honoured_as_the_sdk_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowhost.llm.client import _env_proxy

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert _env_proxy("https://api.example.com/v1/chat/completions") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    assert _env_proxy("https://api.example.com/v1/chat/completions") == "http://proxy.local:3128"
    assert _env_proxy("http://api.example.com/v1/chat/completions") is None
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert _env_proxy("https://api.example.com/v1/chat/completions") is None
