"""uvicorn's httptools protocol, with limits on a request's head (request line and headers).

uvicorn with httptools bounds neither the size nor the time of a head: a client may send one
header forever (200 MB of it grew a server to 305 MB) or open connections and send nothing
(each held until the client goes: slow-loris). ``FlowhostHttpProtocol`` closes a connection

- with 431 once a head passes ``max_header_bytes``: an unfinished head by the bytes received
  after the data it began in (so memory stays bounded however the head is cut into packets,
  within one read more), a complete one by its parsed line and headers;
- with 408 when a request's head is not complete ``header_timeout`` seconds after its first
  byte; a new connection that sends nothing at all in that time is closed without an answer
  (checked every quarter of the timeout: a late head is refused within 1.25 times it).

A request whose whole body has arrived is marked in its scope (``BODY_COMPLETE``): the body
deadline of ``RequestContextMiddleware`` need not watch its receives. Between requests of a
kept-alive connection, uvicorn's keep-alive timeout applies (``keep_alive_timeout``). The
limits come from ``ServerConfig`` (``uvicorn.Config`` with two more settings): worker processes
get the config as uvicorn pickles it to them.

uvicorn is given the connection's transport as a ``CorkedTransport``
(``flowhost.server.transport``): a response's head leaves with its body, in one system call.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any, Final, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flowhost.ids import uuid7
from flowhost.metrics import HEADS_REFUSED
from flowhost.server.errors import problem
from flowhost.server.middleware import BODY_COMPLETE
from flowhost.server.transport import CorkedTransport

__all__ = ["HEADER_TIMEOUT_S", "MAX_HEADER_BYTES", "FlowhostHttpProtocol", "ServerConfig"]

log = logging.getLogger("flowhost.server")

MAX_HEADER_BYTES: Final = 64 * 1024
HEADER_TIMEOUT_S: Final = 30.0
_CHUNK_FRAMING: Final = 16  # bytes a chunk of a chunked body may add (its size line and CRLFs)
_TOO_LARGE: Final = HEADS_REFUSED.labels("too_large")
_TIMEOUT: Final = HEADS_REFUSED.labels("timeout")
_SILENT: Final = HEADS_REFUSED.labels("silent")


class ServerConfig(uvicorn.Config):
    """``uvicorn.Config`` with the head limits of ``FlowhostHttpProtocol``, which it serves."""

    def __init__(
        self,
        app: Any,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        header_timeout: float = HEADER_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, http=FlowhostHttpProtocol, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout


class _Head:
    """A connection's head state. One attribute of the protocol rather than eight: uvicorn's
    protocol has 28, and past 30 CPython stops sharing an instance dict's keys between
    instances (each connection then holds its own ~2 KB table: +2.1 KB of RSS per held SSE
    stream in ``bench streams``)."""

    __slots__ = (
        "after",
        "began",
        "chunk",
        "chunks",
        "extra",
        "first",
        "in_head",
        "max_bytes",
        "refused",
        "since",
        "timeout",
        "timer",
    )

    def __init__(self, max_bytes: int, timeout: float) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.in_head = True  # no complete head yet for the current (or first) request
        self.began = False  # the current request's first byte has arrived
        self.since = 0.0  # loop time of that byte (or of the connection)
        self.chunk = 0  # bytes of the data being parsed
        self.first = 0  # bytes of the data the head began in (some may be another request's)
        self.after = 0  # bytes received after that data: all of them the head's
        self.extra = 0  # bytes after the head that were not body: chunk framing, trailers
        self.chunks = 0  # chunks of a chunked body
        self.refused = False
        self.timer: asyncio.TimerHandle | None = None


class FlowhostHttpProtocol(HttpToolsProtocol):
    """See the module."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._head = _Head(
            int(getattr(config, "max_header_bytes", MAX_HEADER_BYTES)),
            float(getattr(config, "header_timeout", HEADER_TIMEOUT_S)),
        )

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # a response's head and body in one system call (see flowhost.server.transport)
        super().connection_made(CorkedTransport(transport, self.loop))
        h = self._head
        h.since = self.loop.time()
        # One timer a connection, checking every quarter of the timeout, rather than one
        # armed and cancelled per request (~2 µs of a request's ~40 µs in uvicorn).
        h.timer = self.loop.call_later(h.timeout / 4, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        h = self._head
        if h.timer is not None:
            h.timer.cancel()
            h.timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        h = self._head
        if h.refused:
            return
        n = h.chunk = len(data)
        if h.in_head:  # a head began before this data (or the connection is new)
            h.after += n
        else:
            h.extra += n  # less the body, in on_body
        super().data_received(data)  # may begin a head (on_message_begin)
        if h.refused or self.transport.is_closing():  # refused, or uvicorn answered 400
            return
        if h.in_head:
            # Unfinished, the head holds all of ``after`` (never the end of an earlier request
            # sent in the same data as its beginning, a pipelined body, say): refuse on that.
            if h.after > h.max_bytes:
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        elif h.extra > h.max_bytes + _CHUNK_FRAMING * h.chunks:
            # Trailers after a chunked body's last chunk are headers too, added to the
            # request's list with no limit (250 MB of one grew a server by 240 MB and stalled
            # its loop): the request is being served, so no answer, only the end of it.
            h.refused = True
            _TOO_LARGE.inc()
            log.info(
                "request from %s cut: its chunk framing and trailers exceed %d bytes",
                _client(self.client),
                h.max_bytes,
            )
            self.transport.close()

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        h = self._head
        h.in_head = h.began = True
        h.since = self.loop.time()
        h.first, h.after = h.chunk, 0  # the head may have begun anywhere in this data
        h.extra = h.chunks = 0

    def on_headers_complete(self) -> None:
        h = self._head
        if h.refused:
            return
        # first + after counts at least the head's bytes: measure the head only when over
        if h.first + h.after > h.max_bytes and self._head_size() > h.max_bytes:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return
        h.in_head = h.began = False
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # the cycle's first write is its response's head: sent with the body (see the module)
        cast(CorkedTransport, self.transport).hold_next()
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        h = self._head
        if not h.refused:
            h.extra -= len(body)
            super().on_body(body)

    def on_chunk_header(self) -> None:  # only chunked bodies call it
        self._head.chunks += 1

    def on_message_complete(self) -> None:
        if not self._head.refused:
            self.scope[BODY_COMPLETE] = True  # type: ignore[typeddict-unknown-key]
            super().on_message_complete()

    # -- limits ------------------------------------------------------------------------------

    def _head_size(self) -> int:
        """The current head's bytes, as parsed: its line (method and version counted as 16
        bytes with their spaces and CRLF, as in ``POST / HTTP/1.1``), its headers and the
        blank line."""
        return 16 + len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) + 2

    def _responding(self) -> bool:
        """A response to an earlier request of this connection is still being sent."""
        return self.cycle is not None and not self.cycle.response_complete

    def _check_head(self) -> None:
        h = self._head
        h.timer = None
        if h.refused or self.transport.is_closing():
            return
        if h.in_head and self._responding():  # a pipelined head waits its turn
            h.since = self.loop.time()
        if not h.in_head or self.loop.time() - h.since < h.timeout:
            h.timer = self.loop.call_later(h.timeout / 4, self._check_head)
        elif h.began:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT)
        else:  # a connection that never sent a byte: nothing to answer
            h.refused = True
            _SILENT.inc()
            self.transport.close()

    def _refuse(self, status: HTTPStatus) -> None:
        """Answer ``status`` (RFC 7807 JSON) and close the connection."""
        h = self._head
        h.refused = True
        if status is HTTPStatus.REQUEST_TIMEOUT:
            code = "RequestTimeout"
            detail = f"the request's headers did not arrive within {h.timeout:g} s"
            _TIMEOUT.inc()
        else:
            code = "RequestHeaderFieldsTooLarge"
            detail = f"the request's line and headers exceed {h.max_bytes} bytes"
            _TOO_LARGE.inc()
        rid = uuid7()
        log.info("request %s from %s refused: %s", rid, _client(self.client), detail)
        if self._responding():  # no answer in the middle of another one: only the end
            self.transport.close()
            return
        body = problem(status, code, detail, None, rid).body
        head = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii")]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(
            b"content-type: application/problem+json\r\n"
            b"content-length: %d\r\nx-request-id: %s\r\nconnection: close\r\n\r\n"
            % (len(body), rid.encode("ascii"))
        )
        self.transport.write(b"".join(head) + bytes(body))
        self.transport.close()


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown client"
