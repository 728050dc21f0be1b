"""The trace API against a real server: trace ids on every protocol, list/filter/page, the tree.

One ``flowhost serve examples/flows`` (token ``secret``, fake LLM) for the module; tracing is on
by default with the local span store in the data dir.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from flowhost.testing import FakeLLM

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
AUTH = {"Authorization": "Bearer secret"}


def client(server: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=AUTH, timeout=30)


def sse_data(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def chat(c: httpx.Client, question: str, session: str | None = None) -> httpx.Response:
    headers = {"Chat-Session-Id": session} if session else {}
    resp = c.post("/apps/chat", json={"question": question}, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp


def test_every_protocol_returns_the_trace_id(examples_server: Any, llm: FakeLLM) -> None:
    with client(examples_server) as c:
        simple = chat(c, "hello")
        assert HEX32.match(simple.headers["X-Trace-Id"])

        sse = c.post("/apps/chat", json={"question": "hi"}, headers={"Accept": "text/event-stream"})
        assert HEX32.match(sse.headers["X-Trace-Id"])

        complete = c.post("/apps/chat/run", json={"inputs": {"question": "hi"}, "stream": False})
        body = complete.json()
        assert body["flow_run_info"]["otel_trace_id"] == complete.headers["X-Trace-Id"]

        streamed = c.post("/apps/chat/run", json={"inputs": {"question": "hi"}, "stream": True})
        events = sse_data(streamed.text)
        assert events[0]["event"] == "RunStarted"
        assert events[-1]["event"] == "RunTerminated"
        trace_id = streamed.headers["X-Trace-Id"]
        assert events[0]["flow_run_info"]["otel_trace_id"] == trace_id
        assert events[-1]["flow_run_info"]["otel_trace_id"] == trace_id

        openai = c.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert openai.status_code == 200, openai.text
        assert HEX32.match(openai.headers["X-Trace-Id"])

        bailian = c.post("/api/v1/apps/chat/completion", json={"input": {"prompt": "hi"}})
        assert bailian.status_code == 200, bailian.text
        assert HEX32.match(bailian.headers["X-Trace-Id"])

        ids = {r.headers["X-Trace-Id"] for r in (simple, sse, complete, streamed, openai, bailian)}
        assert len(ids) == 6
        for trace_id in ids:  # every one is stored
            assert c.get(f"/api/v1/traces/{trace_id}").status_code == 200


def test_a_trace_is_a_tree_of_the_run_and_its_nodes(examples_server: Any, llm: FakeLLM) -> None:
    with client(examples_server) as c:
        resp = chat(c, "what is a span [[fake:reply=a unit of work]]")
        trace = c.get(f"/api/v1/traces/{resp.headers['X-Trace-Id']}").json()
    assert trace["span_count"] == 2
    (root,) = trace["spans"]
    assert root["span_type"] == "flow"
    assert root["name"] == "chat"
    assert root["status"] == "completed"
    assert root["inputs"]["question"].startswith("what is a span")
    assert root["output"] == {"answer": "a unit of work"}
    (node,) = root["children"]
    assert node["span_type"] == "llm"
    assert node["parent_span_id"] == root["span_id"]
    assert node["model"] == "fake-chat"
    assert node["usage"]["output_tokens"] > 0
    assert node["usage"]["models"] == ["fake-chat"]
    assert node["messages"][-1]["role"] == "user"
    assert node["output"] == "a unit of work"
    assert node["duration_ms"] <= root["duration_ms"]
    assert node["attributes"]["gen_ai.request.model"] == "fake-chat"


def test_list_filter_and_page(examples_server: Any, llm: FakeLLM) -> None:
    with client(examples_server) as c:
        first = chat(c, "one")
        session = first.headers["Chat-Session-Id"]
        second = chat(c, "two", session)
        failed = c.post("/apps/chat", json={"question": "x [[fake:status=500]]"}, headers=AUTH)
        assert failed.status_code >= 500
        failed_trace = failed.headers["X-Trace-Id"]

        by_session = c.get("/api/v1/traces", params={"session_id": session}).json()
        assert by_session["total"] == 2
        assert [t["trace_id"] for t in by_session["traces"]] == [
            second.headers["X-Trace-Id"],
            first.headers["X-Trace-Id"],
        ]
        summary = by_session["traces"][0]
        assert summary["app_id"] == "chat"
        assert summary["status"] == "completed"
        assert summary["protocol"] == "simple"
        assert summary["usage"]["input_tokens"] > 0
        assert "two" in summary["input_preview"]

        failures = c.get("/api/v1/traces", params={"status": "failed", "app_id": "chat"}).json()
        match = [t for t in failures["traces"] if t["trace_id"] == failed_trace]
        assert match
        assert match[0]["error"]["code"] == "LLMError"

        page = c.get("/api/v1/traces", params={"session_id": session, "limit": 1, "offset": 1})
        assert [t["trace_id"] for t in page.json()["traces"]] == [first.headers["X-Trace-Id"]]

        run_id = c.get(f"/api/v1/traces/{failed_trace}").json()["spans"][0]["attributes"][
            "flowhost.run_id"
        ]
        by_run = c.get("/api/v1/traces", params={"run_id": run_id}).json()
        assert [t["trace_id"] for t in by_run["traces"]] == [failed_trace]

        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert c.get("/api/v1/traces", params={"since": future}).json()["total"] == 0
        assert c.get("/api/v1/traces", params={"until": "2000-01-01T00:00:00"}).json()["total"] == 0
        assert c.get("/api/v1/traces", params={"status": "nope"}).status_code == 400
        assert c.get("/api/v1/traces", params={"limit": 0}).status_code == 400


def test_unknown_and_malformed_trace_ids(examples_server: Any) -> None:
    with client(examples_server) as c:
        assert c.get(f"/api/v1/traces/{uuid.uuid4().hex}").status_code == 404
        bad = c.get("/api/v1/traces/not-a-trace-id")
        assert bad.status_code == 400
        assert "32 hex" in bad.text


def test_a_time_bound_past_the_utc_range_is_a_400(examples_server: Any) -> None:
    with httpx.Client(base_url=examples_server.url, headers=examples_server.headers) as c:
        for query in ("since=9999-12-31T23:59:59-12:00", "until=0001-01-01T00:00:00%2B12:00"):
            r = c.get(f"/api/v1/traces?{query}")
            assert r.status_code == 400, r.text
            assert r.json()["field"] == query.split("=")[0]


def test_the_trace_api_needs_the_token_and_is_documented(examples_server: Any) -> None:
    assert httpx.get(f"{examples_server.url}/api/v1/traces").status_code == 401
    bad = httpx.get(f"{examples_server.url}/api/v1/traces", headers={"Authorization": "Bearer x"})
    assert bad.status_code == 401
    paths = httpx.get(f"{examples_server.url}/openapi.json").json()["paths"]
    assert "get" in paths["/api/v1/traces"]
    assert "get" in paths["/api/v1/traces/{trace_id}"]


def test_runs_of_inline_nodes_are_traced_alike(examples_server: Any) -> None:
    """After its quick trial runs in the thread pool, echo's node runs inline on the request's
    task (engine/executor.py): its runs' traces stay the same tree."""

    def shape(trace: dict[str, Any]) -> list[Any]:
        (root,) = trace["spans"]
        (node,) = root["children"]
        return [
            (span["name"], span["span_type"], span["status"], span["inputs"], span["output"])
            for span in (root, node)
        ]

    with client(examples_server) as c:
        ids = []
        for _ in range(40):  # twice InlinePolicy.TRIAL_RUNS
            resp = c.post("/apps/echo", json={"question": "hi"})
            assert resp.json() == {"answer": "echo: hi"}
            ids.append(resp.headers["X-Trace-Id"])
        first, last = (c.get(f"/api/v1/traces/{t}").json() for t in (ids[0], ids[-1]))
    assert shape(last) == shape(first)
    assert shape(last)[1] == (
        "echo",
        "python",
        "completed",
        {"question": "hi", "chat_history": []},
        "echo: hi",
    )


