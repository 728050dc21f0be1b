"""The run routes' headers, read in one pass as ``Request.headers.get`` reads them."""

from __future__ import annotations

from starlette.requests import Request

from flowhost.wire.http import client_headers


def request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_each_header_is_its_first_value_as_starlette_reads_it() -> None:
    raw = [
        (b"content-type", b"application/json"),
        (b"chat-session-id", b"s" * 32),
        (b"chat-session-id", b"second"),
        (b"chat-user-id", b"caf\xe9"),  # latin-1, as Starlette decodes
        (b"accept", b"text/event-stream"),
        (b"x-dashscope-sse", b"enable"),
    ]
    got = client_headers(request(raw))
    headers = request(raw).headers
    assert got.session_id == headers.get("chat-session-id") == "s" * 32
    assert got.user_id == headers.get("chat-user-id") == "café"
    assert got.wants_sse
    assert got.dashscope_sse == "enable"
    assert got.memory_id is None


def test_absent_and_empty_headers() -> None:
    got = client_headers(request([(b"memory-id", b"")]))
    assert (got.session_id, got.user_id, got.memory_id) == (None, None, None)
    assert got.accept == ""
    assert not got.wants_sse
