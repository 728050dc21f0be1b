"""Complete mode (seed 000 `POST /run`): run events -> exact payloads, without HTTP."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flowhost.engine.events import (
    ErrorInfo,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeSkipped,
    NodeStarted,
    OutputDelta,
    OutputReady,
    RunEvent,
    RunFailed,
    RunFinished,
    RunStarted,
)
from flowhost.flows.loader import Flow, load_flow
from flowhost.wire.complete import adapter
from flowhost.wire.complete.adapter import ResponseConfig
from flowhost.wire.sse import dumps, sse

pytestmark = pytest.mark.anyio

DESCRIBED = Path(__file__).resolve().parents[1] / "flows_fixtures" / "served" / "described"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
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


def ts(iso: str) -> float:
    """A timestamp from one of the seed's ISO 8601 strings."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def seed_flow(tmp_path_factory: pytest.TempPathFactory) -> Flow:
    """The one-node flow behind seed 000's NodeUpdated samples (node `custom_python`)."""
    folder = tmp_path_factory.mktemp("seed")
    (folder / "flow.dag.yaml").write_text(
        "inputs: {text: {type: string}}\n"
        "outputs: {python_output: {reference: '${custom_python.output.text}'}}\n"
        "nodes:\n- {name: custom_python, type: python, source: {type: code, path: p.py},"
        " inputs: {text: '${inputs.text}'}}\n"
    )
    (folder / "p.py").write_text(
        "def p(text: str) -> dict:\n    return {'text': 'echo:' + text, 'input_length': 2}\n"
    )
    return load_flow(folder)


@pytest.fixture(scope="module")
def described() -> Flow:
    return load_flow(DESCRIBED)


def sse_lines(flow: Flow, events: list[RunEvent], cfg: ResponseConfig | None = None) -> list[str]:
    tr = adapter.translate(flow, cfg or ResponseConfig())
    out = []
    for ev in events:
        payload = tr(ev)
        if payload is not None:
            out.append(sse(dumps(payload, compact=False)).decode())
    return out


async def stream_text(flow: Flow, events: list[RunEvent], cfg: ResponseConfig) -> str:
    async def source() -> Any:
        for ev in events:
            yield ev

    return b"".join([c async for c in adapter.stream(source(), flow, cfg)]).decode()


# --- golden: seed 000's sample payloads, verbatim -------------------------------------------


def test_run_started_matches_the_seed(seed_flow: Flow) -> None:
    run = "fb745e15-3b3b-4a10-9e0d-0bea08d47411"
    [line] = sse_lines(seed_flow, [RunStarted(run, "seed", ts("2025-06-12T08:15:07.223611Z"))])
    assert line == (
        'data: {"event": "RunStarted", "run_id": "fb745e15-3b3b-4a10-9e0d-0bea08d47411", '
        '"timestamp": "2025-06-12T08:15:07.223611Z", "flow_run_info": {"run_id": '
        '"fb745e15-3b3b-4a10-9e0d-0bea08d47411", "status": "Running", "error": null, '
        '"otel_trace_id": ""}}\n\n'
    )


