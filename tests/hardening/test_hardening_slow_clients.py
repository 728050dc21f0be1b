"""Slow clients: a body that trickles in is answered 408 and its connection closed.

``body_timeout`` (``FLOWHOST_BODY_TIMEOUT``, default 30 s) bounds the time from the request's
headers to the end of its body; the server here uses 2 s. The response is in the protocol's
error shape and carries ``Connection: close``, so uvicorn drops the connection.

Slow or huge *heads* (request line and headers) never reach the ASGI app; flowhost's uvicorn
protocol (``flowhost.server.protocol``) bounds them: a head not complete ``header_timeout`` after
its first byte is answered 408, one past ``max_header_bytes`` 431, and a connection that sends
nothing in ``header_timeout`` is closed (uvicorn alone held all three forever). The server here
uses 2 s and 16 KiB.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ECHO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "echo"
BODY_TIMEOUT = 2.0
HEADER_TIMEOUT = 2.0
MAX_HEADER_BYTES = 16 * 1024
ROUTES = {
    "simple": "/apps/echo",
    "complete": "/apps/echo/run",
    "openai": "/v1/chat/completions",
    "bailian": "/api/v1/apps/echo/completion",
}


@pytest.fixture(scope="module")
def slow_server(module_server_factory: Callable[..., Any]) -> Any:
    env = {
        "FLOWHOST_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "FLOWHOST_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "FLOWHOST_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    }
    return module_server_factory(ECHO, token="secret", env=env)


def _connect(server: Any) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _head(server: Any, path: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer secret\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def _trickle(sock: socket.socket, piece: bytes, seconds: float) -> tuple[bytes, float]:
    """Send ``piece`` every 0.25 s until the server answers (or ``seconds`` pass); then read
    to EOF. Returns everything read and the monotonic time of the EOF."""
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(piece)
        except OSError:  # the server closed the connection under us
            break
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            break
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], deadline - time.monotonic())
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return data, time.monotonic()
        data += chunk
    raise AssertionError(f"the server did not close the connection: {data!r}")


def _response(data: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":  # one chunk is enough for an error body
        body = body.split(b"\r\n", 2)[1]
    return status, headers, json.loads(body)


def _check_shape(protocol: str, headers: dict[str, str], body: Any) -> None:
    assert headers["x-request-id"]
    if protocol == "openai":
        assert body["error"]["code"] == "RequestTimeout", body
        assert "did not arrive" in body["error"]["message"]
    elif protocol == "bailian":
        assert body["code"] == "RequestTimeout", body
        assert body["request_id"] == headers["x-request-id"]
    else:
        assert headers["content-type"] == "application/problem+json"
        assert body["status"] == 408
        assert body["code"] == "RequestTimeout"
        assert "did not arrive" in body["detail"]


@pytest.mark.parametrize("protocol", list(ROUTES))
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_trickling_body_times_out(slow_server: Any, protocol: str, framing: str) -> None:
    path = ROUTES[protocol]
    if framing == "chunked":
        head, piece = _head(slow_server, path, "Transfer-Encoding: chunked"), b"1\r\n \r\n"
    else:
        head, piece = _head(slow_server, path, "Content-Length: 1000"), b" "
    with _connect(slow_server) as sock:
        sock.sendall(head)
        started = time.monotonic()
        data, closed = _trickle(sock, piece, seconds=BODY_TIMEOUT + 8)
    status, headers, body = _response(data)
    assert status == 408, data
    assert headers["connection"] == "close"
    _check_shape(protocol, headers, body)
    assert BODY_TIMEOUT - 0.1 < closed - started < BODY_TIMEOUT + 2


def test_a_stalled_body_times_out(slow_server: Any) -> None:
    with _connect(slow_server) as sock:
        sock.sendall(_head(slow_server, "/apps/echo", "Content-Length: 100") + b'{"quest')
        started = time.monotonic()
        data, closed = _trickle(sock, b"", seconds=BODY_TIMEOUT + 8)
    assert _response(data)[0] == 408
    assert closed - started < BODY_TIMEOUT + 2


def test_fast_clients_are_not_affected(slow_server: Any) -> None:
    """The timeout bounds the body only: a run may take longer (the echo app is fast, so a
    keep-alive connection reused past the timeout checks that the deadline is per request)."""
    with httpx.Client(base_url=slow_server.url, headers=slow_server.headers) as client:
        for _ in range(2):
            r = client.post("/apps/echo", json={"question": "hi"})
            assert r.status_code == 200, r.text
        with client.stream(
            "POST", "/apps/echo", json={"question": "hi"}, headers={"Accept": "text/event-stream"}
        ) as r:
            assert r.status_code == 200
            assert "hi" in r.read().decode()


def _refused(server: Any, reason: str) -> float:
    """``flowhost_http_heads_refused_total{reason=...}`` of ``server``'s /metrics."""
    text = httpx.get(f"{server.url}/metrics", headers=server.headers).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "flowhost_http_heads_refused_total" and (
                sample.labels["reason"] == reason
            ):
                return float(sample.value)
    return 0.0


