"""The body deadline of ``RequestContextMiddleware``: a receive still waiting at the deadline
fails with RequestTimeout (408); what arrived in time is read however slowly the app reads it,
and nothing fires once the body is in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from flowhost.server.middleware import RequestContextMiddleware, RequestTimeout

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
