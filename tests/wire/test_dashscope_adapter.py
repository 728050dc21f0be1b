"""Golden tests of the Bailian adapter: run events built by hand -> the exact frames and bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flowhost.engine.events import (
    ErrorInfo,
    ModelUsage,
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
from flowhost.wire.dashscope import adapter
from flowhost.wire.dashscope.adapter import Options
from flowhost.wire.dashscope.models import AppError, AppRequest, AppResponse

pytestmark = pytest.mark.anyio

RUN = "run-1"
T = 1715931028.0
SID = "70ac158ae65f4764b9228a52951f3711"
RID = "f66273ce-1a4d-9107-9c8a-da2a0f7267b5"
LLM_USAGE = (ModelUsage("qwen-max", 203, 2),)


def opts(**kw: Any) -> Options:
    base: dict[str, Any] = {
        "session_id": SID,
        "request_id": RID,
        "answer_key": "answer",
        "inputs": {"question": "你是谁?"},
        "display_names": {"chat": "Chat"},
    }
    return Options(**{**base, **kw})


def compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def frame(n: int, data: dict[str, Any]) -> str:
    return f"id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{compact(data)}\n\n"


def thought(**fields: Any) -> dict[str, str]:
    """One thoughts item: ``{"response": "<JSON string>"}`` with the keys in this order."""
    return {"response": compact(fields)}


class Events:
    def __init__(self, *events: RunEvent) -> None:
        self.events = events
        self.closed = False

    async def gen(self) -> AsyncIterator[RunEvent]:
        try:
            for ev in self.events:
                yield ev
        finally:
            self.closed = True


async def render(events: list[RunEvent], o: Options) -> str:
    ev = Events(*events)
    out = b"".join([c async for c in adapter.stream(ev.gen(), o)]).decode()
    assert ev.closed
    return out


def llm_run(*deltas: str) -> list[RunEvent]:
    text = "".join(deltas)
    evs: list[RunEvent] = [RunStarted(RUN, "chat", T), NodeStarted(RUN, "chat", "llm", T)]
    for d in deltas:
        evs += [NodeDelta(RUN, "chat", d, T), OutputDelta(RUN, "answer", d, T)]
    evs += [
        NodeFinished(RUN, "chat", "llm", text, 1.844, T, usage=LLM_USAGE),
        OutputReady(RUN, "answer", text, True, T),
        RunFinished(RUN, {"answer": text}, LLM_USAGE, 1.9, T),
    ]
    return evs


def out(text: str | None, finish: str = "null", **extra: Any) -> dict[str, Any]:
    """An ``output``; ``text`` None: a chunk without the key (has_thoughts, before the end)."""
    o: dict[str, Any] = {"session_id": SID, "finish_reason": finish}
    if text is not None:
        o["text"] = text
    thoughts = extra.pop("thoughts", None)
    if thoughts is not None:
        o["thoughts"] = thoughts
    o["doc_references"] = extra.pop("doc_references", None)
    assert not extra
    return o


NO_USAGE = {"models": None}
FINAL_USAGE = {"models": [{"model_id": "qwen-max", "input_tokens": 203, "output_tokens": 2}]}


async def test_incremental_true_exact_frames() -> None:
    got = await render(llm_run("我是", "来自"), opts(incremental=True))
    assert got == (
        frame(1, {"output": out("我是"), "usage": NO_USAGE, "request_id": RID})
        + frame(2, {"output": out("来自"), "usage": NO_USAGE, "request_id": RID})
        + frame(3, {"output": out("", "stop"), "usage": FINAL_USAGE, "request_id": RID})
    )
    for block in got.split("\n\n")[:-1]:
        AppResponse.model_validate_json(block.split("\n")[3].removeprefix("data:"))


async def test_incremental_false_exact_frames() -> None:
    got = await render(llm_run("我是", "来自"), opts(incremental=False))
    assert got == (
        frame(1, {"output": out("我是"), "usage": NO_USAGE, "request_id": RID})
        + frame(2, {"output": out("我是来自"), "usage": NO_USAGE, "request_id": RID})
        + frame(3, {"output": out("我是来自", "stop"), "usage": FINAL_USAGE, "request_id": RID})
    )


async def test_has_thoughts_incremental_exact_frames() -> None:
    got = await render(llm_run("我是", "来自"), opts(incremental=True, has_thoughts=True))
    start = thought(
        nodeId="Start",
        nodeName="Start",
        nodeType="Start",
        nodeStatus="success",
        nodeExecTime="0ms",
        nodeResult=compact({"question": "你是谁?"}),
    )

    def llm(status: str, result: str, exec_time: str | None = None) -> dict[str, str]:
        fields: dict[str, Any] = {
            "nodeId": "chat",
            "nodeName": "Chat",
            "nodeType": "LLM",
            "nodeStatus": status,
        }
        if exec_time:
            fields["nodeExecTime"] = exec_time
        fields["nodeResult"] = compact({"result": result})
        return thought(**fields)

    end = thought(
        nodeId="End",
        nodeName="End",
        nodeType="End",
        nodeStatus="success",
        nodeExecTime="0ms",
        nodeResult=compact({"result": "我是来自"}),
    )
    # as seed 003's workflow example: the streaming is in the nodes' results (each delta once,
    # incremental); no text until the last chunk, which carries the whole answer
    chunks = [
        out(None, thoughts=[start]),  # RunStarted
        out(None, thoughts=[start, llm("executing", "")]),  # NodeStarted
        out(None, thoughts=[start, llm("executing", "我是")]),  # NodeDelta (OutputDelta: none)
        out(None, thoughts=[start, llm("executing", "来自")]),
        out(None, thoughts=[start, llm("success", "", "1844ms")]),  # NodeFinished
    ]
    expected = "".join(
        # usage so far: the LLM call is counted once its node finished
        frame(i, {"output": o, "usage": FINAL_USAGE if i == 5 else NO_USAGE, "request_id": RID})
        for i, o in enumerate(chunks, start=1)
    ) + frame(
        6,
        {
            "output": out("我是来自", "stop", thoughts=[start, llm("success", "", "1844ms"), end]),
            "usage": FINAL_USAGE,
            "request_id": RID,
        },
    )
    assert got == expected


async def test_has_thoughts_cumulative_node_results() -> None:
    got = await render(llm_run("我是", "来自"), opts(incremental=False, has_thoughts=True))
    results = []
    for block in got.split("\n\n")[:-1]:
        data = json.loads(block.split("\n")[3].removeprefix("data:"))
        for t in data["output"]["thoughts"]:
            t = json.loads(t["response"])
            if t["nodeId"] == "chat":
                results.append((t["nodeStatus"], json.loads(t["nodeResult"])["result"]))
    assert results == [
        ("executing", ""),
        ("executing", "我是"),
        ("executing", "我是来自"),
        ("success", "我是来自"),
        ("success", "我是来自"),
    ]
    texts = [
        json.loads(b.split("\n")[3].removeprefix("data:"))["output"].get("text")
        for b in got.split("\n\n")[:-1]
    ]
    assert texts == [None] * 5 + ["我是来自"]  # cumulative: the same, the answer at the end


async def test_structured_python_node_and_skipped_branch() -> None:
    evs: list[RunEvent] = [
        RunStarted(RUN, "branch", T),
        NodeStarted(RUN, "classify", "python", T),
        NodeFinished(RUN, "classify", "python", {"is_question": True}, 0.0014, T),
        NodeSkipped(RUN, "answer_statement", "python", T),
        NodeStarted(RUN, "join", "python", T),
        NodeFinished(RUN, "join", "python", "You asked", 0.002, T),
        OutputReady(RUN, "answer", "You asked", False, T),
        RunFinished(RUN, {"answer": "You asked"}, (), 0.01, T),
    ]
    got = await render(evs, opts(incremental=True, has_thoughts=True))
    blocks = [json.loads(b.split("\n")[3].removeprefix("data:")) for b in got.split("\n\n")[:-1]]
    # RunStarted, 2 x NodeStarted, 2 x NodeFinished, the end (with the answer): the skip and
    # the output (already in join's result) send nothing
    assert len(blocks) == 6
    assert [b["output"].get("text") for b in blocks] == [None] * 5 + ["You asked"]
    final = [json.loads(t["response"]) for t in blocks[-1]["output"]["thoughts"]]
    assert [t["nodeId"] for t in final] == ["Start", "classify", "join", "End"]
    assert final[1] == {
        "nodeId": "classify",
        "nodeName": "classify",
        "nodeType": "Script",
        "nodeStatus": "success",
        "nodeExecTime": "1ms",
        "nodeResult": '{"is_question":true}',
    }
    assert json.loads(final[2]["nodeResult"]) == {"result": "You asked"}


async def test_without_thoughts_only_text_makes_chunks() -> None:
    evs: list[RunEvent] = [
        RunStarted(RUN, "echo", T),
        NodeStarted(RUN, "echo", "python", T),
        NodeFinished(RUN, "echo", "python", "echo: hi", 0.001, T),
        OutputReady(RUN, "answer", "echo: hi", False, T),
        RunFinished(RUN, {"answer": "echo: hi"}, (), 0.01, T),
    ]
    got = await render(evs, opts(incremental=True))
    assert got == frame(
        1, {"output": out("echo: hi"), "usage": NO_USAGE, "request_id": RID}
    ) + frame(2, {"output": out("", "stop"), "usage": NO_USAGE, "request_id": RID})
    got = await render(evs, opts(incremental=False))
    assert got.count("echo: hi") == 2  # cumulative: the text so far, again at the end


async def test_failure_mid_stream_exact_frames() -> None:
    err = ErrorInfo("LLMError", "upstream said 429", node="chat", status=502)
    evs = [*llm_run("我是")[:4], RunFailed(RUN, err, 0.2, T), RunStarted(RUN, "never", T)]
    got = await render(evs, opts(incremental=True))
    assert got == (
        frame(1, {"output": out("我是"), "usage": NO_USAGE, "request_id": RID})
        + "id:2\nevent:error\nstatus:502\n:HTTP_STATUS/502\n"
        + f'data:{{"code":"LLMError","message":"upstream said 429","request_id":"{RID}"}}\n\n'
    )
    AppError.model_validate_json(got.split("\n")[-3].removeprefix("data:"))


async def test_failed_node_in_thoughts() -> None:
    err = ErrorInfo("NodeFailed", "bad input", node="check", status=500)
    evs: list[RunEvent] = [
        RunStarted(RUN, "x", T),
        NodeStarted(RUN, "check", "python", T),
        NodeFailed(RUN, "check", "python", err, 0.012, T),
        RunFailed(RUN, err, 0.02, T),
    ]
    got = await render(evs, opts(has_thoughts=True))
    *results, error = got.split("\n\n")[:-1]
    last = json.loads(results[-1].split("\n")[3].removeprefix("data:"))
    check = json.loads(last["output"]["thoughts"][1]["response"])
    assert check == {
        "nodeId": "check",
        "nodeName": "check",
        "nodeType": "Script",
        "nodeStatus": "failed",
        "nodeExecTime": "12ms",
        "nodeResult": '{"result":"bad input"}',
    }
    assert error.split("\n")[:4] == ["id:4", "event:error", "status:500", ":HTTP_STATUS/500"]


async def test_error_status_below_400_is_sent_as_500() -> None:
    err = ErrorInfo("Odd", "odd", status=200)
    got = await render([RunFailed(RUN, err, 0, T)], opts())
    assert got.startswith("id:1\nevent:error\nstatus:500\n:HTTP_STATUS/500\n")


async def test_usage_summed_per_model() -> None:
    a1, b, a2 = (
        ModelUsage("model-a", 2, 3),
        ModelUsage("model-b", 2, 3),
        ModelUsage("model-a", 7, 8),
    )
    evs: list[RunEvent] = [
        RunStarted(RUN, "usage", T),
        NodeStarted(RUN, "first", "llm", T),
        NodeStarted(RUN, "second", "llm", T),
        NodeFinished(RUN, "first", "llm", "x", 0.1, T, usage=(a1,)),
        NodeFinished(RUN, "second", "llm", "y", 0.1, T, usage=(b,)),
        NodeStarted(RUN, "third", "llm", T),
        OutputDelta(RUN, "answer", "z", T),
        NodeFinished(RUN, "third", "llm", "z", 0.1, T, usage=(a2,)),
        RunFinished(
            RUN, {"answer": "z"}, (ModelUsage("model-a", 9, 11), ModelUsage("model-b", 2, 3)), 1, T
        ),
    ]
    got = await render(evs, opts(incremental=True))
    blocks = [json.loads(b.split("\n")[3].removeprefix("data:")) for b in got.split("\n\n")[:-1]]
    # the text chunk, mid-run: usage so far (the two finished calls)
    assert blocks[0]["usage"] == {
        "models": [
            {"model_id": "model-a", "input_tokens": 2, "output_tokens": 3},
            {"model_id": "model-b", "input_tokens": 2, "output_tokens": 3},
        ]
    }
    assert blocks[-1]["usage"] == {
        "models": [
            {"model_id": "model-a", "input_tokens": 9, "output_tokens": 11},
            {"model_id": "model-b", "input_tokens": 2, "output_tokens": 3},
        ]
    }


async def test_collect_exact_body() -> None:
    ev = Events(*llm_run("我是", "来自"), RunStarted(RUN, "never", T))
    body, err = await adapter.collect(ev.gen(), opts(incremental=True))
    assert err is None
    assert ev.closed
    assert body == {
        "output": {
            "session_id": SID,
            "finish_reason": "stop",
            "text": "我是来自",
            "doc_references": None,
            "thoughts": None,
        },
        "usage": FINAL_USAGE,
        "request_id": RID,
    }
    AppResponse.model_validate(body)
    assert json.dumps(body["output"]["text"], ensure_ascii=False) == '"我是来自"'


async def test_collect_with_thoughts_lists_final_states() -> None:
    body, _ = await adapter.collect(Events(*llm_run("我是", "来自")).gen(), opts(has_thoughts=True))
    assert body is not None
    thoughts = [json.loads(t["response"]) for t in body["output"]["thoughts"]]
    assert [(t["nodeId"], t["nodeStatus"]) for t in thoughts] == [
        ("Start", "success"),
        ("chat", "success"),
        ("End", "success"),
    ]
    assert json.loads(thoughts[1]["nodeResult"]) == {"result": "我是来自"}


async def test_collect_failure() -> None:
    err = ErrorInfo("NodeFailed", "boom", node="n")
    body, got = await adapter.collect(
        Events(RunStarted(RUN, "x", T), RunFailed(RUN, err, 1, T)).gen(), opts()
    )
    assert (body, got) == (None, err)
    body, got = await adapter.collect(Events(RunStarted(RUN, "x", T)).gen(), opts())
    assert body is None
    assert got is not None
    assert got.code == "RunCanceled"


async def test_doc_references_from_retrieval_nodes() -> None:
    chunks = [
        {
            "index_id": "1",
            "title": "手机",
            "doc_id": "d1",
            "doc_name": "phones.pdf",
            "text": "Z9",
            "score": 0.9,
        },
        "not a chunk",
    ]
    evs: list[RunEvent] = [
        RunStarted(RUN, "rag", T),
        NodeStarted(RUN, "search", "knowledge_retrieval", T),
        NodeFinished(RUN, "search", "knowledge_retrieval", chunks, 0.05, T),
        OutputReady(RUN, "answer", "Z9", False, T),
        RunFinished(RUN, {"answer": "Z9"}, (), 0.1, T),
    ]
    body, _ = await adapter.collect(Events(*evs).gen(), opts())
    assert body is not None
    assert body["output"]["doc_references"] == [
        {
            "index_id": "1",
            "title": "手机",
            "doc_id": "d1",
            "doc_name": "phones.pdf",
            "text": "Z9",
            "images": [],
            "pipeline_id": "1",
            "score": 0.9,
        }
    ]


def test_error_body() -> None:
    assert adapter.error_body("InvalidApiKey", "Invalid API-key provided.", RID) == {
        "code": "InvalidApiKey",
        "message": "Invalid API-key provided.",
        "request_id": RID,
    }


def test_request_model_takes_every_sdk_field() -> None:
    """CLIENTS.md 1.4's captured body (every field set) and 1.20.14's ``workspace: null``."""
    body = {
        "model": "",
        "parameters": {
            "flow_stream_mode": "agent_format",
            "temperature": 0.5,
            "top_p": 0.8,
            "top_k": 5,
            "seed": 42,
            "has_thoughts": True,
            "rag_options": {"pipeline_ids": ["p1"]},
            "workspace": None,
            "incremental_output": None,
        },
        "input": {
            "prompt": "hi",
            "session_id": "sss",
            "doc_reference_type": "simple",
            "doc_tag_codes": ["t1"],
            "memory_id": "mem1",
            "biz_params": {"city": "杭州"},
            "image_list": ["http://x/y.png"],
            "file_list": ["http://x/f.pdf"],
        },
    }
    req = AppRequest.model_validate(body)
    assert req.parameters.has_thoughts is True
    assert req.parameters.incremental_output is None
    assert req.parameters.rag_options is not None
    assert req.parameters.rag_options.pipeline_ids == ["p1"]
    assert req.input.biz_params == {"city": "杭州"}
    empty = AppRequest.model_validate({"input": {"prompt": "x"}, "parameters": {"rag_options": {}}})
    assert empty.parameters.rag_options is not None
    assert empty.parameters.rag_options.pipeline_ids is None


async def test_tokens_are_scrubbed_from_thoughts() -> None:
    token = 'tok-"quoted"-秘密'
    secrets = adapter.secrets_of(
        {"weather": {"user_token": token, "n": 5}, "x": {"k": ["abc", "longer-one"]}}
    )
    assert secrets == (token, "longer-one")  # longest first; short values and numbers ignored
    header = f"Bearer {token}"
    evs: list[RunEvent] = [
        RunStarted(RUN, "plugin", T),
        NodeStarted(RUN, "authorize", "python", T),
        NodeFinished(RUN, "authorize", "python", header, 0.001, T),
        NodeStarted(RUN, "call", "python", T),
        NodeFinished(RUN, "call", "python", {"auth": header, "ok": True}, 0.001, T),
        OutputReady(RUN, "answer", "done", False, T),
        RunFinished(RUN, {"answer": "done"}, (), 0.01, T),
    ]
    got = await render(evs, opts(has_thoughts=True, secrets=secrets))
    assert "tok-" not in got
    last = json.loads(got.split("\n\n")[-2].split("\n")[3].removeprefix("data:"))
    results = {
        json.loads(t["response"])["nodeId"]: json.loads(json.loads(t["response"])["nodeResult"])
        for t in last["output"]["thoughts"]
    }
    assert results["authorize"] == {"result": "Bearer [redacted]"}
    assert results["call"] == {"auth": "Bearer [redacted]", "ok": True}
    body, _ = await adapter.collect(Events(*evs).gen(), opts(has_thoughts=True, secrets=secrets))
    assert "tok-" not in json.dumps(body, ensure_ascii=False)


@pytest.mark.parametrize("incremental", [True, False])
async def test_a_token_streamed_in_pieces_never_shows_in_thoughts(incremental: bool) -> None:
    token = "sk-live-0123456789"
    deltas = ["use ", "sk-li", "ve-01234", "56789", " then sk-l", "ater text"]
    evs = llm_run(*deltas)
    got = await render(evs, opts(has_thoughts=True, secrets=(token,), incremental=incremental))
    results = []
    for frame in got.split("\n\n"):
        data = next((ln[5:] for ln in frame.split("\n") if ln.startswith("data:")), None)
        if data is None:
            continue
        for t in json.loads(data)["output"].get("thoughts") or []:
            node = json.loads(t["response"])
            if node["nodeId"] == "chat":
                results.append(json.loads(node["nodeResult"])["result"])
    seen = "".join(results) if incremental else results[-1]
    assert seen == "use [redacted] then sk-later text"  # a token's beginning alone is let out
    for piece in ("sk-li", "sk-live-0", "0123456789"):
        assert all(piece not in r for r in results), piece
