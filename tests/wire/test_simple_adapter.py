"""Simple mode (seed 000 `POST /`): run events -> exact SSE bytes / JSON body, without HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from flowhost.engine.events import (
    ErrorInfo,
    ModelUsage,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    OutputDelta,
    OutputReady,
    RunEvent,
    RunFailed,
    RunFinished,
    RunStarted,
)
from flowhost.wire.simple import adapter
from flowhost.wire.sse import dumps

pytestmark = pytest.mark.anyio

RUN = "fb745e15-3b3b-4a10-9e0d-0bea08d47411"
T = 1749716107.223611
CHUNKS = ["The", " capital", " of", " France", " is", " Paris", "."]
ANSWER = "The capital of France is Paris."

# seed 000, "Simple mode", streaming sample response, verbatim
SEED_STREAM = """event: Message
data: {"answer": ""}

event: Message
data: {"answer": "The"}

event: Message
data: {"answer": " capital"}

event: Message
data: {"answer": " of"}

event: Message
data: {"answer": " France"}

event: Message
data: {"answer": " is"}

event: Message
data: {"answer": " Paris"}

event: Message
data: {"answer": "."}

event: Message
data: {"answer": ""}
"""
# seed 000, "Simple mode", non-streaming sample response, verbatim
SEED_BODY = '{"answer":"The capital of France is Paris."}'


def llm_run(chunks: list[str] = CHUNKS) -> list[RunEvent]:
    """The events of a chat flow whose `answer` output is an llm node's output."""
    events: list[RunEvent] = [
        RunStarted(RUN, "chat", T),
        NodeStarted(RUN, "chat", "llm", T),
    ]
    for c in chunks:
        events += [NodeDelta(RUN, "chat", c, T), OutputDelta(RUN, "answer", c, T)]
    text = "".join(chunks)
    usage = (ModelUsage("qwen-plus", 12, len(chunks)),)
    events += [
        NodeFinished(RUN, "chat", "llm", text, 0.5, T, usage),
        OutputReady(RUN, "answer", text, True, T),
        RunFinished(RUN, {"answer": text}, usage, 0.5, T),
    ]
    return events


class Source:
    """An event stream that records whether the adapter closed it."""

    def __init__(self, events: list[RunEvent]) -> None:
        self.events = events
        self.taken = 0
        self.closed = False

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> RunEvent:
        if self.closed or self.taken == len(self.events):
            raise StopAsyncIteration
        self.taken += 1
        return self.events[self.taken - 1]

    async def aclose(self) -> None:
        self.closed = True


async def stream_bytes(events: list[RunEvent], key: str = "answer") -> bytes:
    return b"".join([chunk async for chunk in adapter.stream(Source(events), key)])


async def test_streaming_matches_the_seed_byte_for_byte() -> None:
    body = await stream_bytes(llm_run())
    assert body == (SEED_STREAM + "\n").encode()


def last(events: list[RunEvent]) -> RunFinished | RunFailed:
    final = events[-1]
    assert isinstance(final, RunFinished | RunFailed)
    return final


def test_non_streaming_body_matches_the_seed() -> None:
    outputs, error = adapter.answer(last(llm_run()))
    assert error is None
    assert dumps(outputs) == SEED_BODY


async def test_a_non_streamed_output_is_one_message() -> None:
    events: list[RunEvent] = [
        RunStarted(RUN, "echo", T),
        NodeStarted(RUN, "echo", "python", T),
        NodeFinished(RUN, "echo", "python", "echo: hi", 0.001, T),
        OutputReady(RUN, "answer", "echo: hi", False, T),
        RunFinished(RUN, {"answer": "echo: hi"}, (), 0.001, T),
    ]
    assert await stream_bytes(events) == (
        b'event: Message\ndata: {"answer": ""}\n\n'
        b'event: Message\ndata: {"answer": "echo: hi"}\n\n'
        b'event: Message\ndata: {"answer": ""}\n\n'
    )


