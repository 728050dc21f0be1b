"""Sessions end to end: ids, users, history fed to the flow, failed / canceled turns, protocols.

Most tests share one server (``examples_server``: the example flows, default app ``echo``, token
``secret``, the fake LLM) and keep apart through fresh session ids. The echo flow answers
``echo: <q>`` on a first turn and ``echo: <q> (turn N)`` once it sees N-1 earlier turns.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from history_support import (
    CHAT,
    ECHO,
    HEX32,
    SESSION_HEADER,
    SSE,
    messages,
    new_id,
    poll,
    session,
    simple_stream_answer,
    sse_events,
)

from flowhost.testing import FakeLLM, Reply

Server = Any  # tests/conftest.py's Server (conftest is not importable)


@pytest.fixture
def client(examples_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=examples_server.url, headers=examples_server.headers, timeout=15.0
    ) as c:
        yield c


def ask(
    client: httpx.Client,
    question: str,
    session_id: str | None = None,
    *,
    path: str = "/",
    user: str | None = None,
) -> httpx.Response:
    headers: dict[str, str] = {}
    if session_id is not None:
        headers[SESSION_HEADER] = session_id
    if user is not None:
        headers["Chat-User-Id"] = user
    return client.post(path, json={"question": question}, headers=headers)


def llm_messages(fake: FakeLLM) -> list[dict[str, Any]]:
    """The messages of the last chat request the fake LLM received."""
    chats = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert chats, "the fake LLM received no chat request"
    body = chats[-1].body
    assert isinstance(body, dict)
    return [{"role": m["role"], "content": m["content"].strip()} for m in body["messages"]]


def dialogue(msgs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, content) without the system prompt."""
    return [(m["role"], m["content"]) for m in msgs if m["role"] != "system"]


# --- session ids -------------------------------------------------------------------------------


def test_new_session_id_comes_back_in_the_header(client: httpx.Client) -> None:
    first = ask(client, "hi")
    assert first.status_code == 200, first.text
    sid = first.headers[SESSION_HEADER]
    assert HEX32.match(sid)
    assert first.json() == {"answer": "echo: hi"}

    other = ask(client, "hi")
    assert HEX32.match(other.headers[SESSION_HEADER])
    assert other.headers[SESSION_HEADER] != sid

    again = ask(client, "again", sid)
    assert again.headers[SESSION_HEADER] == sid
    assert again.json() == {"answer": "echo: again (turn 2)"}


@pytest.mark.parametrize(
    "make",
    [
        lambda u: u[:32],  # exactly 32
        lambda u: "A-b_c:" + u,  # every allowed character class
        lambda u: (u * 8)[:255],  # exactly 255
        lambda u: f"user:42:conv_2024-01-01-{u}",
    ],
    ids=["32", "alphabet", "255", "structured"],
)
def test_valid_custom_session_ids(client: httpx.Client, make: Callable[[str], str]) -> None:
    sid = make(uuid.uuid4().hex)
    first = ask(client, "one", sid)
    assert first.status_code == 200, first.text
    assert first.headers[SESSION_HEADER] == sid
    second = ask(client, "two", sid)
    assert second.json() == {"answer": "echo: two (turn 2)"}
    assert session(client, sid)["session_id"] == sid


BAD_IDS = [
    "a" * 31,  # too short
    "a" * 256,  # too long
    "a" * 31 + ".",
    "a" * 31 + "/",
    "a" * 16 + " " + "a" * 16,
    "a" * 31 + "%",
]


@pytest.mark.parametrize("sid", BAD_IDS)
def test_bad_session_id_is_a_400_naming_the_rule(client: httpx.Client, sid: str) -> None:
    resp = ask(client, "hi", sid)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert "32-255" in body["detail"]
    assert "letters" in body["detail"]
    assert "Chat-Session-Id" in body["detail"]
    assert SESSION_HEADER not in resp.headers


def test_bad_session_id_on_every_protocol(client: httpx.Client) -> None:
    bad = "not-long-enough"
    run = client.post(
        "/run", json={"inputs": {"question": "q"}, "stream": False}, headers={SESSION_HEADER: bad}
    )
    assert run.status_code == 400
    assert "32-255" in run.json()["detail"]
    openai = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "q"}]},
        headers={SESSION_HEADER: bad},
    )
    assert openai.status_code == 400
    assert "32-255" in openai.json()["error"]["message"]
    bailian = client.post(
        "/api/v1/apps/echo/completion", json={"input": {"prompt": "q", "session_id": bad}}
    )
    assert bailian.status_code == 400
    assert "32-255" in bailian.json()["message"]


