"""``CorkedTransport``: what one loop step writes leaves in one write, in order; a close sends
what is held first; a connection that is gone drops it. And ``FlowhostHttpProtocol`` answers a
request with its head and body in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.responses import JSONResponse
from uvicorn.server import ServerState

from flowhost.server.protocol import FlowhostHttpProtocol, ServerConfig
from flowhost.server.transport import LARGE_WRITE, CorkedTransport

pytestmark = pytest.mark.anyio


class Recorder(asyncio.Transport):
    """A socket's transport that records what it is asked to do."""

    def __init__(self) -> None:
        super().__init__({"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)})
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", [bytes(d) for d in list_of_data]))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.calls.append(("pause_reading", None))

    def resume_reading(self) -> None:
        self.calls.append(("resume_reading", None))


async def _next_step() -> None:
    """Let the callbacks scheduled so far run."""
    await asyncio.sleep(0)


async def test_one_steps_writes_leave_joined_after_the_step() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.write(bytearray(b"body"))
    assert raw.calls == []
    assert corked.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
    await _next_step()
    assert raw.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody")]
    corked.write(b"data: 1\n\n")  # a later step's write leaves after that step
    await _next_step()
    corked.write(b"data: 2\n\n")
    await _next_step()
    assert raw.calls[1:] == [("write", b"data: 1\n\n"), ("write", b"data: 2\n\n")]


async def test_a_large_write_leaves_at_once_after_what_is_held() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    big = b"x" * LARGE_WRITE
    corked.write(big)  # nothing held: straight through
    assert raw.calls == [("write", big)]
    corked.write(b"head")
    corked.write(big)
    assert raw.calls[1:] == [("writelines", [b"head", big])]
    await _next_step()
    assert len(raw.calls) == 2  # nothing left to send


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.writelines([b"a", b"b"])
    corked.close()
    assert raw.calls == [("write", b"ab"), ("close", None)]
    await _next_step()
    assert len(raw.calls) == 2

    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.write(b"never sent")
    corked.abort()
    await _next_step()
    assert raw.calls == [("abort", None)]


async def test_a_connection_gone_before_the_step_ends_drops_what_is_held() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.write(b"late")
    raw.closing = True  # the peer went away meanwhile
    await _next_step()
    assert raw.calls == []
    assert corked.is_closing()


async def test_the_rest_goes_to_the_socket_transport() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.pause_reading()
    corked.resume_reading()
    assert raw.calls == [("pause_reading", None), ("resume_reading", None)]
    assert corked.get_extra_info("peername") == ("127.0.0.1", 5000)
    assert corked.get_extra_info("missing", "default") == "default"


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await JSONResponse({"answer": "echo: hi"})(scope, receive, send)


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_the_protocol_answers_in_one_write(keep_alive: bool) -> None:
    config = ServerConfig(_answer, max_header_bytes=4096, header_timeout=5.0)
    config.load()
    raw = Recorder()
    protocol = FlowhostHttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    protocol.connection_made(raw)
    assert isinstance(protocol.transport, CorkedTransport)
    body = b'{"question": "hi"}'
    connection = b"" if keep_alive else b"Connection: close\r\n"
    protocol.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (len(body), connection, body)
    )
    for _ in range(20):
        await _next_step()
        if protocol.cycle is not None and protocol.cycle.response_complete and raw.calls:
            break
    writes = [data for call, data in raw.calls if call == "write"]
    assert len(writes) == 1, raw.calls
    head, _, sent = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert sent == b'{"answer":"echo: hi"}'
    assert (("close", None) in raw.calls) is not keep_alive
    protocol.connection_lost(None)
