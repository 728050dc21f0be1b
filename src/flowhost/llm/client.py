"""Chat completions against any OpenAI-compatible endpoint, with failures made readable.

Every call streams (``stream_options.include_usage``, so token accounting works on streamed
answers too). Two paths send it, with the same request, errors and retries:

- **Hot path** (the default): one ``aiohttp`` session per connection (the transport the SDK's
  own ``DefaultAioHttpClient`` runs on) posts the request and reads the SSE stream. The
  ``openai`` SDK stays in charge of everything but moving bytes: its client supplies the
  headers (auth, user agent, platform), decides which failures are retried and how long to
  wait (``_should_retry``, ``_calculate_retry_timeout``: ``x-should-retry``, ``retry-after``,
  408/409/429/5xx, exponential backoff with jitter) and builds the status errors
  (``_make_status_error_from_response``), so messages and retries are the SDK's own.
- **SDK path**: ``AsyncOpenAI.post`` (the SDK's request for any endpoint) with raw dict
  chunks. Used when the installed SDK lacks one of the helpers above or they no longer take
  what the hot path gives them (tried once per connection: ``_helpers_work``), or when
  ``FLOWHOST_LLM_SDK_PATH=1``.

Why not the SDK for every call: at 500 concurrent streams on one core the SDK's per-call
machinery (request option models, header merging, URL parsing, httpx2 request and response
objects; in ``chat.completions.create`` also the TypedDict request transform and a pydantic
model per chunk) cost 4.1 ms of CPU per call with ``create`` and 1.7-2.1 ms with ``post`` and
raw chunks, against 0.43-0.63 ms here (bare aiohttp: 0.49-0.57 ms). Serving 450 calls/s on one
core leaves 2.2 ms for the whole request, server and engine included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    import openai

from flowhost.frozen import frozen
from flowhost.jsontext import compact_json, parse_json
from flowhost.llm.connections import Connection

__all__ = ["ChatChunk", "LLMCallError", "LLMClient"]

log = logging.getLogger(__name__)

# The SDK helpers the hot path relies on (present in openai 1.x to 3.x).
_SDK_HELPERS = ("_should_retry", "_calculate_retry_timeout", "_make_status_error_from_response")
_DRAIN_TIMEOUT = 0.1  # as the SDK: after [DONE], read the end of the body this long at most
MAX_CONNECTIONS = 10_000  # per LLM connection, unless FLOWHOST_LLM_MAX_CONNECTIONS says otherwise


@frozen
class ChatChunk:
    """A content delta, or (at the end) the usage of the call."""

    delta: str = ""
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class LLMCallError(Exception):
    """An upstream call failed; the message names the connection and says what to do."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Endpoint:
    """Per-connection state of the hot path: the SDK client, a session, fixed headers."""

    __slots__ = ("headers", "proxy", "sdk", "session", "timeout", "url")

    def __init__(self, sdk: openai.AsyncOpenAI, conn: Connection, headers: dict[str, str]) -> None:
        import aiohttp
        from multidict import CIMultiDict, CIMultiDictProxy

        self.sdk = sdk
        self.url = f"{str(sdk.base_url).rstrip('/')}/chat/completions"
        # a multidict as aiohttp keeps them: not copied into a new one for every request
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        t = conn.timeout
        # the SDK's aiohttp transport maps its httpx2 timeout (connect/read/pool) the same way
        self.timeout = aiohttp.ClientTimeout(sock_connect=t, sock_read=t, connect=t)
        # Concurrent streams per connection: FLOWHOST_LLM_MAX_CONNECTIONS (the SDK's own limit
        # of 1000 would cap a process at 1000 open answers). Idle connections are kept 4 s, not
        # the SDK's 5 s: a server that closes idle connections after 5 s (uvicorn's default)
        # would otherwise race with their reuse, and a request sent on a closing one fails.
        connector = aiohttp.TCPConnector(limit=_max_connections(), keepalive_timeout=4.0)
        self.session = aiohttp.ClientSession(connector=connector)
        self.proxy = _env_proxy(self.url)


def _max_connections() -> int:
    value = os.environ.get("FLOWHOST_LLM_MAX_CONNECTIONS", "")
    return int(value) if value.strip().isdigit() else MAX_CONNECTIONS


