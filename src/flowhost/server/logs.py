"""How the served process writes its log lines (``flowhost.server.run.log_config`` uses it).

Two formats, one line a record either way, the server's secrets scrubbed from both
(``scrub_with``, called by ``create_app``: token, database password, Milvus token, connection
keys), whoever logged the record and tracebacks included:

- ``OneLineFormatter`` (``--log-format text``): uvicorn's ``LEVEL:    logger: message`` lines,
  with line breaks and other control characters in a message escaped (``one_line``), so that a
  message quoting what a client sent (a document's name, a node's error) can neither start a
  line of its own nor send escape sequences to a terminal; a traceback, appended after the
  message, keeps its lines.
- ``JsonFormatter`` (``--log-format json``): one JSON object a line for a log collector:
  ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``exception`` (the traceback)
  when there is one, and for uvicorn's access lines ``client``, ``method``, ``path``,
  ``http_version`` and ``status``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from uvicorn.logging import DefaultFormatter

from flowhost.exceptions import one_line
from flowhost.jsontext import compact_json
from flowhost.tracing.attributes import Redactor

__all__ = ["JsonFormatter", "OneLineFormatter", "scrub_with"]

_redactor: Redactor | None = None


def scrub_with(redactor: Redactor | None) -> None:
    """Scrub ``redactor``'s secrets from every line either formatter writes from now on."""
    global _redactor
    _redactor = redactor


def _scrub(text: str) -> str:
    redactor = _redactor
    return text if redactor is None else redactor.scrub(text)


class OneLineFormatter(DefaultFormatter):
    """uvicorn's formatter, every message on one line and scrubbed (see the module)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return _scrub(super().format(record))


# uvicorn.access logs '%s - "%s %s HTTP/%s" %d' with these arguments
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module). Takes, and ignores, uvicorn's formatter
    options (``fmt``, ``use_colors``), so that it can stand in for uvicorn's formatters."""

    def __init__(self, fmt: str | None = None, use_colors: bool | None = None) -> None:
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _scrub(record.getMessage()),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            entry.update(zip(_ACCESS_FIELDS, args, strict=True))
            entry["path"] = _scrub(str(entry["path"]))
        if record.exc_info:
            entry["exception"] = _scrub(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = _scrub(self.formatStack(record.stack_info))
        return compact_json(entry, str)
