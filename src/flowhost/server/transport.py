"""``CorkedTransport``: a connection's writes of one event-loop step leave in one system call.

uvicorn writes a response's head and its body with one ``transport.write`` each, and uvloop
sends each at once: two ``write`` system calls and two TCP segments for every response that is
not streamed. Measured on the echo app at 32 connections (server on one core, wrk on the
other), the second one cost ~14 µs of kernel time a request, a tenth of the request's CPU: the
extra segment, its ACK, and one more wake-up of the client.

``FlowhostHttpProtocol`` gives uvicorn this wrapper as the connection's transport. A write is
held, and one callback (``loop.call_soon``) writes what the step added, joined, after the step:
a whole response (head and body, written in one step by a ``Response``) goes out as one
segment. A stream's chunks leave as before, each when the step that wrote it ends. Nothing
waits for more data: the held bytes leave before the loop looks for I/O again, so latency
moves by the rest of the step only. Everything else goes to the socket's transport; a close
sends what is held first, and a connection that is already gone drops it (as the transport
itself drops writes then).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

__all__ = ["CorkedTransport"]

# A write at least this big leaves at once, with what is held before it: nothing to gain from
# holding it, and joining would copy it.
LARGE_WRITE: Final = 64 * 1024


class CorkedTransport(asyncio.Transport):
    """A transport whose writes of one loop step are sent together (see the module)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if len(data) >= LARGE_WRITE:
            if held is None:
                self._transport.write(data)
            else:
                held.append(bytes(data))
                self._flush()
        elif held is None:
            self._held = [bytes(data)]
            self._loop.call_soon(self._flush)
        else:
            held.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        """Send what is held (the callback at the end of the step; a close)."""
        held, self._held = self._held, None
        if not held or self._transport.is_closing():  # gone: the transport drops writes too
            return
        if len(held) == 1:
            self._transport.write(held[0])
        elif sum(map(len, held)) < LARGE_WRITE:
            self._transport.write(b"".join(held))
        else:
            self._transport.writelines(held)

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self._transport.get_write_buffer_size() + (sum(map(len, held)) if held else 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    # -- the connection ----------------------------------------------------------------------

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()
