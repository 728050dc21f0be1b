"""``read_body``: the run routes' body, straight from ``receive``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.requests import Request
from starlette.types import Message

from flowhost.exceptions import RunCanceled
from flowhost.wire.http import read_body, read_json_object

pytestmark = pytest.mark.anyio


def request(messages: list[Message]) -> Request:
    it: Iterator[Message] = iter(messages)

    async def receive() -> Message:
        return next(it)

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


async def test_a_body_in_several_messages_is_joined() -> None:
    parts = [b'{"question"', b': "hi', b'"}']
    messages: list[Message] = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]
    assert await read_body(request(messages)) == b'{"question": "hi"}'
    assert await read_json_object(request(messages)) == {"question": "hi"}


async def test_an_empty_body_and_a_body_without_a_body_key() -> None:
    assert await read_body(request([{"type": "http.request"}])) == b""


async def test_a_client_that_leaves_mid_body_cancels_the_request() -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"q', "more_body": True},
        {"type": "http.disconnect"},
    ]
    with pytest.raises(RunCanceled) as info:
        await read_body(request(messages))
    assert info.value.status == 499