def test_session_id_with_a_trailing_newline_is_refused(client: httpx.Client) -> None:
    # Only JSON can carry it (input.session_id); the rule is on the whole string.
    sid = new_id() + "\n"
    resp = client.post(
        "/api/v1/apps/echo/completion", json={"input": {"prompt": "q", "session_id": sid}}
    )
    assert resp.status_code == 400, resp.text
    assert "32-255" in resp.json()["message"]


def test_a_session_belongs_to_its_app(client: httpx.Client) -> None:
    """Another app's history would be another flow's, and the session would mix two apps."""
    sid = ask(client, "for echo", path="/apps/echo").headers[SESSION_HEADER]
    refused = [
        ask(client, "elsewhere", sid, path="/apps/chat"),
        client.post("/apps/chat/run", json={"inputs": {"question": "x"}, "stream": False},
                    headers={SESSION_HEADER: sid}),
        client.post("/v1/chat/completions", headers={SESSION_HEADER: sid},
                    json={"model": "chat", "messages": [{"role": "user", "content": "x"}]}),
        client.post("/api/v1/apps/chat/completion",
                    json={"input": {"prompt": "x", "session_id": sid}}),
    ]  # fmt: skip
    for resp in refused:
        assert resp.status_code == 400, resp.text
        assert "belongs to app 'echo'" in resp.text
    assert refused[0].json()["field"] == "session_id"
    assert refused[2].json()["error"]["param"] == "session_id"
    assert refused[3].json()["code"] == "InvalidParameter"
    assert session(client, sid)["turn_count"] == 1  # nothing stored
    assert ask(client, "again", sid, path="/apps/echo").status_code == 200  # its own app: fine


# --- users -------------------------------------------------------------------------------------


def test_a_session_belongs_to_its_user(client: httpx.Client) -> None:
    alice, bob = new_id("alice"), new_id("bob")
    first = ask(client, "mine", user=alice)
    sid = first.headers[SESSION_HEADER]
    assert session(client, sid)["user_id"] == alice

    for intruder in (bob, None):  # another user, and the anonymous user
        resp = ask(client, "let me in", sid, user=intruder)
        assert resp.status_code == 403, resp.text
        assert resp.json()["status"] == 403
        headers = {"Chat-User-Id": intruder} if intruder else {}
        if intruder:
            assert client.get(f"/api/v1/history/sessions/{sid}", headers=headers).status_code == 403
            read = client.get(f"/api/v1/history/sessions/{sid}/messages", headers=headers)
            assert read.status_code == 403
    # refused requests left nothing behind
    assert session(client, sid)["turn_count"] == 1
    assert [m["inputs"]["question"] for m in messages(client, sid)] == ["mine"]

    # every protocol enforces it
    openai = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "x"}], "user": bob},
        headers={SESSION_HEADER: sid},
    )
    assert openai.status_code == 403
    bailian = client.post(
        "/api/v1/apps/echo/completion",
        json={"input": {"prompt": "x", "session_id": sid}},
        headers={"Chat-User-Id": bob},
    )
    assert bailian.status_code == 403
    run = client.post(
        "/run",
        json={"inputs": {"question": "x"}, "stream": False},
        headers={SESSION_HEADER: sid, "Chat-User-Id": bob},
    )
    assert run.status_code == 403

    ok = ask(client, "still mine", sid, user=alice)
    assert ok.json() == {"answer": "echo: still mine (turn 2)"}
    assert session(client, sid, {"Chat-User-Id": alice})["turn_count"] == 2


def test_anonymous_session_is_not_open_to_a_named_user(client: httpx.Client) -> None:
    sid = ask(client, "anon").headers[SESSION_HEADER]
    assert session(client, sid)["user_id"] is None
    assert ask(client, "me", sid, user=new_id("u")).status_code == 403
    assert ask(client, "anon again", sid).json() == {"answer": "echo: anon again (turn 2)"}


def test_openai_user_field_is_the_user_id(client: httpx.Client) -> None:
    sid, user = new_id(), new_id("openai-user")
    resp = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}], "user": user},
        headers={SESSION_HEADER: sid},
    )
    assert resp.status_code == 200, resp.text
    assert session(client, sid, {"Chat-User-Id": user})["user_id"] == user


