"""The OpenAI-compatible API (``/v1/chat/completions``, ``/v1/models``) with the real openai SDK.

Sync and async clients, streaming and not, client-supplied history and ``Chat-Session-Id``
sessions, errors, and seed 000's curl example, against a real ``flowhost serve``.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from openai import AsyncOpenAI, OpenAI

from flowhost.testing import FakeLLM

SECRET = "secret"
PIECES = ["我是", "来自", "阿里", "云"]
FULL = "".join(PIECES)
SAY = "[[fake:chunks=" + "|".join(PIECES) + "]]"
HISTORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hi there"},
]


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def new_sid() -> str:
    return f"sess-{uuid.uuid4().hex}"


@pytest.fixture
def srv(examples_server: Any, llm: FakeLLM) -> Any:
    """The examples (default app echo; chat on the fake LLM; branch)."""
    return examples_server


@pytest.fixture
def proto(protocols_server: Any, llm: FakeLLM) -> Any:
    """tests/flows_fixtures/protocols (usage, plain, explode, city, plugin)."""
    return protocols_server


@pytest.fixture
def client(srv: Any) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{srv.url}/v1", api_key=SECRET, max_retries=0) as c:
        yield c


@pytest.fixture
def pclient(proto: Any) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{proto.url}/v1", api_key=SECRET, max_retries=0) as c:
        yield c


def contents(chunks: list[Any]) -> list[str | None]:
    return [c.choices[0].delta.content for c in chunks if c.choices]


# --------------------------------------------------------------------------- models


def test_models_are_the_served_apps(srv: Any, client: OpenAI) -> None:
    models = client.models.list()
    apps = requests.get(f"{srv.url}/apps", headers={"Authorization": f"Bearer {SECRET}"}).json()
    served = [a["app_id"] for a in apps["apps"]]
    assert {"branch", "chat", "echo"} <= set(served)
    assert [m.id for m in models.data] == ["default", *served]
    assert {m.object for m in models.data} == {"model"}
    assert all(isinstance(m.created, int) for m in models.data)


# --------------------------------------------------------------------------- non-stream


def test_non_stream_default_app(client: OpenAI) -> None:
    rsp = client.chat.completions.create(model="default", messages=user("hi"))
    assert rsp.object == "chat.completion"
    assert rsp.id.startswith("chatcmpl-")
    assert rsp.model == "default"
    [choice] = rsp.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hi"
    assert choice.finish_reason == "stop"
    assert rsp.usage is not None
    assert (rsp.usage.prompt_tokens, rsp.usage.completion_tokens, rsp.usage.total_tokens) == (
        0,
        0,
        0,
    )


def test_sampling_parameters_are_accepted_and_left_to_the_flow(client: OpenAI) -> None:
    rsp = client.chat.completions.create(
        model="default",
        messages=user("hi"),
        temperature=0.2,
        top_p=0.9,
        max_tokens=5,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        n=1,
        seed=7,
        stop=["\n"],
    )
    assert rsp.choices[0].message.content == "echo: hi"  # the flow's answer, as without them


def test_non_stream_named_app_with_llm(client: OpenAI, llm: FakeLLM) -> None:
    rsp = client.chat.completions.create(model="chat", messages=user(f"你是谁? {SAY}"))
    assert rsp.model == "chat"
    assert rsp.choices[0].message.content == FULL
    assert rsp.usage is not None
    assert rsp.usage.completion_tokens == len(PIECES)
    assert rsp.usage.prompt_tokens > 0
    assert rsp.usage.total_tokens == rsp.usage.prompt_tokens + rsp.usage.completion_tokens
    assert llm.requests[-1].body["messages"][-1] == {"role": "user", "content": f"你是谁? {SAY}"}


def test_request_id_header(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="default", messages=user("x"))
    uuid.UUID(raw.headers["x-request-id"])
    rid = str(uuid.uuid4())
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=user("x"), extra_headers={"X-Request-Id": rid}
    )
    assert raw.headers["x-request-id"] == rid
    assert raw.parse().choices[0].message.content == "echo: x"


# --------------------------------------------------------------------------- streaming


def test_stream_exact_deltas_and_usage(client: OpenAI) -> None:
    with client.chat.completions.create(
        model="chat", messages=user(SAY), stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    first, *middle, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in middle] == PIECES
    assert all(c.choices[0].finish_reason is None for c in [first, *middle])
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content == ""
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == len(PIECES)
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + len(PIECES)
    assert len({c.id for c in chunks}) == 1
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"chat"}


def test_stream_without_include_usage(client: OpenAI) -> None:
    with client.chat.completions.create(model="chat", messages=user(SAY), stream=True) as stream:
        chunks = list(stream)
    assert contents(chunks) == ["", *PIECES, ""]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_non_streaming_output_is_one_chunk(client: OpenAI) -> None:
    with client.chat.completions.create(model="default", messages=user("hi"), stream=True) as s:
        chunks = list(s)
    assert contents(chunks) == ["", "echo: hi", ""]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seed_curl(srv: Any) -> None:
    """Seed 000's curl example, verbatim but for the endpoint and key."""
    data = """{
    "model": "default",
    "messages": [
        {
            "role": "system",
            "content": "You are a helpful assistant."
        },
        {
            "role": "user",
            "content": "Who are you?"
        }
    ],
    "stream":true
}"""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--no-buffer",
            "--location",
            f"{srv.url}/v1/chat/completions",
            "--header",
            f"Authorization: Bearer {SECRET}",
            "--header",
            "Content-Type: application/json",
            "--data",
            data,
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    assert out.endswith("data: [DONE]\n\n")
    events = out[:-2].split("\n\n")
    assert events[-1] == "data: [DONE]"
    assert all(ev.startswith("data: ") and "\n" not in ev for ev in events)  # no id:, one line
    chunks = [json.loads(ev[6:]) for ev in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "echo: Who are you?"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == "default"
        assert c["id"] == chunks[0]["id"]


def test_stream_response_headers(srv: Any) -> None:
    body = {"model": "chat", "messages": user(SAY), "stream": True}
    headers = {"Authorization": f"Bearer {SECRET}", "Accept": "application/json"}
    with requests.post(
        f"{srv.url}/v1/chat/completions", json=body, headers=headers, stream=True
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        uuid.UUID(r.headers["x-request-id"])
        assert b"id:" not in r.content


# --------------------------------------------------------------------------- usage


def test_usage_summed_over_llm_calls(pclient: OpenAI, llm: FakeLLM) -> None:
    rsp = pclient.chat.completions.create(model="usage", messages=user("hello world"))
    assert rsp.choices[0].message.content == "echo: echo: hello world and echo: hello world"
    assert len(llm.requests) == 3
    # model-a: 2 + 7 words in, 3 + 8 pieces out; model-b: 2 in, 3 out
    assert rsp.usage is not None
    assert (rsp.usage.prompt_tokens, rsp.usage.completion_tokens, rsp.usage.total_tokens) == (
        11,
        14,
        25,
    )
    with pclient.chat.completions.create(
        model="usage",
        messages=user("hello world"),
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        last = list(stream)[-1]
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 14)


# --------------------------------------------------------------------------- history


def test_earlier_messages_are_client_history(client: OpenAI, llm: FakeLLM) -> None:
    rsp = client.chat.completions.create(model="echo", messages=[*HISTORY, *user("again")])
    assert rsp.choices[0].message.content == "echo: again (turn 2)"
    client.chat.completions.create(model="chat", messages=[*HISTORY, *user("and now?")])
    sent = llm.requests[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "hello"),
        ("assistant", "hi there"),
        ("user", "and now?"),
    ]
    # nothing is stored without Chat-Session-Id
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=user("x"))
    assert "chat-session-id" not in raw.headers