def test_slow_headers_time_out_and_block_nobody(slow_server: Any) -> None:
    """50 clients trickling their headers are answered 408 after header_timeout; others are
    served meanwhile."""
    before = _refused(slow_server, "timeout")
    socks = [_connect(slow_server) for _ in range(50)]
    try:
        for s in socks:
            s.sendall(b"POST /apps/echo HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        deadline = started + HEADER_TIMEOUT + 5
        answered: dict[socket.socket, bytes] = {}
        with httpx.Client(base_url=slow_server.url, headers=slow_server.headers) as client:
            while len(answered) < len(socks) and time.monotonic() < deadline:
                for s in socks:
                    if s not in answered:
                        try:
                            s.sendall(b"X")  # a header name, one byte at a time
                        except OSError:
                            answered[s] = b""
                r = client.post("/apps/echo", json={"question": "hi"}, timeout=2)
                assert r.status_code == 200
                readable, _, _ = select.select([s for s in socks if s not in answered], [], [], 0.2)
                for s in readable:
                    answered[s] = s.recv(65536)
        assert len(answered) == len(socks), "a slow-header connection was not closed"
        assert time.monotonic() - started > HEADER_TIMEOUT - 0.1
        replies = [data for data in answered.values() if data]
        assert replies  # (a reset may beat the answer to a client still sending)
        for data in replies:
            status, headers, body = _response(data)
            assert status == 408
            assert headers["connection"] == "close"
            assert headers["content-type"] == "application/problem+json"
            assert body["code"] == "RequestTimeout"
            assert body["request_id"] == headers["x-request-id"]
            assert f"headers did not arrive within {HEADER_TIMEOUT:g} s" in body["detail"]
        assert _refused(slow_server, "timeout") - before == len(socks)
    finally:
        for s in socks:
            s.close()


def test_a_connection_that_sends_nothing_is_closed(slow_server: Any) -> None:
    before = _refused(slow_server, "silent")
    with _connect(slow_server) as sock:
        started = time.monotonic()
        data, closed = _trickle(sock, b"", seconds=HEADER_TIMEOUT + 8)
    assert data == b""  # no request, no answer
    assert HEADER_TIMEOUT - 0.1 < closed - started < HEADER_TIMEOUT + 2
    assert _refused(slow_server, "silent") - before == 1


@pytest.mark.parametrize("finished", [False, True])
def test_a_head_too_large_is_431(slow_server: Any, finished: bool) -> None:
    """An endless header (refused as it arrives: memory stays bounded) and a complete head
    over the limit (measured exactly) are both 431; a head under the limit is served."""
    before = _refused(slow_server, "too_large")
    big = b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 1024)
    with _connect(slow_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        if finished:
            sock.sendall(big + b"\r\n\r\n")
            data, _ = _trickle(sock, b"", seconds=10)
        else:
            sock.sendall(big[:1000])
            data, _ = _trickle(sock, b"a" * 4096, seconds=10)  # the value never ends
    status, headers, body = _response(data)
    assert status == 431
    assert headers["connection"] == "close"
    assert body["code"] == "RequestHeaderFieldsTooLarge"
    assert f"exceed {MAX_HEADER_BYTES} bytes" in body["detail"]
    assert _refused(slow_server, "too_large") - before == 1
    fits = {"X-Fits": "a" * (MAX_HEADER_BYTES - 1024)}
    assert httpx.get(f"{slow_server.url}/health", headers=fits).status_code == 200


def test_a_large_body_then_a_pipelined_request_are_both_served(slow_server: Any) -> None:
    """The head limit counts a head's own bytes: the end of a large body sent in the same data
    as the next request's first bytes does not count against that request's head."""
    body = json.dumps({"question": "a" * (4 * MAX_HEADER_BYTES)}).encode()
    first = _head(slow_server, "/apps/echo", f"Content-Length: {len(body)}") + body
    second = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{slow_server.port}\r\n".encode()
    with _connect(slow_server) as sock:
        sock.sendall(first + second[:20])  # one write: the body's end and the next head's start
        sock.sendall(second[20:] + b"Connection: close\r\n\r\n")
        data, _ = _trickle(sock, b"", seconds=10)
    assert data.count(b"HTTP/1.1 200 OK") == 2, data[:300]


def _send_until_closed(sock: socket.socket, piece: bytes, seconds: float) -> tuple[bytes, int]:
    """Send ``piece`` again and again until the server closes the connection; returns what was
    read and how many bytes were written (into the sockets' buffers, at least)."""
    data, sent = b"", 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data, sent
            if not chunk:
                return data, sent
            data += chunk
        try:
            sock.sendall(piece)
        except OSError:  # closed under us
            return data, sent
        sent += len(piece)
    raise AssertionError(f"the server did not close the connection after {sent} bytes")


def test_endless_trailers_end_the_connection(slow_server: Any) -> None:
    """Trailers after a chunked body's last chunk are headers too (llhttp adds them to the
    request's list, with no limit of uvicorn's): past max_header_bytes the connection ends."""
    before = _refused(slow_server, "too_large")
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: "
    with _connect(slow_server) as sock:
        sock.sendall(head)
        data, _ = _send_until_closed(sock, b"a" * 4096, seconds=10)
    # /health answered at once; then cut (with unread data, so by a reset, which may discard
    # the answer before the client reads it; what the client wrote meanwhile sits in socket
    # buffers, so its count says nothing of what the server read)
    assert data == b"" or data.startswith(b"HTTP/1.1 200 OK")
    assert _refused(slow_server, "too_large") - before == 1


def test_a_chunked_body_of_many_small_chunks_is_served(slow_server: Any) -> None:
    """Chunk framing is not trailers: 3,000 one-byte chunks (15 KB of framing) are fine."""
    question = "a" * 3000
    body = json.dumps({"question": question}).encode()
    chunks = b"".join(b"1\r\n" + body[i : i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"
    with _connect(slow_server) as sock:
        sock.sendall(_head(slow_server, "/apps/echo", "Transfer-Encoding: chunked") + chunks)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _ = _trickle(sock, b"", seconds=10)
    assert data.count(b"HTTP/1.1 200 OK") == 2, data[:300]
    assert question.encode() in data


def test_a_head_pipelined_behind_a_long_stream_waits_its_turn(
    server_factory: Callable[..., Any],
) -> None:
    """The header timeout of a pipelined request runs once the response before it is sent: a
    stream longer than the timeout is neither cut nor followed mid-way by a 408."""
    slow = Path(__file__).resolve().parents[1] / "flows_fixtures" / "hardening" / "slow_stream"
    server = server_factory(slow, env={"FLOWHOST_HEADER_TIMEOUT": str(HEADER_TIMEOUT)})
    body = json.dumps({"question": "8"}).encode()  # 8 pieces, 0.5 s apart: 4 s of stream
    stream = (
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with _connect(server) as sock:
        sock.sendall(stream + b"GET /health HTTP/1.1\r\nHo")  # the next head, begun
        data = b""
        deadline = time.monotonic() + 20
        while b"\r\n0\r\n\r\n" not in data and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            assert chunk, f"the connection was closed mid-stream: {data[-300:]!r}"
            data += chunk
        assert b"piece7" in data
        # a 408 is a status line (the stream's ids are hex and may hold the digits 408)
        assert b"HTTP/1.1 408" not in data
        assert b"RequestTimeout" not in data
        sock.sendall(b"st: x\r\nConnection: close\r\n\r\n")  # the rest of it, in time
        rest, _ = _trickle(sock, b"", seconds=10)
    assert rest.startswith(b"HTTP/1.1 200 OK"), rest[:200]