def _env_proxy(url: str) -> str | None:
    """The proxy for ``url`` from HTTP(S)_PROXY / ALL_PROXY / NO_PROXY, as the SDK's client
    honours them (looked up once per connection, not per request)."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxy


class _RetryOptions:
    """What ``_calculate_retry_timeout`` reads from the SDK's request options."""

    __slots__ = ("max_retries",)

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def get_max_retries(self, default: int) -> int:
        return self.max_retries


class _NoRequest:
    """The request of a ``_StatusResponse``: no headers to scrub (openai 3.6x copies a request
    that carries credentials before keeping it on an error)."""

    __slots__ = ()
    headers: Mapping[str, str] = MappingProxyType({})


_NO_REQUEST = _NoRequest()


class _StatusResponse:
    """The parts of an HTTP response the SDK's retry and status-error helpers read."""

    __slots__ = ("headers", "status_code", "text")
    is_closed = False
    is_stream_consumed = True
    request = _NO_REQUEST
    history: tuple[()] = ()
    next_request = None

    def __init__(self, status: int, headers: Mapping[str, str], text: str) -> None:
        self.status_code, self.headers, self.text = status, headers, text


def _sdk_version() -> str:
    import openai

    return str(getattr(openai, "__version__", "?"))


def _helpers_work(sdk: openai.AsyncOpenAI) -> bool:
    """Whether the SDK's private helpers (``_SDK_HELPERS``) still take what the hot path gives
    them: tried once per connection on made-up responses, so that an SDK release that changes
    them sends calls the SDK's own way (slower, as correct) instead of failing every error."""
    import openai

    try:
        failed = _StatusResponse(503, {"retry-after-ms": "5"}, '{"error": {"message": "probe"}}')
        error = sdk._make_status_error_from_response(failed)  # type: ignore[arg-type]
        delay = sdk._calculate_retry_timeout(1, _RetryOptions(2), failed.headers)  # type: ignore[arg-type]
        refused = _StatusResponse(400, {"x-should-retry": "true"}, "")
        return (
            isinstance(error, openai.InternalServerError)
            and error.status_code == 503
            and "probe" in error.message
            and sdk._should_retry(failed)  # type: ignore[arg-type]
            and sdk._should_retry(refused)  # type: ignore[arg-type]
            and 0 <= float(delay) <= 60
        )
    except Exception:
        return False


class _Retry(Exception):
    """The attempt failed before any content; the SDK's policy allows another one."""

    def __init__(self, delay: float) -> None:
        self.delay = delay


