"""The body deadline of ``RequestContextMiddleware``: a receive still waiting at the deadline
fails with RequestTimeout (408); what arrived in time is read however slowly the app reads it,
and nothing fires once the body is in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send
from uvicorn.server import ServerState

from flowhost.server.middleware import BODY_COMPLETE, RequestContextMiddleware, RequestTimeout
from flowhost.server.protocol import FlowhostHttpProtocol, ServerConfig

pytestmark = pytest.mark.anyio

DEADLINE = 0.2


def scope() -> Scope:
    return {"type": "http", "method": "POST", "path": "/", "headers": [], "state": {}}


class Client:
    """The server side of one request: body parts arrive when ``feed`` is called."""

    def __init__(self) -> None:
        self.parts: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[Message] = []

    def feed(self, body: bytes, more: bool) -> None:
        self.parts.put_nowait({"type": "http.request", "body": body, "more_body": more})

    async def receive(self) -> Message:
        return await self.parts.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)


async def serve(app: Any, client: Client) -> None:
    mw = RequestContextMiddleware(app, token=None, max_body_bytes=1000, body_timeout=DEADLINE)
    await mw(scope(), client.receive, client.send)


async def test_a_stalled_receive_fails_with_request_timeout() -> None:
    client = Client()
    client.feed(b"{", more=True)
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((await receive())["body"])
        await receive()  # the rest never comes

    with pytest.raises(RequestTimeout):
        await serve(app, client)
    assert seen == [b"{"]


async def test_an_app_slow_between_receives_does_not_make_a_timely_body_late() -> None:
    """The deadline bounds the client, not the app: parts that came in time are read."""
    client = Client()
    client.feed(b"{", more=True)
    client.feed(b"}", more=False)
    parts: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        parts.append((await receive())["body"])
        await asyncio.sleep(DEADLINE * 2)  # the deadline passes here, outside receive
        parts.append((await receive())["body"])

    await serve(app, client)
    assert parts == [b"{", b"}"]


async def test_a_body_in_time_is_answered_after_the_deadline() -> None:
    client = Client()
    client.feed(b'{"a": ', more=True)
    client.feed(b"1}", more=False)
    later: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["more_body"]
        assert not (await receive())["more_body"]
        await asyncio.sleep(DEADLINE * 2)  # past the deadline: the body is in, nothing fires
        later.append("answered")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    await serve(app, client)
    assert later == ["answered"]
    start = client.sent[0]
    assert start["status"] == 200
    assert (b"connection", b"close") not in start["headers"]


async def test_a_cancellation_from_above_is_not_a_timeout() -> None:
    client = Client()
    client.feed(b"{", more=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await receive()

    task = asyncio.ensure_future(serve(app, client))
    await asyncio.sleep(DEADLINE / 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_request_marked_complete_by_the_server_arms_no_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``BODY_COMPLETE`` in the scope (``FlowhostHttpProtocol`` sets it once the whole body is
    in): the body is read without ``asyncio.timeout_at``; unmarked, the same body takes one."""
    armed: list[float | None] = []
    real = asyncio.timeout_at

    def counting(when: float | None) -> asyncio.Timeout:
        armed.append(when)
        return real(when)

    monkeypatch.setattr(asyncio, "timeout_at", counting)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["body"] == b"{}"

    for marked in (True, False):
        client = Client()
        client.feed(b"{}", more=False)
        mw = RequestContextMiddleware(app, token=None, max_body_bytes=1000, body_timeout=DEADLINE)
        await mw(
            {**scope(), BODY_COMPLETE: True} if marked else scope(), client.receive, client.send
        )
        assert len(armed) == (0 if marked else 1)


class Transport:
    """What ``FlowhostHttpProtocol`` needs of a transport to parse requests (nothing sent)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()


def test_the_server_marks_a_request_once_its_whole_body_is_in() -> None:
    config = ServerConfig(_app, lifespan="off")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = FlowhostHttpProtocol(config, ServerState(), {}, loop)
        protocol.connection_made(Transport())  # type: ignore[arg-type]
        protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\n{}")
        first = protocol.scope
        assert BODY_COMPLETE not in first  # half the body: a receive may still wait
        protocol.data_received(b"[]")
        assert first[BODY_COMPLETE] is True  # type: ignore[typeddict-item]
        protocol.data_received(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        assert protocol.scope is not first  # a pipelined request: its own scope, marked
        assert protocol.scope[BODY_COMPLETE] is True  # type: ignore[typeddict-item]
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
