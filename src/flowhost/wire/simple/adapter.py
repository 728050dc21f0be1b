"""Simple mode (``POST /``): events -> ``event: Message`` SSE, or one JSON body.

Not streaming: the flow's outputs as JSON, or the run's error (``answer``).
Streaming (seed 000): a first ``{"answer": ""}``, then one Message per streamed fragment (and one per
non-streamed output as it becomes ready), and a last ``{"answer": ""}``. A failure after streaming
began is an ``event: Error`` carrying ``{"code", "message", "node"}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from flowhost.engine.events import (
    ErrorInfo,
    OutputDelta,
    OutputReady,
    RunEvent,
    RunFailed,
    RunFinished,
)
from flowhost.wire.sse import dumps, sse

__all__ = ["answer", "stream"]

ENDED_WITHOUT_RESULT = ErrorInfo("RunCanceled", "the run ended without a result", status=500)


def _message(payload: dict[str, Any]) -> bytes:
    return sse(dumps(payload, compact=False), event="Message")


async def _close(events: AsyncIterator[RunEvent]) -> None:
    """Close the run's stream now that the answer is complete (not whenever it is collected)."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def stream(events: AsyncIterator[RunEvent], answer_key: str) -> AsyncIterator[bytes]:
    yield _message({answer_key: ""})
    try:
        async for ev in events:
            if isinstance(ev, OutputDelta):
                yield _message({ev.name: ev.delta})
            elif isinstance(ev, OutputReady) and not ev.streamed:
                yield _message({ev.name: ev.value})
            elif isinstance(ev, RunFailed):
                yield sse(dumps(ev.error.to_dict(), compact=False), event="Error")
                return
            elif isinstance(ev, RunFinished):
                yield _message({answer_key: ""})
                return
    finally:
        await _close(events)


def answer(
    final: RunFinished | RunFailed | None,
) -> tuple[dict[str, Any], None] | tuple[None, ErrorInfo]:
    """A run's answer from its last event (``PreparedRun.outcome``): (outputs, None) on
    success, (None, error) on failure or when the run ended without a last event."""
    if isinstance(final, RunFinished):
        return final.outputs, None
    if isinstance(final, RunFailed):
        return None, final.error
    return None, ENDED_WITHOUT_RESULT
