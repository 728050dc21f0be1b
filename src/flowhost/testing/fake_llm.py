"""A fake OpenAI-compatible LLM server over real HTTP, for flowhost's tests and benchmarks.

Endpoints: ``POST /v1/chat/completions`` (plain and SSE streaming), ``POST /v1/embeddings``,
``GET /v1/models`` and ``GET /health``. The real ``openai`` SDK works against it unchanged.

Default reply: ``"echo: " + <last user message>``, with the directives below removed and the
text stripped, streamed in word pieces that keep their leading space (``"echo:"``,
``" hello"``, ``" world"``). ``prompt_tokens`` counts the whitespace-separated words of every
message's raw content; ``completion_tokens`` counts the content pieces.

Directives, written anywhere in the LAST user message, script the reply from another process.
Several may be combined; each is ``[[fake:KEY=VALUE]]``:

- ``reply=Hello there world``: the reply text (split into word pieces as above).
- ``chunks=A|B|C``: the exact content pieces; their concatenation is the reply text.
- ``json={"a": 1}``: the reply text is that JSON, exactly as written (it must parse).
- ``delay=0.5``: seconds to wait before anything is sent (added to the server-wide delay).
- ``chunk_delay=0.05``: seconds between two content pieces of a stream.
- ``status=429``: answer with that HTTP status (400-599) and an OpenAI error body, plus
  ``x-should-retry: false`` so that the SDK does not retry.
- ``fail_after=2``: stream 2 content pieces, then close the connection abruptly (without the
  finish chunk or ``[DONE]``). Without ``stream``, headers are sent and then the connection drops.

An unknown key or a bad value is answered with a 400 error. In-process tests can script
replies with :class:`Reply` instead: ``fake.enqueue(Reply(...))`` (consumed first in, first out,
one per chat request) and ``fake.set_default(Reply(...))``. Layers, strongest first:
directives, then the queued reply, then the default, then the echo reply; a ``None`` field
falls through to the layer below.

Run it in the foreground with
``python -m flowhost.testing.fake_llm --host 127.0.0.1 --port 9000 [--delay 1.0]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Self

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["MODELS", "Disconnect", "FakeLLM", "RecordedRequest", "Reply", "embed", "main"]

MODELS = ("fake-chat", "fake-embedding", "gpt-4o-mini", "text-embedding-3-small")
_DIRECTIVE = re.compile(r"\[\[fake:(?P<key>[a-z_]+)=")
_PIECE = re.compile(r"\s*\S+(?:\s+$)?")
_ERRORS: dict[int, tuple[str, str | None]] = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted chat reply. Fields left as ``None`` fall through to the layer below."""

    text: str | None = None
    chunks: Sequence[str] | None = None
    delay: float | None = None
    chunk_delay: float | None = None
    status: int | None = None
    fail_after: int | None = None
    usage: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if self.text is not None and self.chunks is not None and "".join(self.chunks) != self.text:
            raise ValueError("Reply.text and Reply.chunks disagree; give only one of them")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"Reply.status must be an error status (400-599), not {self.status}")
        if any(v is not None and v < 0 for v in (self.delay, self.chunk_delay, self.fail_after)):
            raise ValueError("Reply.delay, chunk_delay and fail_after must not be negative")

    def over(self, base: Reply) -> Reply:
        """This reply layered over ``base``: every field set here wins."""
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in merged.items():
            if value is None:
                merged[name] = getattr(base, name)
        if self.text is not None or self.chunks is not None:
            merged["text"], merged["chunks"] = self.text, self.chunks
        return Reply(**merged)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake received (``/health`` is not recorded)."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or None when there was none or it did not parse
    received_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A client that went away before its chat response was complete."""

    request_index: int
    at: float  # time.monotonic() when the server noticed
    stream: bool
    chunks_sent: int  # content pieces already sent


@dataclass(frozen=True, slots=True)
class _Plan:
    index: int
    model: str
    stream: bool
    include_usage: bool
    pieces: list[str]
    usage: dict[str, int]
    delay: float
    chunk_delay: float
    status: int | None
    fail_after: int | None


class _BadRequest(Exception):
    pass


class _AbortConnection(Exception):
    """Raised after the response started, so that uvicorn closes the connection."""


class _HideAborts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _AbortConnection))


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def _split(text: str) -> list[str]:
    return _PIECE.findall(text) or ([text] if text else [])


def _directive(key: str, raw: str) -> dict[str, Any]:
    try:
        match key:
            case "reply" | "json":
                return {"text": raw}
            case "chunks":
                return {"chunks": tuple(raw.split("|"))}
            case "delay" | "chunk_delay":
                return {key: float(raw)}
            case "status" | "fail_after":
                return {key: int(raw)}
    except ValueError as exc:
        raise _BadRequest(f"bad value in [[fake:{key}={raw}]]: {exc}") from exc
    raise _BadRequest(f"unknown fake directive {key!r} in [[fake:{key}=...]]")


def _parse_directives(text: str) -> tuple[Reply, str]:
    """Split ``text`` into the Reply its directives describe and the text without them."""
    values: dict[str, Any] = {}
    kept: list[str] = []
    pos = 0
    while m := _DIRECTIVE.search(text, pos):
        kept.append(text[pos : m.start()])
        key, start = m["key"], m.end()
        if key == "json":
            try:
                end = json.JSONDecoder().raw_decode(text, start)[1]
            except json.JSONDecodeError as exc:
                raise _BadRequest(f"invalid JSON in [[fake:json=...]]: {exc}") from exc
        else:
            end = text.find("]]", start)
        if end < 0 or not text.startswith("]]", end):
            raise _BadRequest(f"unterminated directive [[fake:{key}=...")
        values.update(_directive(key, text[start:end]))
        pos = end + 2
    kept.append(text[pos:])
    try:
        return Reply(**values), "".join(kept).strip()
    except ValueError as exc:
        raise _BadRequest(str(exc)) from exc


def embed(text: str, dim: int = 8) -> list[float]:
    """The fake's embedding of ``text``: a unit vector seeded by the text's SHA-256."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _error(status: int, message: str) -> JSONResponse:
    default = ("server_error" if status >= 500 else "invalid_request_error", None)
    kind, code = _ERRORS.get(status, default)
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status, headers={"x-should-retry": "false"})