def test_node_updated_and_run_terminated_match_the_seed(seed_flow: Flow) -> None:
    run = "8f92b1a6-4d69-422a-a080-50713e488b56"
    zero_trace = "0x00000000000000000000000000000000"
    output = {"text": "echo:hello", "input_length": 2}
    events: list[RunEvent] = [
        RunStarted(run, "seed", ts("2025-04-25T08:57:15.208000Z"), trace_id=zero_trace),
        NodeStarted(run, "custom_python", "python", ts("2025-04-25T08:57:15.208601Z")),
        NodeFinished(
            run, "custom_python", "python", output, 0.001246, ts("2025-04-25T08:57:15.209621Z")
        ),
        RunFinished(
            run, {"python_output": "echo:hello"}, (), 0.004, ts("2025-04-25T08:57:15.212791Z")
        ),
    ]
    lines = sse_lines(seed_flow, events, ResponseConfig(include_node_output=True))
    assert lines[1:] == [
        'data: {"event": "NodeUpdated", "run_id": "8f92b1a6-4d69-422a-a080-50713e488b56", '
        '"timestamp": "2025-04-25T08:57:15.208601Z", "node_run_infos": [{"node_name": '
        '"custom_python", "node": "custom_python", "status": "Running", "error": null, '
        '"duration": 0.0, "description": null, "display_name": null, "output": null}]}\n\n',
        'data: {"event": "NodeUpdated", "run_id": "8f92b1a6-4d69-422a-a080-50713e488b56", '
        '"timestamp": "2025-04-25T08:57:15.209621Z", "node_run_infos": [{"node_name": '
        '"custom_python", "node": "custom_python", "status": "Completed", "error": null, '
        '"duration": 0.001246, "description": null, "display_name": null, "output": '
        '{"text": "echo:hello", "input_length": 2}}]}\n\n',
        'data: {"event": "RunTerminated", "run_id": "8f92b1a6-4d69-422a-a080-50713e488b56", '
        '"timestamp": "2025-04-25T08:57:15.212791Z", "flow_run_info": {"run_id": '
        '"8f92b1a6-4d69-422a-a080-50713e488b56", "status": "Completed", "error": null, '
        '"otel_trace_id": "0x00000000000000000000000000000000"}}\n\n',
    ]


def test_run_output_matches_the_seed(seed_flow: Flow) -> None:
    llm = "4c185c72-1bb0-4beb-a288-f7a73e37fc3b_llm_3ce063ad-bc9b-417d-9e68-08ce92c3db1b"
    py = "4c185c72-1bb0-4beb-a288-f7a73e37fc3b_python_oHG7_1c9fb0ac-0f45-4dbc-bf97-8e4175fd991c"
    events: list[RunEvent] = [
        OutputDelta(llm, "answer", "What can", ts("2025-04-30T11:55:24.745130Z")),
        OutputDelta(llm, "answer", " I help you with?", ts("2025-04-30T11:55:24.829133Z")),
        OutputDelta(llm, "answer", "", ts("2025-04-30T11:55:24.950055Z")),
        OutputReady(
            llm, "answer", "What can I help you with?", True, ts("2025-04-30T11:55:24.954983Z")
        ),
        OutputReady(
            py,
            "python_output",
            "Hello: Hello! What can I help you with?",
            False,
            ts("2025-04-30T11:55:24.957091Z"),
        ),
    ]
    assert "".join(sse_lines(seed_flow, events)) == (
        f'data: {{"event": "RunOutput", "run_id": "{llm}", "timestamp": '
        '"2025-04-30T11:55:24.745130Z", "outputs": {"answer": "What can"}, "output_metadata": '
        '{"answer": {"is_stream": true, "status": "Streaming"}}}\n\n'
        f'data: {{"event": "RunOutput", "run_id": "{llm}", "timestamp": '
        '"2025-04-30T11:55:24.829133Z", "outputs": {"answer": " I help you with?"}, '
        '"output_metadata": {"answer": {"is_stream": true, "status": "Streaming"}}}\n\n'
        f'data: {{"event": "RunOutput", "run_id": "{llm}", "timestamp": '
        '"2025-04-30T11:55:24.950055Z", "outputs": {"answer": ""}, "output_metadata": '
        '{"answer": {"is_stream": true, "status": "Streaming"}}}\n\n'
        f'data: {{"event": "RunOutput", "run_id": "{llm}", "timestamp": '
        '"2025-04-30T11:55:24.954983Z", "outputs": {}, "output_metadata": {"answer": '
        '{"is_stream": true, "status": "Finished"}}}\n\n'
        f'data: {{"event": "RunOutput", "run_id": "{py}", "timestamp": '
        '"2025-04-30T11:55:24.957091Z", "outputs": {"python_output": "Hello: Hello! What can I '
        'help you with?"}, "output_metadata": {"python_output": {"is_stream": false, "status": '
        '"Finished"}}}\n\n'
    )


# --- every field, every event ----------------------------------------------------------------

RUN = "11111111-2222-3333-4444-555555555555"
T = 1749716107.223611


