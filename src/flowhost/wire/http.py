"""Small helpers every protocol's routes share: body parsing, ids, disconnect-aware runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationInfo
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from flowhost.exceptions import InvalidInput, RunCanceled
from flowhost.jsontext import parse_json
from flowhost.service import PreparedRun, RunService

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_OFFSET",
    "RUN_HEADER_PARAMETERS",
    "ClientHeaders",
    "EventStream",
    "client_headers",
    "get_service",
    "header_parameter",
    "null_is_the_default",
    "parse_json_text",
    "read_body",
    "read_json_object",
    "request_id",
    "run_headers",
    "until_disconnect",
]

T = TypeVar("T")
MAX_JSON_DEPTH = 64
MAX_OFFSET = 2**63 - 1  # the largest row offset every SQL backend takes (BIGINT)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def header_parameter(name: str, description: str) -> dict[str, Any]:
    """An optional request header, as an OpenAPI parameter."""
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string"}}  # fmt: skip


# The request headers the run routes read (``client_headers``), for /openapi.json: the routes
# take the plain Request, so FastAPI cannot see them (Swagger UI then offers no field for them).
RUN_HEADER_PARAMETERS: list[dict[str, Any]] = [
    header_parameter(
        "Chat-Session-Id",
        "continue this chat session (32-255 of letters, digits, _ - :); a new one is "
        "assigned and returned in the response header when absent",
    ),
    header_parameter("Chat-User-Id", "the user the session belongs to (optional)"),
    header_parameter("Memory-Id", "long-term memory to recall from and extend (optional)"),
]


def run_headers(prepared: PreparedRun) -> dict[str, str]:
    """Headers every protocol returns for a run: the chat session and the trace id."""
    headers: dict[str, str] = {}
    if prepared.session_id:
        headers["Chat-Session-Id"] = prepared.session_id
    if prepared.trace_id:
        headers["X-Trace-Id"] = prepared.trace_id
    return headers


def get_service(request: Request) -> RunService:
    svc: RunService = request.app.state.service
    return svc


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def _depth_ok(raw: bytes) -> bool:
    depth = 0
    in_str = esc = False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


async def read_body(request: Request) -> bytes:
    """The request body, read straight from ``receive``: ``Request.body`` goes through an
    async generator (its creation alone is registered in a WeakSet by the event loop), a
    measurable share of a small flow's request. A client that leaves before its body is read
    is RunCanceled (499), not an unexpected error."""
    receive = request.receive
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise RunCanceled("the client disconnected before sending its whole request body")


def parse_json_text(raw: bytes | str, field: str) -> Any:
    """JSON text a client sent (a body, a form field), or InvalidInput (400) naming ``field``:
    not JSON, nested deeper than ``MAX_JSON_DEPTH``, a 4300-digit number, bad UTF-8."""
    data = raw.encode() if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and not _depth_ok(data):
        raise InvalidInput(f"{field}: JSON nested deeper than {MAX_JSON_DEPTH} levels", field=field)
    try:
        return parse_json(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, 4300+ digits
        raise InvalidInput(f"{field}: not valid JSON: {exc}", field=field) from None


def null_is_the_default(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A ``mode="before"`` field validator: an explicit JSON null means the field's default,
    as an absent field does (``field_validator("f", mode="before")(null_is_the_default)``)."""
    if value is None and info.field_name is not None:
        return cls.model_fields[info.field_name].get_default(call_default_factory=True)
    return value


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or InvalidInput (400) saying what is wrong with it."""
    raw = await read_body(request)
    if not raw.strip():
        raise InvalidInput("request body is empty; send a JSON object", field="body")
    data = parse_json_text(raw, "body")
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object", field="body")
    return data


_CLIENT_HEADERS: frozenset[bytes] = frozenset(
    {b"chat-session-id", b"chat-user-id", b"memory-id", b"accept", b"x-dashscope-sse"}
)


@dataclass(slots=True)
class ClientHeaders:
    """The headers a run route reads (each its first value, as ``Request.headers.get``)."""

    session_id: str | None = None  # Chat-Session-Id
    user_id: str | None = None  # Chat-User-Id
    memory_id: str | None = None  # Memory-Id ("" read as None)
    accept: str = ""
    dashscope_sse: str = ""  # X-DashScope-SSE

    @property
    def wants_sse(self) -> bool:
        return "text/event-stream" in self.accept


def client_headers(request: Request) -> ClientHeaders:
    """One pass over the raw headers: four ``request.headers.get`` calls cost ~8x as much,
    a measurable share of a small flow's request."""
    found: dict[bytes, str] = {}
    for key, value in request.scope["headers"]:
        if key in _CLIENT_HEADERS and key not in found:
            found[key] = value.decode("latin-1")
    get = found.get
    return ClientHeaders(
        get(b"chat-session-id"),
        get(b"chat-user-id"),
        get(b"memory-id") or None,
        get(b"accept", ""),
        get(b"x-dashscope-sse", ""),
    )


# A client's disconnect is watched for from this long after the work starts: a watcher is a task
# and a receive (about 10 µs of a small flow's request), and most requests end sooner; one that
# left meanwhile is seen at once when watching starts (its disconnect waits in ``receive``).
WATCH_AFTER = 0.02


async def _cancel_on_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in the caller's task; a watcher task cancels it if the client disconnects.

    The request body has been read already, so the next ``receive`` is the disconnect (or never
    comes). The watcher starts ``WATCH_AFTER`` seconds in, so work that ends sooner never has
    one. Raises RunCanceled when the client left, and lets any other cancellation through.
    """
    task = asyncio.current_task()
    assert task is not None
    left = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal left
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                left = True
                task.cancel()
                return

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER, start_watching)
    try:
        return await work()
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:  # the client left: not a cancellation from above
            raise RunCanceled("the client disconnected") from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def until_disconnect(
    request: Request, work: Callable[[], Awaitable[T]], *, prepared: PreparedRun | None = None
) -> T:
    """Run ``work`` but cancel it if the client disconnects first (non-streaming responses).

    Starlette only cancels streaming bodies on disconnect; a plain request handler keeps running.
    When ``work`` is the ``prepared`` run and that runs inline, it never waits (but to store its
    turn): there is nothing to watch, and no watcher is set up.
    """
    if prepared is not None and prepared.runs_inline:
        return await work()
    return await _cancel_on_disconnect(request.receive, work)


class EventStream(StreamingResponse):
    """``text/event-stream`` response: the SSE headers, and the body streamed in one task.

    Starlette's StreamingResponse (ASGI spec < 2.4, which uvicorn speaks) runs the body in an
    anyio task group beside a disconnect listener; here the request's own task streams and one
    small watcher cancels it when the client leaves (cancelling the run and its LLM requests).
    That is ~6 KB less per open stream, and the same cancellation.
    """

    def __init__(self, content: AsyncIterable[str | bytes], headers: Mapping[str, str]) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await _cancel_on_disconnect(receive, lambda: self.stream_response(send))
        except RunCanceled:
            return  # the client left; nothing more to send
