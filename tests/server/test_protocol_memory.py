"""``FlowhostHttpProtocol`` adds one attribute to uvicorn's protocol, not several.

CPython (3.11-3.12) shares an instance dict's keys between instances of a class up to 30 keys;
past that each instance holds its own table. uvicorn's protocol has 28: eight more attributes
cost ~2 KB a connection (``bench streams``: 48.7 KB per held SSE stream instead of 46.6, the
target being 50). The head limits' state therefore lives in one slotted object."""

from __future__ import annotations

import asyncio

from uvicorn.server import ServerState

from flowhost.server.protocol import FlowhostHttpProtocol, ServerConfig


async def _app(scope: object, receive: object, send: object) -> None:
    return None


def test_the_protocol_keeps_at_most_30_instance_attributes() -> None:
    config = ServerConfig(_app, max_header_bytes=4096, header_timeout=5.0)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = FlowhostHttpProtocol(config, ServerState(), {}, loop)
        protocol.on_message_begin()  # sets the per-request attributes (url, scope, headers)
        assert len(vars(protocol)) <= 30, sorted(vars(protocol))
        assert protocol._head.max_bytes == 4096
        assert protocol._head.timeout == 5.0
    finally:
        loop.close()