# --- history fed to the flow -------------------------------------------------------------------


def test_echo_flow_sees_its_earlier_turns(client: httpx.Client) -> None:
    sid = new_id()
    answers = [ask(client, f"q{i}", sid).json()["answer"] for i in range(1, 5)]
    assert answers == ["echo: q1", "echo: q2 (turn 2)", "echo: q3 (turn 3)", "echo: q4 (turn 4)"]
    stored = messages(client, sid)
    assert [m["inputs"] for m in stored] == [{"question": f"q{i}"} for i in range(1, 5)]
    assert [m["outputs"] for m in stored] == [{"answer": a} for a in answers]
    assert {m["status"] for m in stored} == {"completed"}
    assert all("chat_history" not in m["inputs"] for m in stored)


def test_chat_flow_sends_earlier_turns_to_the_llm_as_messages(
    client: httpx.Client, llm: FakeLLM
) -> None:
    sid = new_id()
    first = ask(client, "hello there", sid, path="/apps/chat")
    assert first.status_code == 200, first.text
    assert first.json() == {"answer": "echo: hello there"}
    assert dialogue(llm_messages(llm)) == [("user", "hello there")]

    second = ask(client, "[[fake:reply=fine thanks]] how are you", sid, path="/apps/chat")
    assert second.json() == {"answer": "fine thanks"}
    ask(client, "and then?", sid, path="/apps/chat")
    assert dialogue(llm_messages(llm)) == [
        ("user", "hello there"),
        ("assistant", "echo: hello there"),
        ("user", "[[fake:reply=fine thanks]] how are you"),
        ("assistant", "fine thanks"),
        ("user", "and then?"),
    ]
    assert llm_messages(llm)[0]["role"] == "system"


def test_failed_turn_is_recorded_but_not_fed_back(client: httpx.Client, llm: FakeLLM) -> None:
    sid = new_id()
    assert ask(client, "first", sid, path="/apps/chat").status_code == 200
    failed = ask(client, "boom [[fake:status=500]]", sid, path="/apps/chat")
    assert failed.status_code >= 500, failed.text
    assert failed.headers[SESSION_HEADER] == sid

    stored = messages(client, sid)
    assert [m["status"] for m in stored] == ["completed", "failed"]
    assert stored[1]["inputs"] == {"question": "boom [[fake:status=500]]"}
    assert stored[1]["outputs"] is None
    assert stored[1]["error"]["code"]
    assert session(client, sid)["turn_count"] == 2

    ask(client, "after", sid, path="/apps/chat")
    assert dialogue(llm_messages(llm)) == [
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "after"),
    ]


def test_failed_streaming_turn_is_recorded_as_failed(client: httpx.Client, llm: FakeLLM) -> None:
    sid = new_id()
    resp = client.post(
        "/apps/chat",
        json={"question": "a b c d [[fake:fail_after=2]]"},
        headers={**SSE, SESSION_HEADER: sid},
    )
    assert resp.status_code == 200
    assert resp.headers[SESSION_HEADER] == sid
    assert any(name == "Error" for name, _ in sse_events(resp.text))
    assert [m["status"] for m in messages(client, sid)] == ["failed"]
    ask(client, "next", sid, path="/apps/chat")
    assert dialogue(llm_messages(llm)) == [("user", "next")]


def _stream_and_hang_up(client: httpx.Client, protocol: str, sid: str, question: str) -> None:
    """Start a streaming chat-flow request and close it after the first content chunk.

    ``simple-json`` is a plain (not streaming) request that the client gives up on.
    """
    if protocol == "simple-json":
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/apps/chat",
                json={"question": question},
                headers={SESSION_HEADER: sid},
                timeout=httpx.Timeout(15.0, read=0.5),
            )
        return
    if protocol == "simple":
        req = client.build_request(
            "POST", "/apps/chat", json={"question": question}, headers={**SSE, SESSION_HEADER: sid}
        )
    elif protocol == "complete":
        req = client.build_request(
            "POST",
            "/apps/chat/run",
            json={"inputs": {"question": question}, "stream": True},
            headers={SESSION_HEADER: sid},
        )
    elif protocol == "openai":
        req = client.build_request(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "chat",
                "stream": True,
                "messages": [{"role": "user", "content": question}],
            },
            headers={SESSION_HEADER: sid},
        )
    else:
        req = client.build_request(
            "POST",
            "/api/v1/apps/chat/completion",
            json={"input": {"prompt": question, "session_id": sid}},
            headers={"X-DashScope-SSE": "enable", "Accept": "text/event-stream"},
        )
    resp = client.send(req, stream=True)
    try:
        assert resp.status_code == 200
        seen = ""
        for chunk in resp.iter_text():
            seen += chunk
            if "one" in seen:  # the first content chunk of the reply
                break
        else:
            raise AssertionError(f"the stream ended before its first chunk: {seen!r}")
    finally:
        resp.close()