def test_an_incoming_traceparent_is_continued(examples_server: Any) -> None:
    parent_trace, parent_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    headers = {**AUTH, "traceparent": f"00-{parent_trace}-{parent_span}-01"}
    resp = httpx.post(f"{examples_server.url}/apps/echo", json={"question": "hi"}, headers=headers)
    assert resp.headers["X-Trace-Id"] == parent_trace
    with client(examples_server) as c:
        (root,) = c.get(f"/api/v1/traces/{parent_trace}").json()["spans"]
    assert root["parent_span_id"] == parent_span
    assert root["name"] == "echo"
    garbage = {**AUTH, "traceparent": "00-not-a-trace-01"}
    fresh = httpx.post(f"{examples_server.url}/apps/echo", json={"question": "hi"}, headers=garbage)
    assert HEX32.match(fresh.headers["X-Trace-Id"])
    assert fresh.headers["X-Trace-Id"] != parent_trace


def test_tracing_can_be_turned_off(
    server_factory: Callable[..., Any], chat_llm_env: dict[str, str]
) -> None:
    server = server_factory(
        EXAMPLES,
        "--disable-tracing",
        token="secret",
        env=chat_llm_env,
    )
    with client(server) as c:
        resp = c.post("/apps/echo/run", json={"inputs": {"question": "hi"}, "stream": False})
        assert "X-Trace-Id" not in resp.headers
        assert resp.json()["flow_run_info"]["otel_trace_id"] == ""
        listed = c.get("/api/v1/traces")
        assert listed.status_code == 503
        assert "disabled" in listed.text


def test_deleting_a_session_deletes_its_traces(examples_server: Any, llm: FakeLLM) -> None:
    with client(examples_server) as c:
        kept = chat(c, "keep me").headers["Chat-Session-Id"]
        session = chat(c, "forget me").headers["Chat-Session-Id"]
        chat(c, "and this", session)
        assert c.get("/api/v1/traces", params={"session_id": session}).json()["total"] == 2
        assert c.delete(f"/api/v1/history/sessions/{session}").status_code == 204
        assert c.get("/api/v1/traces", params={"session_id": session}).json()["total"] == 0
        assert c.get("/api/v1/traces", params={"session_id": kept}).json()["total"] == 1