def test_chat_session_id_uses_and_extends_the_server_session(client: OpenAI) -> None:
    sid = new_sid()
    hdr = {"Chat-Session-Id": sid}
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=user("one"), extra_headers=hdr
    )
    assert raw.headers["chat-session-id"] == sid
    assert raw.parse().choices[0].message.content == "echo: one"
    # the client's own history is ignored: the server's session (1 turn) is used
    rsp = client.chat.completions.create(
        model="echo", messages=[*HISTORY, *HISTORY[1:], *user("two")], extra_headers=hdr
    )
    assert rsp.choices[0].message.content == "echo: two (turn 2)"
    with client.chat.completions.create(
        model="echo", messages=user("three"), stream=True, extra_headers=hdr
    ) as stream:
        assert "".join(c or "" for c in contents(list(stream))) == "echo: three (turn 3)"
    rsp = client.chat.completions.create(model="echo", messages=user("four"), extra_headers=hdr)
    assert rsp.choices[0].message.content == "echo: four (turn 4)"


def test_session_shared_with_the_bailian_api(srv: Any, client: OpenAI) -> None:
    r = requests.post(
        f"{srv.url}/api/v1/apps/echo/completion",
        json={"input": {"prompt": "one"}},
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    sid = r.json()["output"]["session_id"]
    rsp = client.chat.completions.create(
        model="echo", messages=user("two"), extra_headers={"Chat-Session-Id": sid}
    )
    assert rsp.choices[0].message.content == "echo: two (turn 2)"


# --------------------------------------------------------------------------- async


@pytest.mark.anyio
async def test_async_client(srv: Any) -> None:
    async with AsyncOpenAI(base_url=f"{srv.url}/v1", api_key=SECRET, max_retries=0) as client:
        rsp = await client.chat.completions.create(model="chat", messages=user(SAY))
        assert rsp.choices[0].message.content == FULL
        stream = await client.chat.completions.create(
            model="chat", messages=user(SAY), stream=True, stream_options={"include_usage": True}
        )
        async with stream:
            chunks = [c async for c in stream]
        assert contents(chunks) == ["", *PIECES, ""]
        assert chunks[-1].usage is not None
        with pytest.raises(openai.AuthenticationError):
            await client.with_options(api_key="wrong").chat.completions.create(
                model="chat", messages=user("x")
            )
        stream = await client.chat.completions.create(
            model="chat", messages=user("[[fake:chunks=a|b|c]][[fake:fail_after=1]]"), stream=True
        )
        got: list[str | None] = []

        async def drain() -> None:
            async with stream:
                async for c in stream:
                    got.append(c.choices[0].delta.content)

        with pytest.raises(openai.APIError):
            await drain()
        assert got == ["", "a"]


# --------------------------------------------------------------------------- errors


def test_wrong_key(srv: Any) -> None:
    with OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model="default", messages=user("x"))
        assert err.value.status_code == 401
        assert err.value.code == "InvalidApiKey"
        assert err.value.type == "authentication_error"
        assert err.value.message == "Error code: 401 - Invalid API-key provided."
        uuid.UUID(err.value.request_id or "")
        # streaming: raised by create() itself, before any iteration
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="default", messages=user("x"), stream=True)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_unknown_model(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-app", messages=user("x"))
    assert err.value.code == "model_not_found"
    assert "no-such-app" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-app", messages=user("x"), stream=True)


def test_unknown_memory_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="default", messages=user("x"), extra_body={"memory_id": "m1"}
        )
    assert "m1" in err.value.message


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": user("x"), "extra_body": {"rag_options": {"pipeline_ids": 5}}},
            "rag_options.pipeline_ids",
        ),
        ({"messages": user("x"), "extra_body": {"stream": "often"}}, "stream"),
        ({"messages": user("x"), "extra_body": {"temperature": "hot"}}, "temperature"),
        ({"messages": user("x"), "temperature": 3}, "temperature"),
        ({"messages": user("x"), "max_tokens": -5}, "max_tokens"),
        ({"messages": user("x"), "n": 2}, "n"),
    ],
)
def test_bad_request(client: OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="default", **kwargs)
    assert err.value.status_code == 400
    assert err.value.param == param
    assert err.value.type == "invalid_request_error"
    assert param in err.value.message


