"""The chat history API (``/api/v1/history``) end to end, on a real server with a token.

Tests share ``examples_server`` (token ``secret``, default app ``echo``) and keep apart through
user ids of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from history_support import SESSION_HEADER, messages, new_id, session

Server = Any  # tests/conftest.py's Server

API = "/api/v1/history"


@pytest.fixture
def client(examples_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=examples_server.url, headers=examples_server.headers, timeout=15.0
    ) as c:
        yield c


def turn(
    client: httpx.Client, question: str, sid: str | None = None, user: str | None = None
) -> str:
    headers = {SESSION_HEADER: sid} if sid else {}
    if user:
        headers["Chat-User-Id"] = user
    resp = client.post("/", json={"question": question}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.headers[SESSION_HEADER]


def make_sessions(client: httpx.Client, user: str, turns: list[int]) -> list[str]:
    """One session per entry of ``turns`` (that many turns each), in creation order."""
    ids = []
    for k, n in enumerate(turns):
        sid = turn(client, f"s{k} q1", user=user)
        for i in range(2, n + 1):
            turn(client, f"s{k} q{i}", sid, user=user)
        ids.append(sid)
    return ids


def listed(client: httpx.Client, **params: Any) -> dict[str, Any]:
    resp = client.get(f"{API}/sessions", params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


# --- list / get ----------------------------------------------------------------------------------


def test_list_sessions_of_a_user_newest_first(client: httpx.Client) -> None:
    user = new_id("u")
    a, b, c = make_sessions(client, user, [1, 2, 3])
    body = listed(client, user_id=user)
    assert body["total"] == 3
    assert [s["session_id"] for s in body["sessions"]] == [c, b, a]
    assert [s["turn_count"] for s in body["sessions"]] == [3, 2, 1]
    assert body["limit"] == 20
    assert body["offset"] == 0

    turn(client, "bump", a, user=user)  # a is now the most recently updated
    assert [s["session_id"] for s in listed(client, user_id=user)["sessions"]] == [a, c, b]


def test_list_sessions_pagination(client: httpx.Client) -> None:
    user = new_id("u")
    ids = make_sessions(client, user, [1] * 5)
    newest_first = ids[::-1]
    pages = [listed(client, user_id=user, limit=2, offset=o) for o in (0, 2, 4, 6)]
    assert [p["total"] for p in pages] == [5, 5, 5, 5]
    assert [len(p["sessions"]) for p in pages] == [2, 2, 1, 0]
    assert [p["limit"] for p in pages] == [2, 2, 2, 2]
    assert [p["offset"] for p in pages] == [0, 2, 4, 6]
    assert [s["session_id"] for p in pages for s in p["sessions"]] == newest_first


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"limit": "x"}],
    ids=["limit0", "limit201", "offset-1", "limit-nan"],
)
def test_list_sessions_bad_paging_is_a_400(client: httpx.Client, params: dict[str, Any]) -> None:
    resp = client.get(f"{API}/sessions", params=params)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["status"] == 400


def test_user_filter_and_chat_user_id_scoping(client: httpx.Client) -> None:
    alice, bob = new_id("alice"), new_id("bob")
    (a,) = make_sessions(client, alice, [1])
    (b,) = make_sessions(client, bob, [2])
    anon = turn(client, "anonymous")

    assert [s["session_id"] for s in listed(client, user_id=alice)["sessions"]] == [a]
    assert [s["session_id"] for s in listed(client, user_id=bob)["sessions"]] == [b]
    everyone = {s["session_id"] for s in listed(client, limit=200)["sessions"]}
    assert {a, b, anon} <= everyone

    # Chat-User-Id scopes the call to that user, whatever the query says
    scoped = client.get(f"{API}/sessions", params={"user_id": bob}, headers={"Chat-User-Id": alice})
    assert scoped.status_code == 200
    assert [s["session_id"] for s in scoped.json()["sessions"]] == [a]

    as_alice = {"Chat-User-Id": alice}
    assert session(client, a, as_alice)["user_id"] == alice
    for path in (f"{API}/sessions/{b}", f"{API}/sessions/{b}/messages", f"{API}/sessions/{anon}"):
        resp = client.get(path, headers=as_alice)
        assert resp.status_code == 403, (path, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
    for path in (f"{API}/sessions/{b}", f"{API}/sessions/{b}/messages/1"):
        assert client.delete(path, headers=as_alice).status_code == 403
    assert session(client, b)["turn_count"] == 2  # untouched


def test_get_session(client: httpx.Client) -> None:
    user = new_id("u")
    sid = turn(client, "What is the title?", user=user)
    turn(client, "second", sid, user=user)
    got = session(client, sid)
    assert got["session_id"] == sid
    assert got["app_id"] == "echo"
    assert got["user_id"] == user
    assert got["title"] == "What is the title?"
    assert got["turn_count"] == 2
    assert got["created_at"] <= got["updated_at"]
    assert got["created_at"].endswith(("Z", "+00:00"))


def test_long_first_question_gives_a_cut_title(client: httpx.Client) -> None:
    sid = turn(client, "x" * 500)
    assert session(client, sid)["title"] == "x" * 200


def test_list_messages_with_pagination(client: httpx.Client) -> None:
    user = new_id("u")
    (sid,) = make_sessions(client, user, [5])
    everything = messages(client, sid)
    assert [m["inputs"] for m in everything] == [{"question": f"s0 q{i}"} for i in range(1, 6)]
    assert [m["outputs"]["answer"] for m in everything][:2] == [
        "echo: s0 q1",
        "echo: s0 q2 (turn 2)",
    ]
    first = everything[0]
    assert first["session_id"] == sid
    assert first["app_id"] == "echo"
    assert first["status"] == "completed"
    assert first["protocol"] == "simple"
    assert first["error"] is None
    assert isinstance(first["id"], int)
    assert len(first["run_id"]) == 36
    assert first["duration_ms"] >= 0
    ids = [m["id"] for m in everything]
    assert ids == sorted(ids)

    page = client.get(f"{API}/sessions/{sid}/messages", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [m["id"] for m in page["messages"]] == ids[1:3]
    tail = client.get(f"{API}/sessions/{sid}/messages", params={"limit": 2, "offset": 4}).json()
    assert [m["id"] for m in tail["messages"]] == ids[4:]
    assert client.get(f"{API}/sessions/{sid}/messages", params={"limit": 501}).status_code == 400


# --- delete --------------------------------------------------------------------------------------


def test_delete_one_message(client: httpx.Client) -> None:
    user = new_id("u")
    (sid,) = make_sessions(client, user, [3])
    before = messages(client, sid)
    middle = before[1]["id"]

    assert client.delete(f"{API}/sessions/{sid}/messages/{middle}").status_code == 204
    after = messages(client, sid)
    assert [m["id"] for m in after] == [before[0]["id"], before[2]["id"]]
    assert session(client, sid)["turn_count"] == 2
    # gone for good, and no longer fed to the flow
    again = client.delete(f"{API}/sessions/{sid}/messages/{middle}")
    assert again.status_code == 404
    assert again.headers["content-type"].startswith("application/problem+json")
    resp = client.post(
        "/", json={"question": "next"}, headers={SESSION_HEADER: sid, "Chat-User-Id": user}
    )
    assert resp.json() == {"answer": "echo: next (turn 3)"}


def test_delete_message_of_another_session_is_a_404(client: httpx.Client) -> None:
    user = new_id("u")
    a, b = make_sessions(client, user, [1, 1])
    b_message = messages(client, b)[0]["id"]
    assert client.delete(f"{API}/sessions/{a}/messages/{b_message}").status_code == 404
    assert len(messages(client, b)) == 1
    assert client.delete(f"{API}/sessions/{a}/messages/999999999").status_code == 404
    assert client.delete(f"{API}/sessions/{a}/messages/abc").status_code == 400


def test_delete_session(client: httpx.Client) -> None:
    user = new_id("u")
    keep, sid = make_sessions(client, user, [1, 2])
    assert client.delete(f"{API}/sessions/{sid}", headers={"Chat-User-Id": user}).status_code == 204
    for path in (f"{API}/sessions/{sid}", f"{API}/sessions/{sid}/messages"):
        resp = client.get(path)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["status"] == 404
    assert client.delete(f"{API}/sessions/{sid}").status_code == 404
    assert [s["session_id"] for s in listed(client, user_id=user)["sessions"]] == [keep]
    assert len(messages(client, keep)) == 1

    # the id can start afresh: no history comes back
    resp = client.post("/", json={"question": "anew"}, headers={SESSION_HEADER: sid})
    assert resp.json() == {"answer": "echo: anew"}
    assert session(client, sid)["user_id"] is None


def test_unknown_session_is_a_404_everywhere(client: httpx.Client) -> None:
    sid = new_id("nobody")
    for method, path in [
        ("GET", f"{API}/sessions/{sid}"),
        ("GET", f"{API}/sessions/{sid}/messages"),
        ("DELETE", f"{API}/sessions/{sid}"),
        ("DELETE", f"{API}/sessions/{sid}/messages/1"),
    ]:
        resp = client.request(method, path)
        assert resp.status_code == 404, (method, path, resp.text)
        body = resp.json()
        assert body["status"] == 404
        assert body["code"] == "NotFound"
        assert sid in body["detail"]


# --- auth and schema -----------------------------------------------------------------------------


def test_history_api_needs_the_token(examples_server: Server) -> None:
    sid = new_id()
    routes = [
        ("GET", f"{API}/sessions"),
        ("GET", f"{API}/sessions/{sid}"),
        ("GET", f"{API}/sessions/{sid}/messages"),
        ("DELETE", f"{API}/sessions/{sid}"),
        ("DELETE", f"{API}/sessions/{sid}/messages/1"),
    ]
    with httpx.Client(base_url=examples_server.url, timeout=15.0) as anonymous:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret"}):
                resp = anonymous.request(method, path, headers=headers)
                assert resp.status_code == 401, (method, path, headers, resp.text)
                assert resp.json()["status"] == 401
        assert anonymous.get("/openapi.json").status_code == 200


def test_models_in_openapi(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("SessionOut", "SessionList", "MessageOut", "MessageList"):
        assert name in schemas, name
    assert set(schemas["SessionOut"]["properties"]) >= {
        "session_id",
        "app_id",
        "user_id",
        "title",
        "created_at",
        "updated_at",
        "turn_count",
    }
    assert set(schemas["MessageOut"]["properties"]) >= {
        "id",
        "session_id",
        "run_id",
        "status",
        "inputs",
        "outputs",
        "error",
        "created_at",
    }
    paths = spec["paths"]

    def ok_schema(path: str, method: str) -> dict[str, Any]:
        content = paths[path][method]["responses"]["200"]["content"]
        schema: dict[str, Any] = content["application/json"]["schema"]
        return schema

    assert ok_schema(f"{API}/sessions", "get")["$ref"].endswith("/SessionList")
    assert ok_schema(f"{API}/sessions/{{session_id}}", "get")["$ref"].endswith("/SessionOut")
    assert ok_schema(f"{API}/sessions/{{session_id}}/messages", "get")["$ref"].endswith(
        "/MessageList"
    )
    assert "204" in paths[f"{API}/sessions/{{session_id}}"]["delete"]["responses"]
    assert (
        "204"
        in paths[f"{API}/sessions/{{session_id}}/messages/{{message_id}}"]["delete"]["responses"]
    )
    params = {p["name"] for p in paths[f"{API}/sessions"]["get"]["parameters"]}
    assert {"user_id", "limit", "offset"} <= params


def test_out_of_range_numbers_are_a_400_not_a_500(client: httpx.Client) -> None:
    sid = turn(client, "numbers")
    huge = str(2**64)
    for method, path, params in [
        ("GET", f"{API}/sessions", {"offset": huge}),
        ("GET", f"{API}/sessions/{sid}/messages", {"offset": huge}),
        ("DELETE", f"{API}/sessions/{sid}/messages/{huge}", {}),
        ("DELETE", f"{API}/sessions/{sid}/messages/0", {}),
    ]:
        resp = client.request(method, path, params=params)
        assert resp.status_code == 400, (method, path, resp.text)
    last = str(2**63 - 1)
    assert listed(client, offset=last)["sessions"] == []
    assert client.delete(f"{API}/sessions/{sid}/messages/{last}").status_code == 404
    assert len(messages(client, sid)) == 1
