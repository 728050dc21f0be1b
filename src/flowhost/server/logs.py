"""How the served process writes its log lines (``flowhost.server.run.log_config`` uses it)."""

from __future__ import annotations

import logging
from typing import ClassVar

from uvicorn.logging import DefaultFormatter

from flowhost.exceptions import one_line
from flowhost.tracing.attributes import Redactor

__all__ = ["OneLineFormatter"]


class OneLineFormatter(DefaultFormatter):
    """uvicorn's formatter, with line breaks in a record's message escaped (``one_line``): a
    message quoting what a client sent (a document's name, a node's error) cannot start a log
    line of its own. A traceback, appended after the message, keeps its lines.

    ``redactor`` (set by ``create_app``: the server's token, database password, connection
    keys) scrubs them out of the whole line, traceback included, whoever logged it."""

    redactor: ClassVar[Redactor | None] = None

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if "\n" in message or "\r" in message:
            record.message = one_line(message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        redactor = OneLineFormatter.redactor
        return text if redactor is None else redactor.scrub(text)