async def test_first_and_last_messages_use_the_answer_key() -> None:
    events: list[RunEvent] = [
        RunStarted(RUN, "qa", T),
        OutputDelta(RUN, "reply", "你好", T),
        OutputReady(RUN, "reply", "你好", True, T),
        OutputReady(RUN, "score", {"n": 1}, False, T),
        RunFinished(RUN, {"reply": "你好", "score": {"n": 1}}, (), 0.1, T),
    ]
    assert (await stream_bytes(events, key="reply")).decode() == (
        'event: Message\ndata: {"reply": ""}\n\n'
        'event: Message\ndata: {"reply": "你好"}\n\n'  # UTF-8 as is, not \\u-escaped
        'event: Message\ndata: {"score": {"n": 1}}\n\n'
        'event: Message\ndata: {"reply": ""}\n\n'
    )


def failed_run() -> list[RunEvent]:
    err = ErrorInfo("NodeFailed", "RuntimeError: the stream broke off", node="chat")
    return [
        RunStarted(RUN, "chat", T),
        NodeStarted(RUN, "chat", "llm", T),
        NodeDelta(RUN, "chat", "The", T),
        OutputDelta(RUN, "answer", "The", T),
        NodeFailed(RUN, "chat", "llm", err, 0.2, T),
        RunFailed(RUN, err, 0.2, T),
    ]


async def test_a_failure_after_streaming_began_is_an_error_event() -> None:
    assert await stream_bytes(failed_run()) == (
        b'event: Message\ndata: {"answer": ""}\n\n'
        b'event: Message\ndata: {"answer": "The"}\n\n'
        b"event: Error\n"
        b'data: {"code": "NodeFailed", "message": "RuntimeError: the stream broke off", '
        b'"node": "chat"}\n\n'
    )


def test_answer_is_the_error_of_a_failed_run() -> None:
    outputs, error = adapter.answer(last(failed_run()))
    assert outputs is None
    assert error == ErrorInfo("NodeFailed", "RuntimeError: the stream broke off", node="chat")


def test_a_run_that_ends_without_a_result_is_canceled() -> None:
    outputs, error = adapter.answer(None)
    assert outputs is None
    assert error is not None
    assert error.code == "RunCanceled"


@pytest.mark.parametrize("events", [llm_run(), failed_run()], ids=["finished", "failed"])
async def test_the_event_stream_is_closed_once_the_answer_is_complete(
    events: list[RunEvent],
) -> None:
    source = Source([*events, RunStarted(RUN, "late", T)])  # nothing may be read past the end
    chunks = [c async for c in adapter.stream(source, "answer")]
    assert source.closed
    assert source.taken == len(events)
    assert chunks[-1].startswith((b'event: Message\ndata: {"answer": ""}', b"event: Error"))


async def test_closing_the_response_closes_the_event_stream() -> None:
    source = Source(llm_run())
    body: AsyncIterator[bytes] = adapter.stream(source, "answer")
    assert await anext(body) == b'event: Message\ndata: {"answer": ""}\n\n'
    assert await anext(body) == b'event: Message\ndata: {"answer": "The"}\n\n'
    await body.aclose()  # type: ignore[attr-defined]
    assert source.closed


def test_lone_surrogates_stay_escaped_so_the_bytes_encode() -> None:
    text = dumps({"answer": "a\ud800b"}, compact=False)
    assert text == '{"answer": "a\\ud800b"}'
    assert json.loads(text.encode()) == {"answer": "a\ud800b"}
    data: dict[str, Any] = {"answer": "巴黎\ud83d"}
    assert json.loads(dumps(data).encode("utf-8")) == data


@pytest.mark.parametrize(
    "value",
    [
        {"answer": "巴黎", "n": [1, 2.5, None, True, False], "nested": {"k": "v"}},
        {1: "int key", "s": "non-str keys go to json"},
        {"big": 2**70},
        {"when": datetime(2026, 12, 1, 12, 0, tzinfo=UTC), "set": {3}, "bytes": b"\xff"},
        [{"a": 1}, ("t", 2)],
    ],
)
def test_compact_dumps_is_json_dumps_text(value: Any) -> None:
    """The fast (orjson) path writes exactly what json.dumps did."""
    assert dumps(value) == json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), default=_json_default
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)
