"""Chat completions against any OpenAI-compatible endpoint, with failures made readable.

One ``AsyncOpenAI`` client per connection, created lazily and shared by every run (its httpx pool
is the connection pool). Streams always ask for usage (``stream_options.include_usage``) so token
accounting works on streamed answers too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai

from flowhost.llm.connections import Connection

__all__ = ["ChatChunk", "LLMCallError", "LLMClient"]


@dataclass(frozen=True, slots=True)
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


class LLMClient:
    def __init__(self) -> None:
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._lock = asyncio.Lock()

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

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
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
        import openai

        client = self.client_for(conn)
        try:
            create: Any = client.chat.completions.create  # overloads do not fit **params
            stream = await create(
                model=model,
                messages=list(messages),
                stream=True,
                stream_options={"include_usage": True},
                **params,
            )
            try:
                async for chunk in stream:
                    if chunk.choices:
                        delta = chunk.choices[0].delta
                        if delta is not None and delta.content:
                            yield ChatChunk(delta=delta.content, model=chunk.model)
                    if chunk.usage is not None:
                        yield ChatChunk(
                            model=chunk.model or model,
                            input_tokens=chunk.usage.prompt_tokens,
                            output_tokens=chunk.usage.completion_tokens,
                        )
            finally:
                await stream.close()
        except openai.APIStatusError as exc:
            raise LLMCallError(_status_message(conn, exc), status=exc.status_code) from exc
        except openai.APITimeoutError as exc:
            refused = _connect_error(exc)
            if refused is not None:  # the aiohttp transport reports a refused connect as a timeout
                raise LLMCallError(
                    f"connection {conn.name!r}: cannot reach the LLM endpoint {conn.base_url} "
                    f"({refused})"
                ) from exc
            raise LLMCallError(
                f"connection {conn.name!r}: the LLM endpoint {conn.base_url} timed out after "
                f"{conn.timeout:g}s"
            ) from exc
        except openai.APIConnectionError as exc:
            raise LLMCallError(
                f"connection {conn.name!r}: cannot reach the LLM endpoint {conn.base_url} "
                f"({exc.__cause__ or exc})"
            ) from exc
        except openai.APIError as exc:
            raise LLMCallError(
                f"connection {conn.name!r}: LLM stream failed: {exc.message}"
            ) from exc
        except Exception as exc:  # the SDK's transport errors (httpx2) mid-stream
            raise LLMCallError(
                f"connection {conn.name!r}: LLM stream broke off ({type(exc).__name__}: {exc})"
            ) from exc


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
