"""A client that goes away cancels its LLM request upstream within 100 ms.

The fake LLM runs in this process (``llm`` fixture) and records, with ``time.monotonic()``, when
flowhost closed its connection to it; the client's close time is taken with the same clock.
Raw sockets, so that "close" is exactly one ``close()`` of the TCP connection.
"""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

import pytest

from flowhost.testing import FakeLLM

LIMIT = 0.1  # seconds from the client's close to the fake seeing flowhost's close
CHUNKS = "[[fake:chunks=one|two|three|four|five|six]][[fake:chunk_delay=0.5]]"


def _request(server: Any, path: str, body: dict[str, Any], *, sse: bool) -> socket.socket:
    raw = json.dumps(body).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Authorization: Bearer secret",
        "Content-Type: application/json",
        f"Content-Length: {len(raw)}",
    ]
    if sse:
        head.append("Accept: text/event-stream")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + raw)
    return sock


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {data!r}"
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed early: {data!r}"
            data += chunk
    return data


def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


STREAMING = {
    "simple": ("/apps/chat", lambda q: {"question": q}),
    "openai": (
        "/v1/chat/completions",
        lambda q: {"model": "chat", "stream": True, "messages": [{"role": "user", "content": q}]},
    ),
    "bailian": (
        "/api/v1/apps/chat/completion",
        lambda q: {"input": {"prompt": q}, "parameters": {"incremental_output": True}},
    ),
}


@pytest.mark.parametrize("protocol", list(STREAMING))
def test_a_dropped_stream_cancels_the_llm_request(
    examples_server: Any, llm: FakeLLM, protocol: str
) -> None:
    path, body = STREAMING[protocol]
    sock = _request(examples_server, path, body(f"{CHUNKS} hi"), sse=True)
    try:
        data = _read_until(sock, b"one")  # the first content event
        assert b" 200 " in data.split(b"\r\n", 1)[0], data
    finally:
        sock.close()
    closed_at = time.monotonic()
    _wait_for(lambda: llm.disconnects)
    [gone] = llm.disconnects
    assert gone.stream
    assert gone.chunks_sent < 6
    lag = gone.at - closed_at
    assert lag < LIMIT, f"the LLM request was cancelled {lag * 1000:.0f} ms after the close"


NON_STREAMING = {
    "simple": ("/apps/chat", lambda q: {"question": q}),
    "openai": (
        "/v1/chat/completions",
        lambda q: {"model": "chat", "messages": [{"role": "user", "content": q}]},
    ),
    "bailian": ("/api/v1/apps/chat/completion", lambda q: {"input": {"prompt": q}}),
}


@pytest.mark.parametrize("protocol", list(NON_STREAMING))
def test_a_client_that_gives_up_cancels_the_llm_request(
    examples_server: Any, llm: FakeLLM, protocol: str
) -> None:
    path, body = NON_STREAMING[protocol]
    sock = _request(examples_server, path, body("[[fake:delay=5]] hi"), sse=False)
    try:
        _wait_for(lambda: llm.requests)  # the LLM call is under way
    finally:
        sock.close()  # the client's timeout
    closed_at = time.monotonic()
    _wait_for(lambda: llm.disconnects)
    [gone] = llm.disconnects
    assert gone.chunks_sent == 0
    lag = gone.at - closed_at
    assert lag < LIMIT, f"the LLM request was cancelled {lag * 1000:.0f} ms after the close"
