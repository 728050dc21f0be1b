"""Simple mode (seed 000, `POST /`) end to end: a real `flowhost serve`, curl and requests.

``examples_server`` (token "secret", default app echo, the chat example on the fake LLM),
``fixtures_server`` (tests/flows_fixtures/served) and ``llm`` come from tests/conftest.py.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from typing import Any

import pytest
import requests

from flowhost.testing import FakeLLM

QUESTION = "Where is the capital of France?"
CHUNKS = "[[fake:chunks=The| capital| of| France| is| Paris|.]]"

# seed 000, "Simple mode", the streaming sample response, verbatim
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
SEED_BODY = '{"answer":"The capital of France is Paris."}'


def assert_clean_error(r: requests.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    assert 'File "' not in r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_seed_curl_streaming(examples_server: Any, llm: FakeLLM) -> None:
    # seed 000's curl command, with the endpoint of the chat app and the server's token
    cmd = [
        "curl",
        "-sS",
        "-X",
        "POST",
        "-H",
        "Authorization: Bearer secret",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: text/event-stream",
        "-d",
        json.dumps({"question": f"{QUESTION} {CHUNKS}"}),
        f"{examples_server.url}/apps/chat",
    ]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=30)
    assert out.stdout.decode() == SEED_STREAM + "\n"
    assert llm.requests[0].body["messages"][-1] == {
        "role": "user",
        "content": f"{QUESTION} {CHUNKS}",
    }


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_seed_curl_non_streaming_to_the_default_app(examples_server: Any) -> None:
    cmd = [
        "curl",
        "-sS",
        "-X",
        "POST",
        "-H",
        "Authorization: Bearer secret",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"question": "Where is the capital of France?"}',
        examples_server.url,
    ]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=30)
    assert out.stdout.decode() == '{"answer":"echo: Where is the capital of France?"}'


def test_seed_requests_streaming(examples_server: Any, llm: FakeLLM) -> None:
    # seed 000's Python sample (streaming), as written there
    url = f"{examples_server.url}/apps/chat"
    token = "secret"
    data = {"question": f"{QUESTION} {CHUNKS}"}

    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "text/event-stream",
        "Content-Type": "application/json",
    }

    lines = []
    with requests.post(url, json=data, headers=headers, stream=True) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines(chunk_size=1024):
            lines.append(line)
    assert lines == [line.encode() for line in SEED_STREAM.split("\n")]
    assert len(llm.requests) == 1


def test_seed_requests_non_streaming(examples_server: Any) -> None:
    # seed 000's Python sample (non-streaming), as written there
    url = f"{examples_server.url}/apps/chat"
    token = "secret"
    data = {"question": f"{QUESTION} {CHUNKS}"}

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    response = requests.post(url, json=data, headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text == SEED_BODY


def test_default_app_streams_a_non_streaming_output_as_one_message(examples_server: Any) -> None:
    r = requests.post(
        examples_server.url,
        json={"question": "hi"},
        headers={**examples_server.headers, "Accept": "text/event-stream"},
    )
    assert r.status_code == 200
    assert r.text == (
        'event: Message\ndata: {"answer": ""}\n\n'
        'event: Message\ndata: {"answer": "echo: hi"}\n\n'
        'event: Message\ndata: {"answer": ""}\n\n'
    )


def test_apps_route_and_default_route_run_the_same_app(examples_server: Any) -> None:
    h = examples_server.headers
    a = requests.post(examples_server.url, json={"question": "x"}, headers=h)
    b = requests.post(f"{examples_server.url}/apps/echo", json={"question": "x"}, headers=h)
    c = requests.post(f"{examples_server.url}/apps/branch", json={"question": "x"}, headers=h)
    assert a.json() == b.json() == {"answer": "echo: x"}
    assert c.json() == {"answer": "You said: x (1 words)"}


def test_client_chat_history_reaches_the_llm(examples_server: Any, llm: FakeLLM) -> None:
    history = [{"inputs": {"question": "Hi"}, "outputs": {"answer": "Hello!"}}]
    r = requests.post(
        f"{examples_server.url}/apps/chat",
        json={"question": "And now?", "chat_history": history},
        headers=examples_server.headers,
    )
    assert r.json() == {"answer": "echo: And now?"}
    assert llm.requests[-1].body["messages"][1:] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And now?"},
    ]


def test_failing_node_non_streaming_is_a_json_error(fixtures_server: Any) -> None:
    r = requests.post(
        f"{fixtures_server.url}/apps/fail",
        json={"question": "why"},
        headers=fixtures_server.headers,
    )
    body = assert_clean_error(r, 500)
    assert r.headers["content-type"] == "application/problem+json"
    assert body["code"] == "NodeFailed"
    assert body["detail"] == "node 'explode' failed: ValueError: the answer to 'why' is unknowable"
    assert body["request_id"] == r.headers["x-request-id"]


def test_failing_node_after_streaming_began_is_an_error_event(fixtures_server: Any) -> None:
    r = requests.post(
        f"{fixtures_server.url}/apps/gen_fail",
        json={"question": "why"},
        headers={**fixtures_server.headers, "Accept": "text/event-stream"},
    )
    assert r.status_code == 200  # the headers went out before the node failed
    assert r.text == (
        'event: Message\ndata: {"answer": ""}\n\n'
        'event: Message\ndata: {"answer": "partial"}\n\n'
        "event: Error\n"
        'data: {"code": "NodeFailed", "message": "RuntimeError: the stream broke off", '
        '"node": "words"}\n\n'
    )


def test_upstream_llm_error_is_a_bad_gateway(examples_server: Any) -> None:
    r = requests.post(
        f"{examples_server.url}/apps/chat",
        json={"question": "[[fake:status=429]] hi"},
        headers=examples_server.headers,
    )
    body = assert_clean_error(r, 502)
    assert body["code"] == "LLMError"
    assert body["detail"].startswith("node 'chat' failed: connection 'openai': HTTP 429 from ")


def test_a_client_that_goes_away_cancels_the_llm_request(
    examples_server: Any, llm: FakeLLM
) -> None:
    with requests.post(
        f"{examples_server.url}/apps/chat",
        json={"question": "[[fake:delay=30]] hi"},
        headers={**examples_server.headers, "Accept": "text/event-stream"},
        stream=True,
    ) as r:
        lines = r.iter_lines()  # keep it: a discarded iterator may close the response early
        assert next(lines) == b"event: Message"
        deadline = time.monotonic() + 10
        while not llm.requests:  # the LLM call is in flight
            assert time.monotonic() < deadline
            time.sleep(0.01)
    # the response is closed: the server must cancel the run and drop its LLM request
    deadline = time.monotonic() + 10
    while not llm.disconnects:
        assert time.monotonic() < deadline, "the LLM request outlived the client"
        time.sleep(0.01)
    assert llm.disconnects[0].request_index == llm.requests[0].index


def test_a_client_that_goes_away_cancels_a_non_streaming_run(
    examples_server: Any, llm: FakeLLM
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", examples_server.port, timeout=30)
    body = json.dumps({"question": "[[fake:delay=30]] hi"})
    conn.request(
        "POST",
        "/apps/chat",
        body=body,
        headers={**examples_server.headers, "Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 10
    while not llm.requests:  # the LLM call is in flight; no response has been sent
        assert time.monotonic() < deadline
        time.sleep(0.01)
    conn.close()  # hang up without reading the response
    deadline = time.monotonic() + 10
    while not llm.disconnects:
        assert time.monotonic() < deadline, "the LLM request outlived the client"
        time.sleep(0.01)
    assert llm.disconnects[0].request_index == llm.requests[0].index
