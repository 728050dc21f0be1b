"""Complete mode (seed 000, `POST /run`) end to end through a real `flowhost serve`.

``examples_server`` (token "secret", default app echo, chat on the fake LLM) and
``fixtures_server`` (tests/flows_fixtures/served) come from tests/conftest.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NODE_INFO_KEYS = [
    "node_name",
    "node",
    "status",
    "error",
    "duration",
    "description",
    "display_name",
    "output",
]


def run_sse(server: Any, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a complete-mode request; the `data:` payloads of its SSE response."""
    r = requests.post(f"{server.url}{path}", json=body, headers=server.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = r.text.split("\n\n")
    assert frames[-1] == "", "the stream ends with a complete event"
    out = []
    for frame in frames[:-1]:
        assert frame.startswith("data: "), frame
        assert "\n" not in frame, frame  # data-only events: one `data:` line, no `event:`
        out.append(json.loads(frame.removeprefix("data: ")))
    return out


def node_infos(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for e in events if e["event"] == "NodeUpdated" for i in e["node_run_infos"]]


def test_streaming_run_of_the_default_app(examples_server: Any) -> None:
    events = run_sse(examples_server, "/run", {"inputs": {"question": "hello"}})
    assert [e["event"] for e in events] == [
        "RunStarted",
        "NodeUpdated",
        "NodeUpdated",
        "RunOutput",
        "RunTerminated",
    ]
    run_id = events[0]["run_id"]
    assert UUID.match(run_id)
    for e in events:
        assert e["run_id"] == run_id
        assert ISO_Z.match(e["timestamp"]), e["timestamp"]
    assert events[0]["flow_run_info"] == {
        "run_id": run_id,
        "status": "Running",
        "error": None,
        "otel_trace_id": events[0]["flow_run_info"]["otel_trace_id"],
    }
    assert isinstance(events[0]["flow_run_info"]["otel_trace_id"], str)
    running, completed = node_infos(events)
    for info in (running, completed):
        assert list(info) == NODE_INFO_KEYS
        assert (info["node_name"], info["node"]) == ("echo", "echo")
        assert (info["description"], info["display_name"], info["output"]) == (None, None, None)
    assert (running["status"], running["duration"], running["error"]) == ("Running", 0.0, None)
    assert completed["status"] == "Completed"
    assert completed["duration"] >= 0
    assert events[3]["outputs"] == {"answer": "echo: hello"}
    assert events[3]["output_metadata"] == {"answer": {"is_stream": False, "status": "Finished"}}
    assert events[4]["flow_run_info"]["status"] == "Completed"
    assert events[4]["flow_run_info"]["error"] is None
    assert (
        events[4]["flow_run_info"]["otel_trace_id"] == events[0]["flow_run_info"]["otel_trace_id"]
    )


def test_stream_false_is_one_json_body(examples_server: Any) -> None:
    r = requests.post(
        f"{examples_server.url}/run",
        json={"inputs": {"question": "hello"}, "stream": False},
        headers=examples_server.headers,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["run_id", "flow_run_info", "outputs", "node_run_infos"]
    assert body["flow_run_info"]["run_id"] == body["run_id"]
    assert body["flow_run_info"]["status"] == "Completed"
    assert body["outputs"] == {"answer": "echo: hello"}
    [info] = body["node_run_infos"]
    assert (info["node"], info["status"]) == ("echo", "Completed")


def test_the_chat_app_streams_run_output_per_chunk(examples_server: Any) -> None:
    question = (
        "Where is the capital of France? [[fake:chunks=The| capital| of| France| is| Paris|.]]"
    )
    events = run_sse(examples_server, "/apps/chat/run", {"inputs": {"question": question}})
    outputs = [e for e in events if e["event"] == "RunOutput"]
    assert [(o["outputs"], o["output_metadata"]["answer"]["status"]) for o in outputs] == [
        ({"answer": "The"}, "Streaming"),
        ({"answer": " capital"}, "Streaming"),
        ({"answer": " of"}, "Streaming"),
        ({"answer": " France"}, "Streaming"),
        ({"answer": " is"}, "Streaming"),
        ({"answer": " Paris"}, "Streaming"),
        ({"answer": "."}, "Streaming"),
        ({}, "Finished"),
    ]
    assert all(o["output_metadata"]["answer"]["is_stream"] is True for o in outputs)
    # the node completes after its stream, before the output is reported finished
    kinds = [(e["event"], e.get("node_run_infos", [{}])[0].get("status")) for e in events]
    assert kinds.index(("NodeUpdated", "Completed")) < len(kinds) - 2
    assert events[-1]["flow_run_info"]["status"] == "Completed"


def test_response_config(fixtures_server: Any) -> None:
    path = "/apps/described/run"
    inputs = {"question": "hi there"}
    plain = node_infos(run_sse(fixtures_server, path, {"inputs": inputs}))
    assert all(
        (i["description"], i["display_name"], i["output"]) == (None, None, None) for i in plain
    )

    full = {
        "include_node_description": True,
        "include_node_display_name": True,
        "include_node_output": True,
    }
    infos = node_infos(run_sse(fixtures_server, path, {"inputs": inputs, "response_config": full}))
    done = {i["node"]: i for i in infos if i["status"] == "Completed"}
    assert done["upper"]["description"] == "Uppercase the question."
    assert done["upper"]["display_name"] == "Upper case"
    assert done["upper"]["output"] == "HI THERE"
    assert done["measure"]["output"] == {"length": 8, "words": ["hi", "there"]}
    assert all(i["output"] is None for i in infos if i["status"] == "Running")

    cfg = {"include_node_output": True, "exclude_nodes": ["measure"]}
    events = run_sse(fixtures_server, path, {"inputs": inputs, "response_config": cfg})
    assert {i["node"] for i in node_infos(events)} == {"upper"}
    outputs = {}
    for e in events:
        if e["event"] == "RunOutput":
            outputs.update(e["outputs"])
    assert outputs == {"answer": "HI THERE", "length": 8}


def test_failing_node_terminates_the_run_as_failed(fixtures_server: Any) -> None:
    events = run_sse(fixtures_server, "/apps/fail/run", {"inputs": {"question": "why"}})
    error = {
        "code": "NodeFailed",
        "message": "ValueError: the answer to 'why' is unknowable",
        "node": "explode",
    }
    failed = [i for i in node_infos(events) if i["status"] == "Failed"]
    assert [(i["node"], i["error"]) for i in failed] == [("explode", error)]
    assert events[-1]["event"] == "RunTerminated"
    assert events[-1]["flow_run_info"]["status"] == "Failed"
    assert events[-1]["flow_run_info"]["error"] == error
    assert not any(e["event"] == "RunOutput" for e in events)


def test_failing_node_with_stream_false(fixtures_server: Any) -> None:
    r = requests.post(
        f"{fixtures_server.url}/apps/fail/run",
        json={"inputs": {"question": "why"}, "stream": False},
        headers=fixtures_server.headers,
    )
    assert r.status_code == 500
    assert "Traceback" not in r.text
    body = r.json()
    assert body["flow_run_info"]["status"] == "Failed"
    assert body["flow_run_info"]["error"]["node"] == "explode"
    assert [(i["node"], i["status"]) for i in body["node_run_infos"]] == [
        ("prepare", "Completed"),
        ("explode", "Failed"),
    ]


def test_node_timeout(fixtures_server: Any) -> None:
    events = run_sse(fixtures_server, "/apps/timeout/run", {"inputs": {"question": "q"}})
    assert events[-1]["flow_run_info"]["error"] == {
        "code": "NodeTimeout",
        "message": "node 'slow' timed out after 0.2s",
        "node": "slow",
    }


def test_bad_complete_mode_bodies(fixtures_server: Any) -> None:
    cases = [
        ({"inputs": "x"}, "inputs"),
        ({"inputs": {}, "stream": "maybe"}, "stream"),
        (
            {"inputs": {"question": "q"}, "response_config": {"exclude_nodes": "x"}},
            "response_config.exclude_nodes",
        ),
        ({"inputs": {}}, "question"),
    ]
    for body, field in cases:
        r = requests.post(
            f"{fixtures_server.url}/apps/described/run", json=body, headers=fixtures_server.headers
        )
        assert r.status_code == 400, (body, r.text)
        assert r.json()["field"] == field


def test_simple_mode_body_sent_to_run_is_told_where_inputs_go(fixtures_server: Any) -> None:
    """A body without ``inputs`` that names a flow input was meant for simple mode: the error
    says where the input goes, not that the input it holds is missing."""
    r = requests.post(
        f"{fixtures_server.url}/apps/described/run",
        json={"question": "q", "stream": False},
        headers=fixtures_server.headers,
    )
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "inputs"
    assert r.json()["detail"] == (
        'complete mode takes the flow inputs under "inputs": send {"inputs": {"question": ...}}, '
        'not "question" at the top level'
    )


def test_null_inputs_and_stream_mean_the_defaults(fixtures_server: Any) -> None:
    """Seed 000: ``inputs`` defaults to None; a null is read as the field left out."""
    url = f"{fixtures_server.url}/apps/described/run"
    r = requests.post(url, json={"inputs": None}, headers=fixtures_server.headers)
    assert r.status_code == 400
    assert r.json()["field"] == "question"  # the flow's required input, not "inputs"
    body = {"inputs": {"question": "q"}, "stream": None}
    r = requests.post(url, json=body, headers=fixtures_server.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")  # stream: true