class LLMClient:
    def __init__(self) -> None:
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._endpoints: dict[str, _Endpoint] = {}
        self._sdk_path = os.environ.get("FLOWHOST_LLM_SDK_PATH", "") in ("1", "true", "yes")

    def client_for(self, conn: Connection) -> openai.AsyncOpenAI:
        import openai  # imported on first use: it is slow to import and python-only flows skip it

        key = f"{conn.name}|{conn.base_url}"
        client = self._clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=conn.base_url,
                api_key=conn.api_key,
                timeout=conn.timeout,
                max_retries=conn.max_retries,
                default_headers=dict(conn.headers) or None,
                # aiohttp transport: the default httpx2 pool spent 4-6 ms of CPU per streamed
                # call at 500 concurrent streams (it scans every pooled connection per request)
                http_client=openai.DefaultAioHttpClient(timeout=conn.timeout),
            )
            self._clients[key] = client
        return client

    async def _endpoint(self, conn: Connection) -> _Endpoint | None:
        """The hot path's state for ``conn``; None when the SDK path must be used."""
        key = f"{conn.name}|{conn.base_url}"
        ep = self._endpoints.get(key)
        if ep is not None or self._sdk_path:
            return ep
        sdk = self.client_for(conn)
        if not all(callable(getattr(sdk, name, None)) for name in _SDK_HELPERS) or not (
            _helpers_work(sdk)
        ):
            log.warning(
                "openai %s: its retry and error helpers changed; LLM calls use the SDK's own "
                "(slower) request path",
                _sdk_version(),
            )
            self._sdk_path = True
            return None
        # the SDK's own headers; platform detection may block, so it runs once, in a thread
        raw = await asyncio.to_thread(lambda: {**sdk.default_headers, **sdk.auth_headers})
        headers = {k: v for k, v in raw.items() if isinstance(v, str)}
        headers.setdefault("Authorization", f"Bearer {conn.api_key}")
        ep = self._endpoints.get(key)  # another call may have made it meanwhile
        if ep is None:
            ep = self._endpoints[key] = _Endpoint(sdk, conn, headers)
        return ep

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        for ep in endpoints:
            await ep.session.close()
        for c in clients:
            await c.close()

    async def stream_chat(
        self,
        conn: Connection,
        *,
        model: str,
        messages: Sequence[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncGenerator[ChatChunk, None]:
        """Yield content deltas, then one chunk with the usage. Raises LLMCallError."""
        body = {
            "model": model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            **params,
        }
        ep = await self._endpoint(conn)
        chunks = self._sdk_chunks(conn, body) if ep is None else self._fast_chunks(conn, ep, body)
        try:
            async for chunk in chunks:
                choices = chunk.get("choices")
                if choices:
                    delta = choices[0].get("delta")
                    if delta and delta.get("content"):
                        yield ChatChunk(delta=delta["content"], model=chunk.get("model"))
                usage = chunk.get("usage")
                if usage:
                    yield ChatChunk(
                        model=chunk.get("model") or model,
                        input_tokens=usage.get("prompt_tokens"),
                        output_tokens=usage.get("completion_tokens"),
                    )
        finally:
            await chunks.aclose()

    # --- the hot path ---

    async def _fast_chunks(
        self, conn: Connection, ep: _Endpoint, body: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        data = compact_json(body).encode()
        retries = conn.max_retries
        for attempt in range(retries + 1):
            try:
                # aclosing: a consumer that stops early closes the upstream response now
                async with contextlib.aclosing(
                    self._attempt(conn, ep, data, retries - attempt)
                ) as it:
                    async for chunk in it:
                        yield chunk
                return
            except _Retry as again:
                await asyncio.sleep(again.delay)

    async def _attempt(
        self, conn: Connection, ep: _Endpoint, data: bytes, remaining: int
    ) -> AsyncGenerator[dict[str, Any], None]:
        import aiohttp

        try:
            resp = await ep.session.post(
                ep.url, data=data, headers=ep.headers, timeout=ep.timeout, proxy=ep.proxy
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if remaining > 0:  # the SDK retries every transport failure
                raise _Retry(self._backoff(ep, conn, remaining, None)) from exc
            raise _transport_error(conn, exc, started=False) from exc
        try:
            if resp.status >= 400:
                text = await _read_error_body(resp)
                failed = _StatusResponse(resp.status, resp.headers, text)
                if remaining > 0 and ep.sdk._should_retry(failed):  # type: ignore[arg-type]
                    raise _Retry(self._backoff(ep, conn, remaining, resp.headers))
                error = ep.sdk._make_status_error_from_response(failed)  # type: ignore[arg-type]
                raise LLMCallError(_status_message(conn, error), status=error.status_code)
            try:
                async for item in _sse_json(resp.content):
                    yield item
            except (_StreamError, TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                raise _transport_error(conn, exc, started=True) from exc
            if not resp.content.is_eof():  # keep the connection: read the end of the body
                try:
                    async with asyncio.timeout(_DRAIN_TIMEOUT):
                        await resp.content.read()
                except (TimeoutError, aiohttp.ClientError, OSError):
                    resp.close()
        finally:
            if resp.content.is_eof():
                resp.release()  # back to the pool
            else:
                resp.close()  # the caller went away mid-stream: drop the connection upstream

    @staticmethod
    def _backoff(
        ep: _Endpoint, conn: Connection, remaining: int, headers: Mapping[str, str] | None
    ) -> float:
        opts: Any = _RetryOptions(conn.max_retries)
        return float(ep.sdk._calculate_retry_timeout(remaining, opts, headers))  # type: ignore[arg-type]

    # --- the SDK path ---

    async def _sdk_chunks(
        self, conn: Connection, body: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        import openai

        client = self.client_for(conn)
        started = False
        try:
            # `post` with raw dict chunks: `chat.completions.create` walks the request through
            # its TypedDict transforms and builds pydantic models per chunk (2x the CPU)
            stream: Any = await client.post(
                "/chat/completions",
                body=body,
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            started = True
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.close()
        except openai.APIStatusError as exc:
            raise LLMCallError(_status_message(conn, exc), status=exc.status_code) from exc
        except openai.APITimeoutError as exc:
            refused = _connect_error(exc)
            if refused is not None:  # the aiohttp transport reports a refused connect as a timeout
                raise LLMCallError(_unreachable(conn, refused)) from exc
            raise LLMCallError(_timed_out(conn)) from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise LLMCallError(
                _broke_off(conn, cause) if started else _unreachable(conn, cause)
            ) from exc
        except openai.APIError as exc:
            raise LLMCallError(_stream_failed(conn, exc.message)) from exc
        except LLMCallError:
            raise
        except Exception as exc:  # the SDK's transport errors (httpx2) mid-stream
            raise LLMCallError(_broke_off(conn, exc)) from exc


async def _sse_json(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of an SSE stream, as the SDK's ``AsyncStream`` reads them.

    Events end at a blank line; their ``data:`` lines are joined with newlines; other fields
    and comments are ignored; ``[DONE]`` ends the stream; an ``{"error": ...}`` payload raises.
    Lines may end in LF or CRLF (what every OpenAI-compatible server sends).
    """
    buf = b""
    data: list[bytes] = []
    async for piece in content.iter_any():
        buf = buf + piece if buf else piece
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = buf[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if line:
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                continue
            if not data:
                continue
            payload = data[0] if len(data) == 1 else b"\n".join(data)
            data = []
            if payload.startswith(b"[DONE]"):
                return
            item = parse_json(payload)
            if isinstance(item, dict) and item.get("error"):
                raise _StreamError(item["error"])
            yield item
        buf = buf[start:]


class _StreamError(Exception):
    """An ``{"error": ...}`` event inside a stream (the SDK raises ``openai.APIError``)."""

    def __init__(self, error: Any) -> None:
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        super().__init__(message)
        self.message = message


async def _read_error_body(resp: aiohttp.ClientResponse) -> str:
    try:
        return (await resp.read()).decode("utf-8", errors="replace").strip()
    except Exception:  # the status alone still makes an error
        return ""


def _transport_error(conn: Connection, exc: BaseException, *, started: bool) -> LLMCallError:
    if isinstance(exc, _StreamError):
        return LLMCallError(_stream_failed(conn, exc.message))
    if isinstance(exc, TimeoutError):
        return LLMCallError(_timed_out(conn))
    if not started:
        return LLMCallError(_unreachable(conn, exc))
    return LLMCallError(_broke_off(conn, exc))


def _unreachable(conn: Connection, cause: object) -> str:
    return f"connection {conn.name!r}: cannot reach the LLM endpoint {conn.base_url} ({cause})"


def _timed_out(conn: Connection) -> str:
    return (
        f"connection {conn.name!r}: the LLM endpoint {conn.base_url} timed out after "
        f"{conn.timeout:g}s"
    )


def _stream_failed(conn: Connection, message: str) -> str:
    return f"connection {conn.name!r}: LLM stream failed: {message}"


def _broke_off(conn: Connection, exc: BaseException) -> str:
    return f"connection {conn.name!r}: LLM stream broke off ({type(exc).__name__}: {exc})"


def _connect_error(exc: BaseException) -> OSError | None:
    """The OSError (refused, unreachable, DNS) behind an SDK error, if one is in its causes."""
    seen: BaseException | None = exc
    for _ in range(10):
        seen = seen.__cause__ or seen.__context__ if seen is not None else None
        if seen is None:
            return None
        if isinstance(seen, OSError) and not isinstance(seen, TimeoutError):
            return seen
    return None


def _status_message(conn: Connection, exc: openai.APIStatusError) -> str:
    hint = {
        401: "the API key was rejected; check the connection's api_key",
        403: "access denied by the endpoint",
        404: "model or endpoint not found; check base_url and model",
        429: "rate limited or out of quota; retry later or raise the limit",
    }.get(exc.status_code, "the endpoint returned an error")
    detail = exc.message
    return (
        f"connection {conn.name!r}: HTTP {exc.status_code} from {conn.base_url}: {hint} ({detail})"
    )
