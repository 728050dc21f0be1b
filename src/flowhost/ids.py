"""Ids for requests, runs and traces: time first, random after, and no system call.

``uuid.uuid4()`` reads ``os.urandom``: one system call per id, which costs ~10 µs in a
sandboxed container (two per request were 8% of the simple-mode CPU profile). These ids must be
unique, not secret: they come from ``random`` (seeded from the OS, reseeded in forked children),
as OpenTelemetry's own ``RandomIdGenerator`` does. Chat session ids, which let a client read a
conversation, stay ``secrets.token_hex``.

Time first also keeps the database indexes on run and trace ids append-mostly: a random key
dirties a random index page per insert, which multiplied the trace store's write volume.
"""

from __future__ import annotations

import random
import time
from typing import Final

__all__ = ["new_trace_id", "uuid7"]

_VERSION_7: Final = 0x7 << 76
_VARIANT_RFC: Final = 0x2 << 62
_CLEAR: Final = ~((0xF << 76) | (0x3 << 62))


def uuid7() -> str:
    """An RFC 9562 UUIDv7 string: 48 bits of Unix milliseconds, then 74 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | random.getrandbits(80)
    h = f"{value & _CLEAR | _VERSION_7 | _VARIANT_RFC:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_trace_id() -> int:
    """A W3C trace id: 32 bits of Unix seconds, then 96 random bits (as AWS X-Ray's ids).

    Never the invalid id 0: the time part is not zero."""
    return int(time.time()) << 96 | random.getrandbits(96)
