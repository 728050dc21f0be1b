"""OpenAI chat completions: events -> ``chat.completion`` JSON or ``chat.completion.chunk`` SSE.

Streaming follows CLIENTS.md: ``data: {json}`` + blank line per chunk, no ``id:`` lines, a final
chunk with ``finish_reason``, a usage chunk (``choices: []``) when asked, then ``data: [DONE]``.
A failure after the first byte is ``data: {"error": {...}}``, which the SDK raises as APIError.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from flowhost.engine.events import (
    ErrorInfo,
    ModelUsage,
    OutputDelta,
    OutputReady,
    RunEvent,
    RunFailed,
    RunFinished,
)
from flowhost.frozen import frozen
from flowhost.wire.chat import aclose, output_text
from flowhost.wire.sse import dumps, sse

__all__ = ["Completion", "collect", "error_body", "stream", "usage_dict"]


def usage_dict(usage: tuple[ModelUsage, ...]) -> dict[str, int]:
    p = sum(u.input_tokens for u in usage)
    c = sum(u.output_tokens for u in usage)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@frozen
class Completion:
    """Identity of one completion: what every chunk repeats."""

    id: str
    model: str
    created: int
    answer_key: str

    @classmethod
    def new(cls, run_id: str, model: str, answer_key: str) -> Completion:
        return cls(f"chatcmpl-{run_id.replace('-', '')}", model, int(time.time()), answer_key)

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._event([choice], None)

    def usage_chunk(self, usage: tuple[ModelUsage, ...]) -> bytes:
        """The ``stream_options.include_usage`` chunk: no choices, the run's usage."""
        return self._event([], usage_dict(usage))

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> bytes:
        # seed 000's chunk shape: every chunk carries system_fingerprint and usage (null)
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            "usage": usage,
        }
        return sse(dumps(body))


async def stream(
    events: AsyncIterator[RunEvent], c: Completion, *, include_usage: bool
) -> AsyncIterator[bytes]:
    try:
        yield c.chunk({"role": "assistant", "content": ""})
        async for ev in events:
            if isinstance(ev, OutputDelta) and ev.name == c.answer_key:
                yield c.chunk({"content": ev.delta})
            elif isinstance(ev, OutputReady) and ev.name == c.answer_key and not ev.streamed:
                yield c.chunk({"content": output_text(ev.value)})
            elif isinstance(ev, RunFailed):
                err = ev.error
                yield sse(dumps(error_body(err.status, err.code, err.described)))
                return
            elif isinstance(ev, RunFinished):
                yield c.chunk({"content": ""}, "stop")  # seed 000's last chunk
                if include_usage:
                    yield c.usage_chunk(ev.usage)
                yield b"data: [DONE]\n\n"
                return
    finally:
        await aclose(events)


async def collect(
    events: AsyncIterator[RunEvent], c: Completion
) -> tuple[dict[str, Any] | None, ErrorInfo | None]:
    try:
        async for ev in events:
            if isinstance(ev, RunFinished):
                return {
                    "id": c.id,
                    "object": "chat.completion",
                    "created": c.created,
                    "model": c.model,
                    "system_fingerprint": None,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": output_text(ev.outputs.get(c.answer_key)),
                            },
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage_dict(ev.usage),
                }, None
            if isinstance(ev, RunFailed):
                return None, ev.error
    finally:
        await aclose(events)
    return None, ErrorInfo("RunCanceled", "the run ended without a result", status=499)