class _ChatExchange(Response):
    """Sends one chat reply as raw ASGI while watching for the client going away."""

    def __init__(self, fake: FakeLLM, plan: _Plan) -> None:
        super().__init__()
        self.fake, self.plan = fake, plan
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.sent, self.complete = 0, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch(cancel: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not self.complete:
                self.fake._disconnected(
                    Disconnect(self.plan.index, time.monotonic(), self.plan.stream, self.sent)
                )
                cancel.cancel()

        abort = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            abort = await self._respond(send)
            tg.cancel_scope.cancel()
        if abort:
            raise _AbortConnection

    async def _respond(self, send: Send) -> bool:
        """Send the reply; True means: drop the connection now."""
        p = self.plan
        await anyio.sleep(p.delay)
        if p.status is not None:
            return await self._send_whole(
                send, _error(p.status, f"fake HTTP {p.status} (scripted)")
            )
        if not p.stream:
            message = {"role": "assistant", "content": "".join(p.pieces), "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            body = {**self._head("chat.completion"), "choices": [choice], "usage": p.usage}
            return await self._send_whole(send, JSONResponse(body), fail=p.fail_after is not None)
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._event(send, {"role": "assistant", "content": ""})
        for i, piece in enumerate(p.pieces):
            if p.fail_after is not None and i >= p.fail_after:
                return True
            await anyio.sleep(p.chunk_delay if i else 0)
            await self._event(send, {"content": piece})
            self.sent += 1
        if p.fail_after is not None:
            return True
        await self._event(send, {}, finish="stop")
        if p.include_usage:
            await self._event(send, None, usage=p.usage)
        self.complete = True
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return False

    async def _send_whole(self, send: Send, response: Response, *, fail: bool = False) -> bool:
        start = {"type": "http.response.start", "status": response.status_code}
        await send({**start, "headers": response.raw_headers})
        if fail:
            return True
        self.complete = True
        await send({"type": "http.response.body", "body": response.body, "more_body": False})
        return False

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.plan.model}

    async def _event(
        self,
        send: Send,
        delta: dict[str, str] | None,
        *,
        finish: str | None = None,
        usage: Any = None,
    ) -> None:
        chunk = self._head("chat.completion.chunk")
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk["choices"] = [] if delta is None else [choice]
        if self.plan.include_usage:
            chunk["usage"] = usage
        data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": data, "more_body": True})


class _Server(uvicorn.Server):
    announce = ""  # printed once listening, in the foreground

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.announce and self.started:
            print(self.announce, flush=True)


class FakeLLM:
    """The fake server: scripting, observation, and running in a background thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        embedding_dim: int = 8,
        startup_timeout: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.delay, self.chunk_delay, self.embedding_dim = delay, chunk_delay, embedding_dim
        self.startup_timeout = startup_timeout
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._default = Reply()
        self._by_model: dict[str, Reply] = {}
        self._requests: list[RecordedRequest] = []
        self._disconnects: list[Disconnect] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )

    # --- scripting and observation (thread-safe) ---
    def enqueue(self, *replies: Reply) -> None:
        """Queue replies for the next chat requests, first in first out, one per request."""
        with self._lock:
            self._queue.extend(replies)

    def set_default(self, reply: Reply | None) -> None:
        """Layer ``reply`` under every chat request's directives and queued reply."""
        with self._lock:
            self._default = reply or Reply()

    def set_model_reply(self, model: str, reply: Reply | None) -> None:
        """Answer every chat request for ``model`` with ``reply``, over directives and the queue.

        Lets a test script one caller (e.g. memory extraction with its own model) while other
        requests to the same fake carry directives for their own replies.
        """
        with self._lock:
            if reply is None:
                self._by_model.pop(model, None)
            else:
                self._by_model[model] = reply

    def reset(self) -> None:
        """Forget recorded requests, disconnects, queued and per-model replies, the default."""
        with self._lock:
            self._queue.clear()
            self._by_model.clear()
            self._default = Reply()
            self._requests.clear()
            self._disconnects.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> list[Disconnect]:
        with self._lock:
            return list(self._disconnects)

    def _disconnected(self, disconnect: Disconnect) -> None:
        with self._lock:
            self._disconnects.append(disconnect)

    # --- endpoints ---
    async def _record(self, request: Request) -> tuple[int, Any]:
        try:
            raw = await request.body()
        except ClientDisconnect:  # the caller gave up (e.g. flowhost cancelled the run)
            raw = b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            index = len(self._requests)
            headers = dict(request.headers.items())
            now = time.monotonic()
            self._requests.append(
                RecordedRequest(index, request.method, request.url.path, headers, body, now)
            )
        return index, body

    async def _chat(self, request: Request) -> Response:
        index, body = await self._record(request)
        try:
            plan = self._plan(index, body)
        except _BadRequest as exc:
            return _error(400, str(exc))
        return _ChatExchange(self, plan)

    def _plan(self, index: int, body: Any) -> _Plan:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise _BadRequest("the body must be a JSON object with a 'messages' list")
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
        scripted, echo = _parse_directives(users[-1] if users else "")
        with self._lock:
            by_model = self._by_model.get(str(body.get("model")))
            if by_model is not None:
                scripted = by_model
            queued = self._queue.popleft() if self._queue and by_model is None else Reply()
            reply = scripted.over(queued.over(self._default))
        if reply.chunks is not None:
            pieces = list(reply.chunks)
        else:
            pieces = _split(reply.text if reply.text is not None else f"echo: {echo}")
        prompt = sum(len(_text(m.get("content")).split()) for m in messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(pieces), **(reply.usage or {})}
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        options = body.get("stream_options")
        return _Plan(
            index=index,
            model=str(body.get("model", "fake-chat")),
            stream=bool(body.get("stream")),
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
            pieces=pieces,
            usage=usage,
            delay=self.delay + (reply.delay or 0.0),
            chunk_delay=self.chunk_delay if reply.chunk_delay is None else reply.chunk_delay,
            status=reply.status,
            fail_after=reply.fail_after,
        )

    async def _embeddings(self, request: Request) -> Response:
        _, body = await self._record(request)
        if not isinstance(body, dict) or "input" not in body:
            return _error(400, "the body must be a JSON object with an 'input'")
        items = body["input"]
        if isinstance(items, str) or (
            isinstance(items, list) and all(isinstance(i, int) for i in items)
        ):
            items = [items]
        texts = [i if isinstance(i, str) else json.dumps(i) for i in items]
        dim = body.get("dimensions") or self.embedding_dim
        if not isinstance(dim, int) or dim < 1:
            return _error(400, "'dimensions' must be a positive integer")
        await anyio.sleep(self.delay)
        data: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            vector: Any = embed(text, dim)
            if body.get("encoding_format") == "base64":  # the openai SDK asks for this by default
                vector = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        words = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": words, "total_tokens": words}
        model = str(body.get("model", "fake-embedding"))
        return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "flowhost"} for m in MODELS]
        return JSONResponse({"object": "list", "data": data})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    # --- running ---
    @property
    def url(self) -> str:
        """``http://HOST:PORT``; the real port once the server runs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL to give the openai SDK as ``base_url``."""
        return f"{self.url}/v1"

    def _bind(self, *, foreground: bool) -> tuple[_Server, socket.socket]:
        logger = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _HideAborts) for f in logger.filters):
            logger.addFilter(_HideAborts())
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            ws="none",
            access_log=False,
            backlog=4096,
            timeout_graceful_shutdown=1,
            # In-process: leave the test process's logging and event-loop policy alone.
            loop="auto" if foreground else "asyncio",
            log_config=uvicorn.config.LOGGING_CONFIG if foreground else None,
            log_level="warning" if foreground else None,
        )
        return _Server(config), sock

    def start(self) -> None:
        """Serve in a background thread; return once ``/health`` answers."""
        if self._thread is not None:
            raise RuntimeError("this FakeLLM is already running")
        self._server, self._sock = self._bind(foreground=False)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="fake-llm", daemon=True
        )
        self._thread.start()
        try:
            self._wait_ready(self._thread)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, thread: threading.Thread) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not thread.is_alive():
                    raise RuntimeError("the fake LLM server thread exited during startup")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        raise TimeoutError(
            f"the fake LLM did not answer on {self.url} within {self.startup_timeout}s"
        )

    def stop(self) -> None:
        """Stop the background server and wait for its thread."""
        server, thread, sock = self._server, self._thread, self._sock
        self._server, self._thread, self._sock = None, None, None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=5.0)
            if thread.is_alive():
                server.force_exit = True
                thread.join()
        if sock is not None:
            sock.close()  # uvicorn closes it on a clean shutdown, not when startup failed

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the foreground until interrupted; print one line once listening."""
        server, sock = self._bind(foreground=True)
        server.announce = f"fake-llm listening on {self.url}"
        with sock:
            server.run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m flowhost.testing.fake_llm``: run the fake in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m flowhost.testing.fake_llm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between pieces")
    parser.add_argument("--embedding-dim", type=int, default=8)
    fake = FakeLLM(**vars(parser.parse_args(argv)))
    with contextlib.suppress(KeyboardInterrupt):
        fake.serve_forever()


if __name__ == "__main__":
    main()