def described_run() -> list[RunEvent]:
    return [
        RunStarted(RUN, "described", T, trace_id="abc123"),
        NodeStarted(RUN, "upper", "python", T),
        NodeStarted(RUN, "measure", "python", T),
        NodeDelta(RUN, "upper", "HI", T),  # not part of complete mode
        NodeFinished(RUN, "upper", "python", "HI THERE", 0.0012345678, T),
        OutputReady(RUN, "answer", "HI THERE", False, T),
        NodeFinished(RUN, "measure", "python", {"length": 8, "words": ["hi", "there"]}, 0.5, T),
        OutputReady(RUN, "length", 8, False, T),
        RunFinished(RUN, {"answer": "HI THERE", "length": 8}, (), 0.6, T),
    ]


def payloads(flow: Flow, events: list[RunEvent], cfg: ResponseConfig) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix("data: ")) for line in sse_lines(flow, events, cfg)]


def test_every_payload_has_the_seeds_fields(described: Flow) -> None:
    out = payloads(described, described_run(), ResponseConfig())
    assert [p["event"] for p in out] == [
        "RunStarted",
        "NodeUpdated",
        "NodeUpdated",
        "NodeUpdated",
        "RunOutput",
        "NodeUpdated",
        "RunOutput",
        "RunTerminated",
    ]
    for p in out:
        assert p["run_id"] == RUN
        assert ISO_Z.match(p["timestamp"]), p["timestamp"]
        assert p["timestamp"] == "2025-06-12T08:15:07.223611Z"
    start, end = out[0], out[-1]
    assert list(start) == ["event", "run_id", "timestamp", "flow_run_info"]
    assert start["flow_run_info"] == {
        "run_id": RUN,
        "status": "Running",
        "error": None,
        "otel_trace_id": "abc123",
    }
    assert end["flow_run_info"] == {
        "run_id": RUN,
        "status": "Completed",
        "error": None,
        "otel_trace_id": "abc123",
    }
    for p in out:
        if p["event"] == "NodeUpdated":
            assert list(p) == ["event", "run_id", "timestamp", "node_run_infos"]
            [info] = p["node_run_infos"]
            assert list(info) == NODE_INFO_KEYS
            assert info["node_name"] == info["node"]
            assert (info["description"], info["display_name"], info["output"]) == (None, None, None)
        if p["event"] == "RunOutput":
            assert list(p) == ["event", "run_id", "timestamp", "outputs", "output_metadata"]
    statuses = [
        (i["node"], i["status"], i["duration"])
        for p in out
        if p["event"] == "NodeUpdated"
        for i in p["node_run_infos"]
    ]
    assert statuses == [
        ("upper", "Running", 0.0),
        ("measure", "Running", 0.0),
        ("upper", "Completed", 0.001235),
        ("measure", "Completed", 0.5),
    ]
    assert out[4]["outputs"] == {"answer": "HI THERE"}
    assert out[4]["output_metadata"] == {"answer": {"is_stream": False, "status": "Finished"}}
    assert out[6]["outputs"] == {"length": 8}


def node_infos(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for p in out if p["event"] == "NodeUpdated" for i in p["node_run_infos"]]


def test_include_node_description_and_display_name(described: Flow) -> None:
    cfg = ResponseConfig(include_node_description=True, include_node_display_name=True)
    infos = node_infos(payloads(described, described_run(), cfg))
    by_node = {(i["node"], i["status"]): i for i in infos}
    for status in ("Running", "Completed"):
        upper = by_node[("upper", status)]
        assert upper["description"] == "Uppercase the question."
        assert upper["display_name"] == "Upper case"
        measure = by_node[("measure", status)]
        assert measure["description"] is None  # the node has none
        assert measure["display_name"] == "measure"  # defaults to the node name
    assert all(i["output"] is None for i in infos)


def test_include_node_output_only_when_completed(described: Flow) -> None:
    infos = node_infos(
        payloads(described, described_run(), ResponseConfig(include_node_output=True))
    )
    assert [(i["node"], i["status"], i["output"]) for i in infos] == [
        ("upper", "Running", None),
        ("measure", "Running", None),
        ("upper", "Completed", "HI THERE"),
        ("measure", "Completed", {"length": 8, "words": ["hi", "there"]}),
    ]
    assert all(i["description"] is None and i["display_name"] is None for i in infos)


