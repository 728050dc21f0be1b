"""``CorkedTransport``: a whole response leaves in one write at the end of its loop step; a
stream's head leaves with its first event, and its events at once; a close sends what is held
first; a connection that is gone drops it. And ``FlowhostHttpProtocol`` answers a request with
its head and body in one write, and streams each event as it is written."""

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


WHOLE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-type: text/plain\r\n\r\n"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_a_whole_response_leaves_joined_at_the_end_of_its_step() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.hold_next()
    corked.write(WHOLE_HEAD)
    corked.write(bytearray(b"bo"))
    corked.write(memoryview(b"dy"))
    assert raw.calls == []
    assert corked.get_write_buffer_size() == len(WHOLE_HEAD) + 4
    await _next_step()
    assert raw.calls == [("write", WHOLE_HEAD + b"body")]
    corked.write(b"next")  # not held: no hold_next since
    assert raw.calls[1:] == [("write", b"next")]


async def test_a_streams_head_leaves_with_its_first_event() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.hold_next()
    corked.write(STREAM_HEAD)
    assert raw.calls == []
    corked.write(b"5\r\nfirst\r\n")
    assert raw.calls == [("write", STREAM_HEAD + b"5\r\nfirst\r\n")]
    await _next_step()
    assert len(raw.calls) == 1  # nothing left for the end of the step


async def test_only_the_head_is_held_a_streams_events_leave_at_once() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.hold_next()
    corked.write(STREAM_HEAD)
    await _next_step()  # no event in that step: the head leaves at its end
    assert raw.calls == [("write", STREAM_HEAD)]
    corked.write(b"data: 1\n\n")
    corked.write(b"data: 2\n\n")
    assert raw.calls[1:] == [("write", b"data: 1\n\n"), ("write", b"data: 2\n\n")]
    corked.write(b"unheld")  # without hold_next nothing waits
    assert raw.calls[-1] == ("write", b"unheld")


@pytest.mark.parametrize("head", [WHOLE_HEAD, STREAM_HEAD])
async def test_a_large_body_leaves_at_once_not_copied_to_join_its_head(head: bytes) -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    big = b"x" * LARGE_WRITE
    corked.hold_next()
    corked.write(head)
    corked.write(big)
    assert raw.calls == [("writelines", [head, big])]


async def test_close_sends_the_held_head_first_and_abort_drops_it() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.hold_next()
    corked.writelines([b"head"])
    corked.close()
    assert raw.calls == [("write", b"head"), ("close", None)]
    await _next_step()
    assert len(raw.calls) == 2

    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.hold_next()
    corked.write(b"never sent")
    corked.abort()
    await _next_step()
    assert raw.calls == [("abort", None)]


async def test_a_connection_gone_before_the_step_ends_drops_the_held_head() -> None:
    raw = Recorder()
    corked = CorkedTransport(raw, asyncio.get_running_loop())
    corked.hold_next()
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


async def test_the_protocol_streams_each_event_when_it_is_written() -> None:
    later = asyncio.Event()

    async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"second", "more_body": True})
        await later.wait()
        await send({"type": "http.response.body", "body": b"last", "more_body": False})

    config = ServerConfig(stream, max_header_bytes=4096, header_timeout=5.0)
    config.load()
    raw = Recorder()
    protocol = FlowhostHttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    protocol.connection_made(raw)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(20):
        await _next_step()
        if len(raw.calls) >= 2:
            break
    writes = [data for call, data in raw.calls if call == "write"]
    assert len(writes) == 2  # the head with the first event; the second event on its own
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\n5\r\nfirst\r\n")  # chunked framing
    assert writes[1] == b"6\r\nsecond\r\n"
    later.set()
    for _ in range(20):
        await _next_step()
        if protocol.cycle.response_complete:
            break
    assert raw.calls[-1] == ("write", b"4\r\nlast\r\n0\r\n\r\n")
    protocol.connection_lost(None)


async def test_an_interim_100_continue_reaches_the_client_before_the_body_is_sent() -> None:
    config = ServerConfig(_answer, max_header_bytes=4096, header_timeout=5.0)
    config.load()
    raw = Recorder()
    protocol = FlowhostHttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    protocol.connection_made(raw)
    body = b'{"question": "hi"}'
    protocol.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for _ in range(20):  # the app waits for the body; the client, for the interim answer
        await _next_step()
        if raw.calls:
            break
    assert raw.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]
    protocol.data_received(body)
    for _ in range(20):
        await _next_step()
        if len(raw.calls) > 1:
            break
    head, _, sent = raw.calls[1][1].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert sent == b'{"answer":"echo: hi"}'
    protocol.connection_lost(None)