@pytest.mark.parametrize("protocol", ["simple", "complete", "openai", "dashscope", "simple-json"])
def test_canceled_turn_is_recorded_but_not_fed_back(
    client: httpx.Client, llm: FakeLLM, protocol: str
) -> None:
    sid = new_id()
    assert ask(client, "first", sid, path="/apps/chat").status_code == 200
    question = "tell me a long story"
    delay = 5.0 if protocol == "simple-json" else None  # the client gives up first
    llm.enqueue(Reply(text="one two three four five six", chunk_delay=0.2, delay=delay))
    _stream_and_hang_up(client, protocol, sid, question)

    def canceled() -> list[dict[str, Any]] | None:
        stored = messages(client, sid)
        return stored if len(stored) == 2 else None

    stored = poll(canceled, timeout=10.0, what="the canceled turn to be recorded")
    assert [m["status"] for m in stored] == ["completed", "canceled"]
    assert stored[1]["inputs"] == {"question": question}
    assert stored[1]["outputs"] is None
    assert stored[1]["protocol"] == protocol.removesuffix("-json")
    # the run (and its LLM call) stopped rather than ran to the end
    gone = poll(lambda: llm.disconnects or None, timeout=10.0, what="the LLM call to be canceled")
    assert gone[0].chunks_sent < 6

    ask(client, "after", sid, path="/apps/chat")
    assert dialogue(llm_messages(llm)) == [
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "after"),
    ]


def test_history_turns_limit(
    server_factory: Callable[..., Server], chat_llm_env: dict[str, str], llm: FakeLLM
) -> None:
    server = server_factory(CHAT, env={**chat_llm_env, "FLOWHOST_HISTORY_TURNS": "2"})
    with httpx.Client(base_url=server.url, timeout=15.0) as c:
        sid = new_id()
        for i in range(1, 6):
            assert ask(c, f"q{i}", sid).json() == {"answer": f"echo: q{i}"}
        # only the two latest turns, oldest first
        assert dialogue(llm_messages(llm)) == [
            ("user", "q3"),
            ("assistant", "echo: q3"),
            ("user", "q4"),
            ("assistant", "echo: q4"),
            ("user", "q5"),
        ]
        assert len(messages(c, sid)) == 5  # the limit bounds what is fed, not what is kept


# --- protocols ---------------------------------------------------------------------------------


def test_all_four_protocols_share_one_session(client: httpx.Client) -> None:
    first = ask(client, "simple")
    sid = first.headers[SESSION_HEADER]
    assert first.json() == {"answer": "echo: simple"}

    run = client.post(
        "/run",
        json={"inputs": {"question": "complete"}, "stream": False},
        headers={SESSION_HEADER: sid},
    )
    assert run.status_code == 200, run.text
    assert run.headers[SESSION_HEADER] == sid
    assert run.json()["outputs"] == {"answer": "echo: complete (turn 2)"}

    openai = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "openai"}]},
        headers={SESSION_HEADER: sid},
    )
    assert openai.status_code == 200, openai.text
    assert openai.headers[SESSION_HEADER] == sid
    assert openai.json()["choices"][0]["message"]["content"] == "echo: openai (turn 3)"

    bailian = client.post(
        "/api/v1/apps/echo/completion", json={"input": {"prompt": "bailian", "session_id": sid}}
    )
    assert bailian.status_code == 200, bailian.text
    assert bailian.json()["output"]["session_id"] == sid
    assert bailian.json()["output"]["text"] == "echo: bailian (turn 4)"

    stored = messages(client, sid)
    assert [m["protocol"] for m in stored] == ["simple", "complete", "openai", "dashscope"]
    assert [m["inputs"]["question"] for m in stored] == ["simple", "complete", "openai", "bailian"]