def test_not_a_chat_flow(pclient: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        pclient.chat.completions.create(model="plain", messages=user("x"))
    assert err.value.param == "model"
    assert "not a chat flow" in err.value.message


def test_bad_json_body(srv: Any) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    r = requests.post(f"{srv.url}/v1/chat/completions", data=b"{oops", headers=headers)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    r = requests.post(
        f"{srv.url}/v1/chat/completions", json={"messages": user("x")}, headers=headers
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"


def test_failure_before_the_answer_non_stream(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response
    with pytest.raises(openai.InternalServerError) as err:
        raw.create(model="chat", messages=user("[[fake:status=429]]"))
    assert err.value.status_code == 502
    assert err.value.code == "LLMError"
    assert err.value.response.headers["x-should-retry"] == "false"
    uuid.UUID(err.value.request_id or "")


def test_node_failure_non_stream(pclient: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        pclient.chat.completions.create(model="explode", messages=user("boom"))
    assert err.value.status_code == 500
    assert err.value.code == "NodeFailed"
    assert "unknowable" in err.value.message


def test_failure_mid_stream(client: OpenAI) -> None:
    got: list[str | None] = []

    def drain() -> None:
        prompt = user("[[fake:chunks=a|b|c|d]][[fake:fail_after=2]]")
        with client.chat.completions.create(model="chat", messages=prompt, stream=True) as stream:
            for c in stream:
                got.append(c.choices[0].delta.content)

    with pytest.raises(openai.APIError) as err:
        drain()
    assert got == ["", "a", "b"]
    assert not isinstance(err.value, openai.APIStatusError)
    assert err.value.body is not None


def test_failure_mid_stream_raw(srv: Any) -> None:
    body = {
        "model": "chat",
        "messages": user("[[fake:chunks=a|b]][[fake:fail_after=1]]"),
        "stream": True,
    }
    with requests.post(
        f"{srv.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {SECRET}"},
        stream=True,
    ) as r:
        assert r.status_code == 200
        events = r.content.decode().split("\n\n")
    assert events[-1] == ""
    last = json.loads(events[-2].removeprefix("data: "))
    assert set(last) == {"error"}
    assert last["error"]["code"] == "LLMError"
    assert last["error"]["type"] == "server_error"
    assert "data: [DONE]" not in events


# --------------------------------------------------------------------------- OpenAPI


def refs_in(spec: dict[str, Any], node: Any, seen: set[str] | None = None) -> set[str]:
    """Every $ref reachable from ``node`` (following refs), each checked to resolve in ``spec``."""
    seen = set() if seen is None else seen
    if isinstance(node, list):
        for v in node:
            refs_in(spec, v, seen)
    elif isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            target: Any = spec
            for part in ref.removeprefix("#/").split("/"):
                assert part in target, f"unresolvable $ref {ref}"
                target = target[part]
            refs_in(spec, target, seen)
        for v in node.values():
            refs_in(spec, v, seen)
    return seen


def test_openapi_documents_both_endpoints(srv: Any) -> None:
    spec = requests.get(f"{srv.url}/openapi.json").json()
    op = spec["paths"]["/v1/chat/completions"]["post"]
    refs_in(spec, op)
    req = op["requestBody"]["content"]["application/json"]["schema"]
    assert req["title"] == "ChatCompletionRequest"
    assert {"model", "messages", "stream", "stream_options"} <= set(req["properties"])
    assert req["properties"]["messages"]["items"]["title"] == "ChatMessage"
    ok = op["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    item = ok["text/event-stream"]["itemSchema"]["properties"]["data"]["contentSchema"]["oneOf"]
    assert item[0]["title"] == "ChatCompletionChunk"
    assert {"id", "object", "choices", "usage"} <= set(item[0]["properties"])
    assert item[1] == {"$ref": "#/components/schemas/ErrorResponse"}
    for status in ("400", "401", "404", "500"):
        err = op["responses"][status]["content"]["application/json"]["schema"]
        assert err == {"$ref": "#/components/schemas/ErrorResponse"}, status
    assert "422" not in op["responses"]
    models = spec["paths"]["/v1/models"]["get"]
    refs_in(spec, models)
    schema = models["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ModelList"}
