"""The fake OpenAI-compatible server, driven over real HTTP by the real openai SDK and httpx."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from flowhost.testing import FakeLLM, Reply
from flowhost.testing.fake_llm import embed


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeLLM) -> FakeLLM:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeLLM) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="x") as sdk:
        yield sdk


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def sse_events(fake: FakeLLM, body: dict[str, Any]) -> list[str]:
    """The `data:` payloads of one streamed chat completion, read with plain httpx."""
    with (
        httpx.Client() as http,
        http.stream("POST", f"{fake.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


def http_chunks(fake: FakeLLM, body: dict[str, Any]) -> list[bytes]:
    """The HTTP/1.1 chunks of one response, as they were framed on the wire."""
    payload = json.dumps(body).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
    )
    data = b""
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as sock:
        sock.sendall(head + payload)
        while received := sock.recv(65536):
            data += received
    headers, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in headers.lower()
    chunks: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]


def test_non_stream_echo_and_usage(fake: FakeLLM, client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "hello world"},
    ]
    completion = client.chat.completions.create(model="my-model", messages=messages)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "my-model"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello world"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 8
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 11
    [recorded] = fake.requests
    assert recorded.path == "/v1/chat/completions"
    assert recorded.method == "POST"
    assert recorded.body["messages"] == messages
    assert recorded.headers["authorization"] == "Bearer x"


def test_content_parts_are_echoed(client: openai.OpenAI) -> None:
    parts: Any = [{"type": "text", "text": "hello"}, {"type": "text", "text": "parts"}]
    completion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": parts}]
    )
    assert completion.choices[0].message.content == "echo: hello parts"


def test_stream_sequence_with_usage(client: openai.OpenAI) -> None:
    with client.chat.completions.create(
        model="m",
        messages=user("hello big world"),
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    first, *pieces, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert [p.choices[0].delta.content for p in pieces] == ["echo:", " hello", " big", " world"]
    assert all(p.choices[0].finish_reason is None for p in [first, *pieces])
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (3, 4)
    assert usage.usage.total_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])


def test_async_stream_without_usage(fake: FakeLLM) -> None:
    async def run() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="x") as sdk:
            stream = await sdk.chat.completions.create(
                model="m", messages=user("[[fake:chunks=A|B|C]]"), stream=True
            )
            async with stream:
                return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert [c.choices[0].delta.content for c in chunks] == ["", "A", "B", "C", None]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_raw_sse_ends_with_done(fake: FakeLLM) -> None:
    body = {"model": "m", "stream": True, "messages": user("hi there")}
    events = sse_events(fake, {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "echo:"},
        {"content": " hi"},
        {"content": " there"},
        {},
    ]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    plain = sse_events(fake, body)
    assert plain[-1] == "[DONE]"
    assert "usage" not in json.loads(plain[-2])


def test_each_event_is_its_own_http_chunk(fake: FakeLLM) -> None:
    body = {"model": "m", "stream": True, "messages": user("[[fake:chunks=one|two|three]]")}
    chunks = http_chunks(fake, {**body, "stream_options": {"include_usage": True}})
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
    assert all(c.count(b"data: ") == 1 for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"
    deltas = [json.loads(c[6:])["choices"][0]["delta"] for c in chunks[1:4]]
    assert [d["content"] for d in deltas] == ["one", "two", "three"]
    assert len(chunks) == 7  # role, 3 pieces, finish, usage, [DONE]


@pytest.mark.parametrize(
    ("message", "expected", "pieces"),
    [
        ("please [[fake:reply=Hello there world]]", "Hello there world", 3),
        ("[[fake:chunks=Hel|lo| wor|ld]] ignored", "Hello world", 4),
        ('give json [[fake:json={"a": [[1]], "b": "]]"}]]', '{"a": [[1]], "b": "]]"}', 4),
        ("hello [[fake:delay=0]] world [[fake:chunk_delay=0]]", "echo: hello  world", 3),
    ],
)
def test_directives_script_the_reply(
    client: openai.OpenAI, message: str, expected: str, pieces: int
) -> None:
    completion = client.chat.completions.create(model="m", messages=user(message))
    assert completion.choices[0].message.content == expected
    assert completion.usage is not None
    assert completion.usage.completion_tokens == pieces


def test_only_the_last_user_message_is_scripted(client: openai.OpenAI) -> None:
    messages: Any = [*user("[[fake:reply=old]]"), *user("new")]
    completion = client.chat.completions.create(model="m", messages=messages)
    assert completion.choices[0].message.content == "echo: new"


@pytest.mark.parametrize(
    "message", ["[[fake:colour=red]]", "[[fake:delay=soon]]", "[[fake:reply=x"]
)
def test_bad_directive_is_a_400(fake: FakeLLM, client: openai.OpenAI, message: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=user(message))
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_status_directive_raises_without_retries(
    fake: FakeLLM, client: openai.OpenAI, status: int, error: type[Exception], stream: bool
) -> None:
    with pytest.raises(error) as raised:
        client.chat.completions.create(
            model="m", messages=user(f"hi [[fake:status={status}]]"), stream=stream
        )
    assert len(fake.requests) == 1
    assert isinstance(raised.value, openai.APIStatusError)
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict)
    assert set(body) >= {"message", "type", "param", "code"}


def test_delay_directive_is_honoured(fake: FakeLLM, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="m", messages=user("hi [[fake:delay=0.3]]"))
    done = time.monotonic()
    assert done - fake.requests[0].received_at >= 0.3


def test_server_delay_and_chunk_delay() -> None:
    with FakeLLM(delay=0.2, chunk_delay=0.05) as fake:
        body = {"model": "m", "stream": True, "messages": user("a b c [[fake:delay=0.1]]")}
        events = sse_events(fake, body)
        done = time.monotonic()
    assert len(events) == 7  # role, 4 pieces, finish, [DONE]
    assert done - fake.requests[0].received_at >= 0.2 + 0.1 + 3 * 0.05


def test_fail_after_drops_the_stream(fake: FakeLLM) -> None:
    body = {"model": "m", "stream": True, "messages": user("a b c d [[fake:fail_after=2]]")}
    lines: list[str] = []
    with (
        httpx.Client() as http,
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", f"{fake.base_url}/chat/completions", json=body) as response,
    ):
        lines.extend(line for line in response.iter_lines() if line)
    contents = [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in lines]
    assert contents == ["", "echo:", " a"]
    assert fake.disconnects == []


def test_client_going_away_is_recorded_promptly(fake: FakeLLM) -> None:
    body = {"model": "m", "stream": True, "messages": user("a b c [[fake:chunk_delay=5]]")}
    with (
        httpx.Client() as http,
        http.stream("POST", f"{fake.base_url}/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk
        assert next(lines) == ""
        assert "echo:" in next(lines)
    closed = time.monotonic()
    deadline = closed + 3.0
    while not fake.disconnects and time.monotonic() < deadline:
        time.sleep(0.01)
    [gone] = fake.disconnects
    assert gone.request_index == 0
    assert gone.stream
    assert gone.chunks_sent == 1
    assert gone.at - closed < 2.0  # well before the 5 s chunk delay ends


def test_completed_streams_are_not_disconnects(fake: FakeLLM, client: openai.OpenAI) -> None:
    with client.chat.completions.create(model="m", messages=user("x"), stream=True) as stream:
        list(stream)
    client.chat.completions.create(model="m", messages=user("y"))
    time.sleep(0.05)
    assert fake.disconnects == []


def test_enqueue_is_fifo_and_default_is_layered(fake: FakeLLM, client: openai.OpenAI) -> None:
    def ask(text: str = "q") -> str | None:
        return (
            client.chat.completions.create(model="m", messages=user(text))
            .choices[0]
            .message.content
        )

    fake.enqueue(Reply(text="first"), Reply(chunks=["sec", "ond"]))
    fake.enqueue(Reply(delay=0.0, usage={"prompt_tokens": 100}))
    assert ask() == "first"
    assert ask() == "second"
    usage = client.chat.completions.create(model="m", messages=user("q")).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 2, 102)
    assert ask("again") == "echo: again"
    fake.set_default(Reply(text="default"))
    fake.enqueue(Reply(text="queued"))
    assert ask("[[fake:reply=directive]]") == "directive"  # consumes the queued reply
    assert ask() == "default"
    fake.set_default(None)
    assert ask("back") == "echo: back"


def test_enqueued_status(fake: FakeLLM, client: openai.OpenAI) -> None:
    fake.enqueue(Reply(status=429))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=user("q"))
    assert client.chat.completions.create(model="m", messages=user("q")).choices[0].message.content


def test_reply_validation() -> None:
    with pytest.raises(ValueError, match="disagree"):
        Reply(text="ab", chunks=["a", "c"])
    with pytest.raises(ValueError, match="400-599"):
        Reply(status=200)
    assert Reply(text="ab", chunks=["a", "b"]).chunks == ["a", "b"]


def test_embeddings_shape_and_determinism(fake: FakeLLM, client: openai.OpenAI) -> None:
    first = client.embeddings.create(model="e", input=["alpha", "beta"])  # base64 on the wire
    again = client.embeddings.create(model="e", input="alpha")
    assert [d.index for d in first.data] == [0, 1]
    vectors = [d.embedding for d in first.data]
    assert all(len(v) == 8 for v in vectors)
    assert vectors[0] == again.data[0].embedding
    assert vectors[0] != vectors[1]
    assert math.isclose(math.fsum(x * x for x in vectors[0]), 1.0, rel_tol=1e-5)
    assert first.usage.prompt_tokens == 2
    assert fake.requests[0].body["encoding_format"] == "base64"
    with httpx.Client() as http:
        body = {"model": "e", "input": "alpha", "dimensions": 16, "encoding_format": "float"}
        floats = http.post(f"{fake.base_url}/embeddings", json=body).json()
    assert floats["data"][0]["embedding"] == embed("alpha", 16)
    assert vectors[0] == pytest.approx(embed("alpha"), rel=1e-6)


def test_models_and_health(fake: FakeLLM, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "fake-chat" in ids
    with httpx.Client() as http:
        assert http.get(f"{fake.url}/health").status_code == 200
    assert [r.path for r in fake.requests] == ["/v1/models"]


def test_reset_forgets_everything(fake: FakeLLM, client: openai.OpenAI) -> None:
    fake.enqueue(Reply(text="queued"))
    fake.set_default(Reply(text="default"))
    fake.reset()
    assert fake.requests == []
    assert client.chat.completions.create(model="m", messages=user("x")).choices[0].message.content
    assert fake.requests[0].index == 0


def test_cli_process_serves_many_concurrent_requests() -> None:
    command = [sys.executable, "-m", "flowhost.testing.fake_llm", "--port", "0", "--delay", "1"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("fake-llm listening on http://127.0.0.1:")
            port = int(line.rsplit(":", 1)[1])
            body = json.dumps({"model": "m", "messages": user("hi")}).encode()
            request = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )

            async def one() -> bytes:  # a bare client, so that the client is not the bottleneck
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                response = await reader.read()
                writer.close()
                await writer.wait_closed()
                return response

            async def burst(n: int) -> float:
                started = time.monotonic()
                responses = await asyncio.gather(*(one() for _ in range(n)))
                assert all(r.startswith(b"HTTP/1.1 200") for r in responses)
                replies = [json.loads(r.partition(b"\r\n\r\n")[2]) for r in responses]
                assert all(r["choices"][0]["message"]["content"] == "echo: hi" for r in replies)
                return time.monotonic() - started

            elapsed = asyncio.run(burst(500))
            assert 1.0 <= elapsed < 20  # one after another would take 500 s
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=10)
    assert stderr == ""