def test_exclude_nodes(described: Flow) -> None:
    cfg = ResponseConfig(include_node_output=True, exclude_nodes=frozenset({"measure"}))
    out = payloads(described, described_run(), cfg)
    assert {i["node"] for i in node_infos(out)} == {"upper"}
    # outputs still arrive, whichever node made them
    assert [p["outputs"] for p in out if p["event"] == "RunOutput"] == [
        {"answer": "HI THERE"},
        {"length": 8},
    ]
    assert out[-1]["event"] == "RunTerminated"


def test_failed_and_bypassed_nodes(described: Flow) -> None:
    err = ErrorInfo("NodeFailed", "ValueError: no", node="upper")
    events: list[RunEvent] = [
        RunStarted(RUN, "described", T),
        NodeSkipped(RUN, "measure", "python", T),
        NodeStarted(RUN, "upper", "python", T),
        NodeFailed(RUN, "upper", "python", err, 0.25, T),
        RunFailed(RUN, err, 0.3, T),
    ]
    out = payloads(described, events, ResponseConfig(include_node_output=True))
    infos = node_infos(out)
    assert infos[0] == {
        "node_name": "measure",
        "node": "measure",
        "status": "Bypassed",
        "error": None,
        "duration": 0.0,
        "description": None,
        "display_name": None,
        "output": None,
    }
    assert (infos[2]["status"], infos[2]["duration"], infos[2]["output"]) == ("Failed", 0.25, None)
    assert infos[2]["error"] == {"code": "NodeFailed", "message": "ValueError: no", "node": "upper"}
    assert out[-1]["event"] == "RunTerminated"
    assert out[-1]["flow_run_info"] == {
        "run_id": RUN,
        "status": "Failed",
        "error": {"code": "NodeFailed", "message": "ValueError: no", "node": "upper"},
        "otel_trace_id": "",
    }


async def test_stream_frames_every_payload_as_data_only_sse(described: Flow) -> None:
    text = await stream_text(described, described_run(), ResponseConfig())
    frames = text.split("\n\n")
    assert frames[-1] == ""
    assert len(frames) - 1 == 8
    for frame in frames[:-1]:
        assert frame.startswith('data: {"event": "')
        assert "\n" not in frame  # one data line per event, no `event:` field
    assert text == "".join(sse_lines(described, described_run()))


async def test_collect_is_the_whole_run_in_one_body(described: Flow) -> None:
    async def source() -> Any:
        for ev in described_run():
            yield ev

    body, error = await adapter.collect(
        source(), described, ResponseConfig(include_node_output=True)
    )
    assert error is None
    assert list(body) == ["run_id", "flow_run_info", "outputs", "node_run_infos"]
    assert body["run_id"] == RUN
    assert body["flow_run_info"]["status"] == "Completed"
    assert body["outputs"] == {"answer": "HI THERE", "length": 8}
    assert [(i["node"], i["status"], i["output"]) for i in body["node_run_infos"]] == [
        ("upper", "Completed", "HI THERE"),
        ("measure", "Completed", {"length": 8, "words": ["hi", "there"]}),
    ]


async def test_collect_reports_the_error(described: Flow) -> None:
    err = ErrorInfo("NodeTimeout", "node 'upper' timed out after 1s", node="upper", status=504)
    events: list[RunEvent] = [
        RunStarted(RUN, "described", T),
        NodeStarted(RUN, "upper", "python", T),
        NodeFailed(RUN, "upper", "python", err, 1.0, T),
        RunFailed(RUN, err, 1.0, T),
    ]

    async def source() -> Any:
        for ev in events:
            yield ev

    body, error = await adapter.collect(source(), described, ResponseConfig())
    assert error == err
    assert body["flow_run_info"]["status"] == "Failed"
    assert body["flow_run_info"]["error"] == err.to_dict()
    assert body["outputs"] == {}
    assert [i["status"] for i in body["node_run_infos"]] == ["Failed"]