def test_streaming_protocols_share_one_session(client: httpx.Client) -> None:
    sid = new_id()
    simple = client.post("/", json={"question": "s"}, headers={**SSE, SESSION_HEADER: sid})
    assert simple.headers[SESSION_HEADER] == sid
    assert simple_stream_answer(simple.text) == "echo: s"

    run = client.post(
        "/run", json={"inputs": {"question": "c"}, "stream": True}, headers={SESSION_HEADER: sid}
    )
    assert run.headers[SESSION_HEADER] == sid
    outputs = [json.loads(d) for _, d in sse_events(run.text) if '"RunOutput"' in d]
    assert outputs[-1]["outputs"] == {"answer": "echo: c (turn 2)"}

    openai = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": "o"}]},
        headers={SESSION_HEADER: sid},
    )
    assert openai.headers[SESSION_HEADER] == sid
    text = "".join(
        (json.loads(d)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for _, d in sse_events(openai.text)
        if d and d != "[DONE]"
    )
    assert text == "echo: o (turn 3)"

    bailian = client.post(
        "/api/v1/apps/echo/completion",
        json={"input": {"prompt": "b", "session_id": sid}},
        headers={"X-DashScope-SSE": "enable"},
    )
    chunks = [json.loads(d) for name, d in sse_events(bailian.text) if name == "result"]
    assert chunks
    assert {c["output"]["session_id"] for c in chunks} == {sid}
    assert chunks[-1]["output"]["text"] == "echo: b (turn 4)"
    assert [m["protocol"] for m in messages(client, sid)] == [
        "simple",
        "complete",
        "openai",
        "dashscope",
    ]


def test_bailian_starts_a_session_that_simple_mode_continues(client: httpx.Client) -> None:
    first = client.post("/api/v1/apps/echo/completion", json={"input": {"prompt": "b1"}})
    assert first.status_code == 200, first.text
    sid = first.json()["output"]["session_id"]
    assert HEX32.match(sid)
    assert ask(client, "s2", sid).json() == {"answer": "echo: s2 (turn 2)"}
    assert session(client, sid)["turn_count"] == 2


def test_openai_without_session_header_uses_the_client_history(client: httpx.Client) -> None:
    resp = client.post(
        "/v1/chat/completions",
        json={
            "model": "echo",
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "echo: a"},
                {"role": "user", "content": "b"},
            ],
        },
    )
    assert resp.status_code == 200, resp.text
    assert SESSION_HEADER not in resp.headers
    assert resp.json()["choices"][0]["message"]["content"] == "echo: b (turn 2)"


# --- history off -------------------------------------------------------------------------------


def test_no_history_flag(server_factory: Callable[..., Server]) -> None:
    server = server_factory(ECHO, "--no-history", token="tok")
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=15.0) as c:
        first = ask(c, "one")
        assert first.status_code == 200
        assert SESSION_HEADER not in first.headers
        sid = new_id()
        second = ask(c, "two", sid)
        assert SESSION_HEADER not in second.headers
        assert second.json() == {"answer": "echo: two"}  # no history fed
        assert ask(c, "three", sid).json() == {"answer": "echo: three"}

        for method, path in [
            ("GET", "/api/v1/history/sessions"),
            ("GET", f"/api/v1/history/sessions/{sid}"),
            ("GET", f"/api/v1/history/sessions/{sid}/messages"),
            ("DELETE", f"/api/v1/history/sessions/{sid}"),
            ("DELETE", f"/api/v1/history/sessions/{sid}/messages/1"),
        ]:
            resp = c.request(method, path)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.headers["content-type"].startswith("application/problem+json")
            body = resp.json()
            assert body["status"] == 503
            assert body["type"] == "about:blank"
            assert body["title"] == "Service Unavailable"
            assert "history" in body["detail"]
    # nothing was stored (the database may exist for other features: traces, memory)
    database = server.log.parent / "data" / "flowhost.db"
    if database.exists():
        db = sqlite3.connect(database)
        try:
            tables = [
                r[0]
                for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                if r[0].startswith(("flowhost_chat_session_", "flowhost_chat_history_"))
            ]
            assert all(db.execute(f"SELECT count(*) FROM {t}").fetchone() == (0,) for t in tables)
        finally:
            db.close()
