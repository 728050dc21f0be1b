"""flowhost's one error tree.

Every error a user can cause or meet is one of these; foreign exceptions (pydantic, the openai SDK,
database drivers) are translated into them once, at the boundary where they are caught. Each wire
protocol has exactly one function that maps this tree to its own status code and error body.

    FlowhostError                     base; ``status`` is the HTTP status a protocol should use
    ├── FlowDefinitionError           a flow folder is invalid (file, node, field named)
    ├── RequestError                  the client sent something wrong (4xx)
    │   ├── InvalidInput              400: bad JSON, missing/mistyped input, bad parameter
    │   ├── Unauthorized              401: missing or wrong bearer token
    │   ├── Forbidden                 403: e.g. a session owned by another user
    │   ├── NotFound                  404: unknown app, session, message, ...
    │   ├── RequestTimeout            408: the body did not arrive in time (slow-loris)
    │   └── PayloadTooLarge           413: body over the configured limit
    ├── ServiceUnavailable            503: a backing service (database, vector store) is down
    └── RunError                      a run failed after it started
        ├── NodeError                 a node raised (its name and message are kept)
        │   ├── NodeTimeout           a node ran past its timeout
        │   └── LLMError              an upstream LLM call failed (connection name kept)
        └── RunCanceled               the client went away or the server shut down
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "FlowDefinitionError",
    "FlowhostError",
    "Forbidden",
    "InvalidInput",
    "LLMError",
    "NodeError",
    "NodeTimeout",
    "NotFound",
    "PayloadTooLarge",
    "RequestError",
    "RequestTimeout",
    "RunCanceled",
    "RunError",
    "ServiceUnavailable",
    "Unauthorized",
    "one_line",
]


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def one_line(message: str) -> str:
    """``message`` for a log line: line breaks and other control characters (a terminal's
    escape sequences) escaped, so that text a client sent (and an error quotes) can neither
    start a log line of its own nor restyle the operator's terminal. Tabs stay."""
    return message if message.isprintable() else _CONTROL.sub(_escape, message)


class FlowhostError(Exception):
    """Base of every flowhost error. ``code`` is a stable machine-readable name."""

    status: int = 500
    code: str = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class FlowDefinitionError(FlowhostError):
    """A flow folder is invalid. The message names the file, the node and the field."""

    status = 500
    code = "FlowDefinitionError"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        node: str | None = None,
        field: str | None = None,
    ) -> None:
        where = ", ".join(
            f"{k} {v!r}" for k, v in (("file", file), ("node", node), ("field", field)) if v
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.node, self.field = file, node, field


class RequestError(FlowhostError):
    status = 400
    code = "InvalidParameter"


class InvalidInput(RequestError):
    """400. ``field`` names the offending request field when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unauthorized(RequestError):
    status = 401
    code = "InvalidApiKey"


class Forbidden(RequestError):
    status = 403
    code = "AccessDenied"


class NotFound(RequestError):
    status = 404
    code = "NotFound"


class RequestTimeout(RequestError):
    """The client did not finish sending its body in time (slow-loris); answered 408."""

    status = 408
    code = "RequestTimeout"


class PayloadTooLarge(RequestError):
    status = 413
    code = "RequestTooLarge"


class ServiceUnavailable(FlowhostError):
    status = 503
    code = "ServiceUnavailable"


class RunError(FlowhostError):
    status = 500
    code = "RunFailed"


class NodeError(RunError):
    """A node failed. ``node`` is its name; the message says why."""

    code = "NodeFailed"

    def __init__(self, message: str, *, node: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.error_type = error_type or type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "node": self.node,
            "type": self.error_type,
        }


class NodeTimeout(NodeError):
    code = "NodeTimeout"
    status = 504


class LLMError(NodeError):
    """An upstream LLM call failed. ``upstream_status`` is the endpoint's HTTP status, if any."""

    code = "LLMError"
    status = 502

    def __init__(
        self, message: str, *, node: str, connection: str, upstream_status: int | None = None
    ) -> None:
        super().__init__(message, node=node, error_type="LLMError")
        self.connection = connection
        self.upstream_status = upstream_status


class RunCanceled(RunError):
    code = "RunCanceled"
    status = 499
