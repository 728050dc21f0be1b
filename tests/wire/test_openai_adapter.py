"""Golden tests of the OpenAI adapter: run events built by hand -> the exact bytes and bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from flowhost.engine.events import (
    ErrorInfo,
    ModelUsage,
    NodeDelta,
    NodeFinished,
    NodeStarted,
    OutputDelta,
    OutputReady,
    RunEvent,
    RunFailed,
    RunFinished,
    RunStarted,
)
from flowhost.exceptions import InvalidInput
from flowhost.wire.chat import openapi_schema, output_text, split_messages
from flowhost.wire.openai import adapter
from flowhost.wire.openai.adapter import Completion
from flowhost.wire.openai.models import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorResponse,
)

pytestmark = pytest.mark.anyio

RUN = "3bb05cf5-cd81-9fbc-a5f0-b8d67a025022"
C = Completion.new(RUN, "chat", "answer")
C = Completion(C.id, C.model, 1715931028, C.answer_key)
T = 1715931028.0
USAGE = (ModelUsage("qwen-plus", 10, 4), ModelUsage("qwen-max", 3, 2))


class Events:
    """An event stream that records whether it was closed."""

    def __init__(self, *events: RunEvent) -> None:
        self.events = events
        self.closed = False
        self.consumed = 0

    async def gen(self) -> AsyncIterator[RunEvent]:
        try:
            for ev in self.events:
                self.consumed += 1
                yield ev
        finally:
            self.closed = True


async def frames(gen: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in gen])


def streamed_run(*deltas: str, usage: tuple[ModelUsage, ...] = USAGE) -> list[RunEvent]:
    text = "".join(deltas)
    evs: list[RunEvent] = [
        RunStarted(RUN, "chat", T),
        NodeStarted(RUN, "chat", "llm", T),
    ]
    for d in deltas:
        evs += [NodeDelta(RUN, "chat", d, T), OutputDelta(RUN, "answer", d, T)]
    evs += [
        NodeFinished(RUN, "chat", "llm", text, 0.5, T, usage=usage),
        OutputReady(RUN, "answer", text, True, T),
        RunFinished(RUN, {"answer": text}, usage, 0.6, T),
    ]
    return evs


def test_completion_identity() -> None:
    c = Completion.new(RUN, "default", "answer")
    assert c.id == "chatcmpl-3bb05cf5cd819fbca5f0b8d67a025022"  # seed 000's id shape
    assert (c.model, c.answer_key) == ("default", "answer")
    assert isinstance(c.created, int)


async def test_stream_with_usage_exact_bytes() -> None:
    ev = Events(*streamed_run("I am", " Qwen."))
    out = await frames(adapter.stream(ev.gen(), C, include_usage=True))
    head = (
        '{"id":"chatcmpl-3bb05cf5cd819fbca5f0b8d67a025022","object":"chat.completion.chunk",'
        '"created":1715931028,"model":"chat","system_fingerprint":null,'
    )
    expected = (
        f'data: {head}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}],"usage":null}}\n\n'
        f'data: {head}"choices":[{{"index":0,"delta":{{"content":"I am"}},"logprobs":null,"finish_reason":null}}],"usage":null}}\n\n'
        f'data: {head}"choices":[{{"index":0,"delta":{{"content":" Qwen."}},"logprobs":null,"finish_reason":null}}],"usage":null}}\n\n'
        f'data: {head}"choices":[{{"index":0,"delta":{{"content":""}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}\n\n'
        f'data: {head}"choices":[],"usage":{{"prompt_tokens":13,"completion_tokens":6,"total_tokens":19}}}}\n\n'
        "data: [DONE]\n\n"
    )
    assert out.decode() == expected
    assert ev.closed
    for block in out.decode().split("\n\n")[:-2]:
        ChatCompletionChunk.model_validate_json(block.removeprefix("data: "))


async def test_stream_without_usage() -> None:
    out = (
        await frames(adapter.stream(Events(*streamed_run("a")).gen(), C, include_usage=False))
    ).decode()
    events = out.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "a"},
        {"content": ""},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert all(c["usage"] is None for c in chunks)
    assert "id:" not in out
    assert "\n\n\n" not in out  # never an empty event


async def test_non_streamed_output_is_one_chunk() -> None:
    evs = [
        RunStarted(RUN, "echo", T),
        NodeStarted(RUN, "echo", "python", T),
        NodeFinished(RUN, "echo", "python", "echo: hi", 0.001, T),
        OutputReady(RUN, "answer", "echo: hi", False, T),
        OutputReady(RUN, "other", "ignored", False, T),
        RunFinished(RUN, {"answer": "echo: hi", "other": "ignored"}, (), 0.01, T),
    ]
    out = (await frames(adapter.stream(Events(*evs).gen(), C, include_usage=True))).decode()
    chunks = [json.loads(e.removeprefix("data: ")) for e in out.split("\n\n")[:-2]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["", "echo: hi", ""]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def test_only_the_answer_output_streams() -> None:
    evs = [
        RunStarted(RUN, "x", T),
        OutputDelta(RUN, "shouted", "HEY", T),
        OutputDelta(RUN, "answer", "hey", T),
        OutputReady(RUN, "shouted", "HEY", True, T),
        OutputReady(RUN, "answer", "hey", True, T),
        RunFinished(RUN, {"answer": "hey", "shouted": "HEY"}, (), 0.1, T),
    ]
    out = (await frames(adapter.stream(Events(*evs).gen(), C, include_usage=False))).decode()
    contents = [
        json.loads(e.removeprefix("data: "))["choices"][0]["delta"].get("content")
        for e in out.split("\n\n")[:-2]
    ]
    assert contents == ["", "hey", ""]


async def test_structured_output_is_json_text() -> None:
    value = {"城市": "杭州", "n": 1}
    evs = [
        RunStarted(RUN, "x", T),
        OutputReady(RUN, "answer", value, False, T),
        RunFinished(RUN, {"answer": value}, (), 0.1, T),
    ]
    out = (await frames(adapter.stream(Events(*evs).gen(), C, include_usage=False))).decode()
    assert '"delta":{"content":"{\\"城市\\":\\"杭州\\",\\"n\\":1}"}' in out


async def test_failure_mid_stream_exact_bytes() -> None:
    err = ErrorInfo("LLMError", "upstream said 429", node="chat", status=502)
    evs = [*streamed_run("a")[:4], RunFailed(RUN, err, 0.2, T), RunStarted(RUN, "never", T)]
    ev = Events(*evs)
    out = (await frames(adapter.stream(ev.gen(), C, include_usage=True))).decode()
    *_, last, end = out.split("\n\n")
    assert end == ""
    assert last == (
        'data: {"error":{"message":"node \'chat\' failed: upstream said 429",'
        '"type":"server_error","param":null,"code":"LLMError"}}'
    )
    assert "[DONE]" not in out
    assert ev.closed
    assert ev.consumed == 5  # stopped at the failure
    ErrorResponse.model_validate_json(last.removeprefix("data: "))


def test_error_message_names_the_node_once() -> None:
    assert ErrorInfo("X", "boom").described == "boom"
    assert ErrorInfo("X", "boom", node="n").described == "node 'n' failed: boom"
    assert ErrorInfo("X", "node 'n' timed out", node="n").described == "node 'n' timed out"


async def test_collect_exact_body() -> None:
    ev = Events(*streamed_run("I am", " Qwen."), RunStarted(RUN, "never", T))
    body, err = await adapter.collect(ev.gen(), C)
    assert err is None
    assert body == {
        "id": "chatcmpl-3bb05cf5cd819fbca5f0b8d67a025022",
        "object": "chat.completion",
        "created": 1715931028,
        "model": "chat",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "I am Qwen."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 13, "completion_tokens": 6, "total_tokens": 19},
    }
    assert ev.closed
    ChatCompletion.model_validate(body)


async def test_collect_failure_and_cancel() -> None:
    err = ErrorInfo("NodeFailed", "boom", node="n")
    body, got = await adapter.collect(
        Events(RunStarted(RUN, "x", T), RunFailed(RUN, err, 1, T)).gen(), C
    )
    assert body is None
    assert got == err
    body, got = await adapter.collect(Events(RunStarted(RUN, "x", T)).gen(), C)
    assert body is None
    assert got is not None
    assert got.code == "RunCanceled"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "server_error"),
    ],
)
def test_error_body(status: int, kind: str) -> None:
    body = adapter.error_body(status, "Code", "msg", "field")
    assert body == {"error": {"message": "msg", "type": kind, "param": "field", "code": "Code"}}


def test_usage_dict_sums_every_model() -> None:
    assert adapter.usage_dict(USAGE) == {
        "prompt_tokens": 13,
        "completion_tokens": 6,
        "total_tokens": 19,
    }
    assert adapter.usage_dict(()) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


# --------------------------------------------------------------------------- messages


def test_split_messages_history_pairs() -> None:
    prompt, history = split_messages(
        [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "q"}, {"type": "text", "text": "2"}],
            },
            {"role": "user", "content": "q3"},
            {"role": "assistant", "content": None},
            {"role": "tool", "content": "ignored"},
            {"role": "user", "content": "now"},
        ],
        chat_input="question",
        chat_output="answer",
    )
    assert prompt == "now"
    assert history == [
        {"inputs": {"question": "q1"}, "outputs": {"answer": "a1"}},
        {"inputs": {"question": "q2"}, "outputs": {"answer": ""}},
        {"inputs": {"question": "q3"}, "outputs": {"answer": ""}},
    ]


def test_split_messages_errors_name_the_field() -> None:
    with pytest.raises(InvalidInput) as err:
        split_messages([{"role": "assistant", "content": "x"}], chat_input="q", chat_output=None)
    assert err.value.field == "messages"
    assert err.value.message.startswith("messages: ")
    with pytest.raises(InvalidInput) as err:
        split_messages([], chat_input="q", chat_output=None, field="input.messages")
    assert err.value.field == "input.messages"
    with pytest.raises(InvalidInput) as err:
        split_messages([{"role": "user", "content": 5}], chat_input="q", chat_output=None)
    assert "content" in err.value.message


def test_output_text() -> None:
    assert output_text("x") == "x"
    assert output_text(None) == ""
    assert output_text({"a": [1, "二"]}) == '{"a":[1,"二"]}'


def test_openapi_schema_has_no_dangling_refs() -> None:
    schema = openapi_schema(ChatCompletionRequest)
    text = json.dumps(schema)
    assert "$ref" not in text
    assert "$defs" not in text
    assert schema["properties"]["messages"]["items"]["title"] == "ChatMessage"
    assert "include_usage" in text


def test_request_model_accepts_sdk_extras() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "default",
            "messages": [{"role": "user", "content": "hi", "name": "me"}],
            "temperature": 0.2,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert req.stream
    assert req.stream_options is not None
    assert req.stream_options.include_usage
