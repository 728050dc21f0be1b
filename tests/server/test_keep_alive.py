"""Idle kept-alive connections (``keep_alive_timeout``; README, "Idle connections"): the server keeps
one open longer than clients keep theirs (httpx's pool, the openai SDK's: 5 s), so the client side
closes it first. A server closing first races a request the client sends on the connection at
that moment: the request fails unsent (ReadError), and a POST is not retried."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ECHO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "echo"
BODY = b'{"question": "hi"}'
REQUEST = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
ANSWER = b'{"answer":"echo: hi"}'


def _exchange(sock: socket.socket) -> bytes:
    """Send the request; return its whole response (the echo app's: a content-length)."""
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection mid-body: {data!r}"
        body += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def test_an_idle_connection_outlives_a_client_pools_own_limit(
    module_server_factory: Callable[..., Any],
) -> None:
    server = module_server_factory(ECHO)  # the default timeout
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert _exchange(sock) == ANSWER
        time.sleep(5.5)  # idle past httpx's 5 s (and uvicorn's own default, 5 s)
        assert _exchange(sock) == ANSWER  # the same connection, still open


def test_the_timeout_closes_an_idle_connection(module_server_factory: Callable[..., Any]) -> None:
    server = module_server_factory(ECHO, env={"FLOWHOST_KEEP_ALIVE_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert _exchange(sock) == ANSWER
        idle_since = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, with nothing more sent
        assert 0.9 < time.monotonic() - idle_since < 3
