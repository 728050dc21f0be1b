"""The Bailian application API (``POST /api/v1/apps/{app_id}/completion``) with the real clients.

The dashscope SDK 2.0.2 (``Application.call``) against a real ``flowhost serve``; dashscope
1.20.x's wire behaviour (CLIENTS.md 1.5: ``incremental_output: false`` sent verbatim, cumulative
text expected) is replayed with raw ``requests``, as are the seed's curl examples.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import uuid
from http import HTTPStatus
from typing import Any

import pytest
import requests
from dashscope import Application

from flowhost.testing import FakeLLM

SECRET = "secret"
PIECES = ["我是", "来自", "阿里", "云"]
FULL = "".join(PIECES)
SAY = "[[fake:chunks=" + "|".join(PIECES) + "]]"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
# dashscope 1.20.14's streaming request, as observed (CLIENTS.md 1.3-1.5)
OLD_SDK_HEADERS = {
    "Authorization": f"Bearer {SECRET}",
    "Accept": "text/event-stream",
    "Content-Type": "application/json; charset=utf-8",
    "X-DashScope-SSE": "enable",
    "X-Accel-Buffering": "no",
    "user-agent": "dashscope/1.20.14; python/3.11.7; platform/Linux; processor/x86_64",
}


def call(server: Any, app_id: str, **kw: Any) -> Any:
    """``Application.call`` pointed at the server (per-call ``base_address``, CLIENTS.md 1.1)."""
    kw.setdefault("api_key", SECRET)
    return Application.call(app_id=app_id, base_address=f"{server.url}/api/v1", **kw)


def stream(server: Any, app_id: str, **kw: Any) -> list[Any]:
    return list(call(server, app_id, stream=True, **kw))


def url(server: Any, app_id: str) -> str:
    return f"{server.url}/api/v1/apps/{app_id}/completion"


def raw_events(resp: requests.Response) -> list[list[str]]:
    """The SSE body as events, each a list of its lines (the framing checked exactly)."""
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers.get("transfer-encoding") == "chunked"
    body = resp.content.decode()
    assert body.endswith("\n\n")
    return [block.split("\n") for block in body[:-2].split("\n\n")]


def result_data(events: list[list[str]]) -> list[dict[str, Any]]:
    """Check Bailian's framing of every result event and return the parsed data lines."""
    out = []
    for n, ev in enumerate(events, start=1):
        assert ev[:3] == [f"id:{n}", "event:result", ":HTTP_STATUS/200"], ev
        assert len(ev) == 4
        assert ev[3].startswith("data:{")
        out.append(json.loads(ev[3][5:]))
    return out


def post_stream(server: Any, app_id: str, body: dict[str, Any]) -> list[list[str]]:
    """POST ``body`` the way dashscope 1.20.14 streams (its headers, UTF-8 JSON)."""
    raw = json.dumps(body, ensure_ascii=False).encode()
    with requests.post(url(server, app_id), data=raw, headers=OLD_SDK_HEADERS, stream=True) as r:
        return raw_events(r)


@pytest.fixture
def srv(examples_server: Any, llm: FakeLLM) -> Any:
    """The examples (echo, chat, branch), with the fake LLM reset."""
    return examples_server


@pytest.fixture
def proto(protocols_server: Any, llm: FakeLLM) -> Any:
    """tests/flows_fixtures/protocols (plugin, usage, city, plain, explode)."""
    return protocols_server


# --------------------------------------------------------------------------- single turn


def test_single_turn_sdk(srv: Any, llm: FakeLLM) -> None:
    rsp = call(srv, "chat", prompt=f"你是谁? {SAY}")
    assert rsp.status_code == HTTPStatus.OK
    assert rsp.output.text == FULL
    assert rsp.output.finish_reason == "stop"
    assert HEX32.match(rsp.output.session_id)
    assert rsp.output.thoughts is None
    assert rsp.output.doc_references is None
    uuid.UUID(rsp.request_id)
    [model] = rsp.usage.models
    assert model.model_id == "fake-chat"
    assert model.output_tokens == len(PIECES)
    assert model.input_tokens > 0
    # the prompt reached the LLM as the last user message
    assert llm.requests[-1].body["messages"][-1] == {"role": "user", "content": f"你是谁? {SAY}"}


def test_single_turn_curl_shape(srv: Any) -> None:
    """The seed's curl: ``parameters: {}`` and ``debug: {}``; the exact body keys and JSON type."""
    body = {"input": {"prompt": "你是谁?"}, "parameters": {}, "debug": {}}
    r = requests.post(url(srv, "echo"), json=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    data = r.json()
    assert set(data) == {"output", "usage", "request_id"}
    assert data["request_id"] == r.headers["x-request-id"]
    assert data["output"]["text"] == "echo: 你是谁?"
    assert data["output"]["finish_reason"] == "stop"
    assert HEX32.match(data["output"]["session_id"])
    assert data["usage"] == {"models": None}  # no LLM ran
    # Chinese is sent as UTF-8, not \\u-escaped
    assert "你是谁" in r.content.decode("utf-8")


def test_client_request_id_is_used(srv: Any) -> None:
    rid = str(uuid.uuid4())
    r = requests.post(
        url(srv, "echo"),
        json={"input": {"prompt": "hi"}},
        headers={"Authorization": f"Bearer {SECRET}", "X-Request-Id": rid},
    )
    assert r.json()["request_id"] == rid
    assert r.headers["x-request-id"] == rid


def test_non_chat_flow_prompt_fills_its_string_input(proto: Any) -> None:
    rsp = call(proto, "plain", prompt="熊猫")
    assert rsp.status_code == 200, rsp.message
    assert rsp.output.text == "about 熊猫"


# --------------------------------------------------------------------------- multi-turn


def test_multi_turn_by_session_id(srv: Any) -> None:
    first = call(srv, "echo", prompt="我想去新疆")
    assert first.output.text == "echo: 我想去新疆"
    sid = first.output.session_id
    second = call(srv, "echo", prompt="那边有什么美食?", session_id=sid)
    assert second.status_code == 200, second.message
    assert second.output.text == "echo: 那边有什么美食? (turn 2)"
    assert second.output.session_id == sid
    third = stream(srv, "echo", prompt="谢谢", session_id=sid, incremental_output=True)
    assert "".join(c.output.text for c in third) == "echo: 谢谢 (turn 3)"
    assert {c.output.session_id for c in third} == {sid}
    # a fresh call without session_id starts a new conversation
    other = call(srv, "echo", prompt="你好")
    assert other.output.text == "echo: 你好"
    assert other.output.session_id != sid


def test_multi_turn_history_reaches_the_llm(srv: Any, llm: FakeLLM) -> None:
    first = call(srv, "chat", prompt="[[fake:reply=乌鲁木齐很大]] 我想去新疆")
    second = call(srv, "chat", prompt="那边有什么美食?", session_id=first.output.session_id)
    assert second.status_code == 200, second.message
    assert second.output.text == "echo: 那边有什么美食?"
    messages = llm.requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "[[fake:reply=乌鲁木齐很大]] 我想去新疆"
    assert messages[2]["content"] == "乌鲁木齐很大"
    assert messages[3]["content"] == "那边有什么美食?"


def test_session_is_shared_with_chat_session_id(srv: Any) -> None:
    """``input.session_id`` and the ``Chat-Session-Id`` header name the same session store."""
    sid = call(srv, "echo", prompt="one").output.session_id
    r = requests.post(
        f"{srv.url}/apps/echo",
        json={"question": "two"},
        headers={"Authorization": f"Bearer {SECRET}", "Chat-Session-Id": sid},
    )
    assert r.json() == {"answer": "echo: two (turn 2)"}
    assert call(srv, "echo", prompt="three", session_id=sid).output.text == "echo: three (turn 3)"


def test_messages_as_client_history(srv: Any) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好!"},
        {"role": "user", "content": "再见"},
    ]
    rsp = call(srv, "echo", messages=messages)
    assert rsp.status_code == 200, rsp.message
    assert rsp.output.text == "echo: 再见 (turn 2)"
    # prompt + messages: the SDK appends the prompt as the last user message
    rsp = call(srv, "echo", messages=messages, prompt="还在吗")
    assert rsp.output.text == "echo: 还在吗 (turn 3)"


def test_raw_prompt_and_messages_together(srv: Any) -> None:
    """A raw request may carry both: the prompt is the new turn, every message is history."""
    body = {
        "input": {
            "prompt": "第三",
            "messages": [
                {"role": "user", "content": "第一"},
                {"role": "assistant", "content": "好"},
                {"role": "user", "content": "第二"},
            ],
        }
    }
    r = requests.post(url(srv, "echo"), json=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200, r.text
    assert r.json()["output"]["text"] == "echo: 第三 (turn 3)"


# --------------------------------------------------------------------------- streaming


def test_stream_incremental_true_gives_exact_deltas(srv: Any) -> None:
    chunks = stream(srv, "chat", prompt=SAY, incremental_output=True)
    assert all(c.status_code == 200 for c in chunks)
    assert [c.output.text for c in chunks] == [*PIECES, ""]
    assert [c.output.finish_reason for c in chunks] == ["null"] * len(PIECES) + ["stop"]
    sids = {c.output.session_id for c in chunks}
    assert len(sids) == 1
    assert HEX32.match(sids.pop())
    assert len({c.request_id for c in chunks}) == 1
    assert chunks[-1].usage.models[0].model_id == "fake-chat"
    assert chunks[-1].usage.models[0].output_tokens == len(PIECES)


def test_stream_sdk2_incremental_false_is_merged_once(srv: Any) -> None:
    """dashscope 2.x sends ``incremental_output: true`` and merges; the text must not double."""
    chunks = stream(srv, "chat", prompt=SAY, incremental_output=False)
    texts = [c.output.text for c in chunks]
    assert texts == ["我是", "我是来自", "我是来自阿里", FULL, FULL]
    assert chunks[-1].output.finish_reason == "stop"
    assert chunks[-1].output.text == FULL  # once, not doubled


def test_stream_raw_old_sdk_incremental_false_is_cumulative(srv: Any) -> None:
    """dashscope 1.20.x: ``incremental_output: false`` verbatim (and ``workspace: null``)."""
    body = {
        "model": "",
        "parameters": {"incremental_output": False, "workspace": None},
        "input": {"prompt": SAY},
    }
    data = result_data(post_stream(srv, "chat", body))
    assert [d["output"]["text"] for d in data] == ["我是", "我是来自", "我是来自阿里", FULL, FULL]
    assert [d["output"]["finish_reason"] for d in data] == ["null"] * 4 + ["stop"]
    assert len({d["output"]["session_id"] for d in data}) == 1
    assert len({d["request_id"] for d in data}) == 1
    assert all(set(d) == {"output", "usage", "request_id"} for d in data)
    assert data[-1]["usage"]["models"][0]["output_tokens"] == len(PIECES)


def test_stream_seed_curl(srv: Any) -> None:
    """Seed 003's streaming curl example (only X-DashScope-SSE, curl's own Accept: */*)."""
    # the seed's body, verbatim but for the directive
    data = """{
    "input": {
        "prompt": "你是谁?SAY"

    },
    "parameters":  {
        "incremental_output":true
    },
    "debug": {}
}""".replace("SAY", SAY)
    body = subprocess.run(
        [
            "curl", "-sS", "--no-buffer", "-X", "POST", url(srv, "chat"),
            "--header", f"Authorization: Bearer {SECRET}",
            "--header", "Content-Type: application/json",
            "--header", "X-DashScope-SSE: enable",
            "--data", data,
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()  # fmt: skip
    assert body.endswith("\n\n")
    assert "[DONE]" not in body
    events = [block.split("\n") for block in body[:-2].split("\n\n")]
    chunks = result_data(events)
    assert [c["output"]["text"] for c in chunks] == [*PIECES, ""]
    assert [c["output"]["finish_reason"] for c in chunks] == ["null"] * 4 + ["stop"]


def test_stream_default_is_cumulative(srv: Any) -> None:
    """No ``incremental_output`` (SDK stream=True without it): Bailian's default, false."""
    data = result_data(post_stream(srv, "chat", {"input": {"prompt": SAY}, "parameters": {}}))
    assert [d["output"]["text"] for d in data][-2:] == [FULL, FULL]
    chunks = stream(srv, "chat", prompt=SAY)
    assert [c.output.text for c in chunks] == ["我是", "我是来自", "我是来自阿里", FULL, FULL]


def test_stream_requested_by_accept_header_only(srv: Any) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "Accept": "text/event-stream"}
    body = {"input": {"prompt": SAY}, "parameters": {"incremental_output": True}}
    with requests.post(url(srv, "chat"), json=body, headers=headers, stream=True) as r:
        data = result_data(raw_events(r))
    assert [d["output"]["text"] for d in data] == [*PIECES, ""]


def test_non_streaming_output_is_one_chunk(srv: Any) -> None:
    chunks = stream(srv, "echo", prompt="hello", incremental_output=True)
    assert [(c.output.text, c.output.finish_reason) for c in chunks] == [
        ("echo: hello", "null"),
        ("", "stop"),
    ]


# --------------------------------------------------------------------------- has_thoughts


def thoughts_of(chunk_output: Any) -> list[dict[str, Any]]:
    return [json.loads(t["response"]) for t in chunk_output.thoughts or []]


def test_has_thoughts_streams_every_node_of_branch(srv: Any) -> None:
    chunks = stream(
        srv, "branch", prompt="Is it raining?", incremental_output=True, has_thoughts=True
    )
    assert all(c.status_code == 200 for c in chunks), chunks[-1]
    answer = "You asked: Is it raining? (3 words)"
    # as the seed's SDK output: text None until the last chunk, which has the whole answer
    assert [c.output.text for c in chunks] == [None] * (len(chunks) - 1) + [answer]
    assert chunks[-1].output.finish_reason == "stop"
    seen: dict[str, set[str]] = {}
    for c in chunks:
        assert isinstance(c.output.thoughts, list)
        for t in thoughts_of(c.output):
            assert {"nodeId", "nodeName", "nodeType", "nodeStatus"} <= set(t)
            seen.setdefault(t["nodeId"], set()).add(t["nodeStatus"])
    final = {t["nodeId"]: t for t in thoughts_of(chunks[-1].output)}
    # only the branch that ran; Start first, End last
    order = list(final)
    assert (order[0], order[-1]) == ("Start", "End")
    assert set(final) == {"Start", "classify", "stats", "answer_question", "join", "End"}
    assert "answer_statement" not in seen
    for node in ("classify", "stats", "answer_question", "join"):
        assert seen[node] == {"executing", "success"}, node
    for t in final.values():
        assert t["nodeStatus"] == "success"
        assert re.fullmatch(r"\d+ms", t["nodeExecTime"]), t
    assert final["Start"]["nodeType"] == "Start"
    assert json.loads(final["Start"]["nodeResult"]) == {"question": "Is it raining?"}
    assert final["classify"]["nodeType"] == "Script"
    assert json.loads(final["classify"]["nodeResult"]) == {"is_question": True, "length": 14}
    assert json.loads(final["join"]["nodeResult"]) == {"result": answer}
    assert final["End"]["nodeType"] == "End"
    assert json.loads(final["End"]["nodeResult"]) == {"result": answer}
    # executing nodes carry no nodeExecTime
    for c in chunks:
        for t in thoughts_of(c.output):
            if t["nodeStatus"] == "executing":
                assert "nodeExecTime" not in t


def test_has_thoughts_non_stream(srv: Any) -> None:
    rsp = call(srv, "branch", prompt="It rains.", has_thoughts=True)
    assert rsp.status_code == 200, rsp.message
    assert rsp.output.text == "You said: It rains. (2 words)"
    nodes = {t["nodeId"]: t for t in thoughts_of(rsp.output)}
    assert set(nodes) == {"Start", "classify", "stats", "answer_statement", "join", "End"}
    assert {t["nodeStatus"] for t in nodes.values()} == {"success"}


def test_has_thoughts_llm_node_results_incremental_and_cumulative(srv: Any) -> None:
    def llm_results(data: list[dict[str, Any]]) -> list[str]:
        out = []
        for d in data:
            for t in d["output"].get("thoughts") or []:
                t = json.loads(t["response"])
                if t["nodeId"] == "chat" and t["nodeStatus"] == "executing":
                    out.append(json.loads(t["nodeResult"])["result"])
        return [r for r in out if r]

    body: dict[str, Any] = {
        "input": {"prompt": SAY},
        "parameters": {"has_thoughts": True, "incremental_output": True},
    }
    data = result_data(post_stream(srv, "chat", body))
    final = [json.loads(t["response"]) for t in data[-1]["output"]["thoughts"]]
    assert [t["nodeType"] for t in final] == ["Start", "LLM", "End"]
    assert final[1]["nodeName"] == "Chat"  # the node's display_name
    assert llm_results(data) == PIECES  # only the new text per chunk
    # seed 003's workflow streaming: the deltas are in the node's results; the answer comes
    # whole, in the last chunk, and no chunk before it has a text
    assert [d["output"].get("text") for d in data] == [None] * (len(data) - 1) + [FULL]
    body["parameters"]["incremental_output"] = False
    data = result_data(post_stream(srv, "chat", body))
    got = llm_results(data)
    assert got[-1] == FULL
    assert all(FULL.startswith(r) for r in got)
    assert data[-1]["output"]["text"] == FULL


def test_has_thoughts_failed_node_then_error(proto: Any) -> None:
    chunks = stream(proto, "explode", prompt="boom", incremental_output=True, has_thoughts=True)
    *ok, err = chunks
    assert err.status_code == 500
    assert err.code == "NodeFailed"
    assert "unknowable" in err.message
    last = {t["nodeId"]: t for t in thoughts_of(ok[-1].output)}
    assert last["explode"]["nodeStatus"] == "failed"
    assert re.fullmatch(r"\d+ms", last["explode"]["nodeExecTime"])


# --------------------------------------------------------------------------- biz_params


def test_biz_params_fill_start_node_input(proto: Any) -> None:
    rsp = call(proto, "city", prompt="有什么景点?", biz_params={"city": "杭州"})
    assert rsp.status_code == 200, rsp.message
    assert rsp.output.text == "杭州: 有什么景点? (turn 1)"
    # without biz_params the input's default applies
    assert call(proto, "city", prompt="景点").output.text == "北京: 景点 (turn 1)"


def test_biz_params_seed_curl_and_start_node_thought(proto: Any) -> None:
    body = {
        "input": {"prompt": "你好", "biz_params": {"city": "杭州"}},
        "parameters": {"has_thoughts": True, "incremental_output": True},
        "debug": {},
    }
    data = result_data(post_stream(proto, "city", body))
    start = json.loads(data[-1]["output"]["thoughts"][0]["response"])
    assert start["nodeType"] == "Start"
    assert json.loads(start["nodeResult"]) == {
        "question": "你好",
        "city": "杭州",
        "chat_history": [],
    }
    node = json.loads(data[-1]["output"]["thoughts"][1]["response"])
    assert (node["nodeId"], node["nodeName"]) == ("locate", "定位")
    assert "text" not in data[-2]["output"]  # as the seed's curl: the answer only at the end
    assert data[-1]["output"]["text"] == "杭州: 你好 (turn 1)"


def test_user_defined_params_and_tokens_reach_python_nodes(proto: Any) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    digest = hashlib.sha256(token.encode()).hexdigest()
    biz = {
        "user_defined_params": {"weather": {"article_index": 2}, "search": {"k": 3}},
        "user_defined_tokens": {"weather": {"user_token": token}},
    }
    rsp = call(proto, "plugin", prompt="寝室公约内容", biz_params=biz)
    assert rsp.status_code == 200, rsp.message
    assert json.loads(rsp.output.text) == {
        "question": "寝室公约内容",
        "by_call": {
            "params": {"weather": {"article_index": 2}, "search": {"k": 3}},
            "token_tools": ["weather"],
        },
        "weather_params": {"article_index": 2},
        "weather_digest": digest,
        "header_matches": True,
    }
    chunks = stream(proto, "plugin", prompt="again", biz_params=biz, has_thoughts=True)
    assert json.loads(chunks[-1].output.text)["weather_digest"] == digest
    body = {"input": {"prompt": "traced", "biz_params": biz}, "parameters": {"has_thoughts": True}}
    auth = {"Authorization": f"Bearer {SECRET}"}
    r = requests.post(url(proto, "plugin"), json=body, headers=auth)
    assert r.status_code == 200, r.text
    # thoughts show every node's result, the header built from the token too, but scrubbed
    assert token not in r.text
    thoughts = [json.loads(t["response"]) for t in r.json()["output"]["thoughts"]]
    authorize = next(t for t in thoughts if t["nodeId"] == "authorize")
    assert json.loads(authorize["nodeResult"]) == {"result": "Bearer [redacted]"}
    # never traced: not in any span of the plugin app's runs (inputs, outputs, attributes)
    traces = requests.get(f"{proto.url}/api/v1/traces", params={"app_id": "plugin"}, headers=auth)
    assert traces.status_code == 200, traces.text
    ids = {t["trace_id"] for t in traces.json()["traces"]}
    assert r.headers["x-trace-id"] in ids
    assert len(ids) >= 3
    for trace_id in ids:
        trace = requests.get(f"{proto.url}/api/v1/traces/{trace_id}", headers=auth)
        assert trace.status_code == 200
        assert "authorize" in trace.text
        assert digest in trace.text  # content is traced, so the token's absence means something
        assert token not in trace.text
    # never logged (debug level, access log on)
    assert token not in proto.output()


def test_biz_params_tokens_must_be_objects(proto: Any) -> None:
    rsp = call(proto, "plugin", prompt="x", biz_params={"user_defined_tokens": {"weather": "t0k"}})
    assert rsp.status_code == 400
    assert rsp.code == "InvalidParameter"
    assert "user_defined_tokens" in rsp.message
    assert "t0k" not in proto.output()


# --------------------------------------------------------------------------- usage


def test_usage_is_per_model(proto: Any, llm: FakeLLM) -> None:
    rsp = call(proto, "usage", prompt="hello world")
    assert rsp.status_code == 200, rsp.message
    assert rsp.output.text == "echo: echo: hello world and echo: hello world"
    models = {m.model_id: (m.input_tokens, m.output_tokens) for m in rsp.usage.models}
    # model-a: "hello world" (2 words in, 3 pieces out) + the 7-word combination (8 pieces out)
    assert models == {"model-a": (2 + 7, 3 + 8), "model-b": (2, 3)}
    assert len(llm.requests) == 3
    chunks = stream(proto, "usage", prompt="hello world", incremental_output=True)
    final = {m.model_id: (m.input_tokens, m.output_tokens) for m in chunks[-1].usage.models}
    assert final == models


# --------------------------------------------------------------------------- errors


def test_wrong_key(srv: Any) -> None:
    rsp = call(srv, "chat", prompt="hi", api_key="wrong")
    assert rsp.status_code == 401
    assert rsp.code == "InvalidApiKey"
    assert rsp.message == "Invalid API-key provided."
    uuid.UUID(rsp.request_id)
    assert rsp.output is None
    # streaming: exactly one error response from the generator
    [only] = stream(srv, "chat", prompt="hi", api_key="wrong")
    assert (only.status_code, only.code) == (401, "InvalidApiKey")


def test_wrong_key_raw_body_is_the_seeds(srv: Any) -> None:
    r = requests.post(
        url(srv, "chat"), json={"input": {"prompt": "x"}}, headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body == {
        "code": "InvalidApiKey",
        "message": "Invalid API-key provided.",
        "request_id": body["request_id"],
    }
    assert body["request_id"] == r.headers["x-request-id"]


def test_unknown_app(srv: Any) -> None:
    rsp = call(srv, "no-such-app", prompt="hi")
    assert rsp.status_code == 404
    assert "no-such-app" in rsp.message
    assert rsp.request_id
    [only] = stream(srv, "no-such-app", prompt="hi")
    assert only.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": {}}, "input.prompt"),
        ({"parameters": {}}, "input"),
        ({"input": {"prompt": 5}}, "input.prompt"),
        (
            {"input": {"prompt": "x"}, "parameters": {"incremental_output": "maybe"}},
            "incremental_output",
        ),
        ({"input": {"messages": [{"role": "assistant", "content": "x"}]}}, "input.messages"),
        ({"input": {"prompt": "x", "session_id": "short"}}, "input.session_id"),
        ({"input": {"prompt": "x"}, "parameters": {"rag_options": {"tags": 5}}}, "rag_options"),
        ({"input": {"prompt": "x", "biz_params": []}}, "biz_params"),
    ],
)
def test_bad_request_is_invalid_parameter(srv: Any, body: dict[str, Any], field: str) -> None:
    r = requests.post(url(srv, "echo"), json=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 400, r.text
    data = r.json()
    assert data["code"] == "InvalidParameter"
    assert field in data["message"]
    assert data["request_id"] == r.headers["x-request-id"]


def test_null_parameters_are_the_defaults(srv: Any) -> None:
    body = {"input": {"prompt": "hi"}, "parameters": None}
    r = requests.post(url(srv, "echo"), json=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200, r.text
    assert r.json()["output"]["text"] == "echo: hi"


def test_body_not_json(srv: Any) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    r = requests.post(url(srv, "echo"), data=b"{not json", headers=headers)
    assert r.status_code == 400
    assert r.json()["code"] == "InvalidParameter"


def test_rag_options_and_memory_id_are_validated(srv: Any) -> None:
    # an app without a retrieval node takes rag_options and has nothing to filter
    rsp = call(srv, "echo", prompt="手机", rag_options={"pipeline_ids": ["p1"], "tags": "手机"})
    assert rsp.status_code == 200
    assert rsp.output.text == "echo: 手机"
    rsp = call(srv, "echo", prompt="x", rag_options={"pipeline_ids": 5})
    assert (rsp.status_code, rsp.code) == (400, "InvalidParameter")
    assert "pipeline_ids" in rsp.message
    rsp = call(srv, "echo", prompt="面食", memory_id="mem-1")
    assert (rsp.status_code, rsp.code) == (404, "NotFound")
    assert "mem-1" in rsp.message
    # null and empty are "not used"
    body = {"input": {"prompt": "x", "memory_id": None}, "parameters": {"rag_options": None}}
    r = requests.post(url(srv, "echo"), json=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200, r.text


def test_failure_before_any_text_non_stream(srv: Any) -> None:
    rsp = call(srv, "chat", prompt="[[fake:status=429]]")
    assert rsp.status_code == 502
    assert rsp.code == "LLMError"
    assert rsp.request_id
    assert rsp.output is None


def test_failure_mid_stream_is_event_error(srv: Any) -> None:
    chunks = stream(
        srv, "chat", prompt="[[fake:chunks=a|b|c|d]][[fake:fail_after=2]]", incremental_output=True
    )
    *ok, err = chunks
    assert [c.output.text for c in ok] == ["a", "b"]
    assert all(c.status_code == 200 for c in ok)
    assert err.status_code == 502
    assert err.code == "LLMError"
    assert err.request_id == ok[0].request_id


def test_failure_mid_stream_raw_frame(srv: Any) -> None:
    body = {
        "input": {"prompt": "[[fake:chunks=a|b|c]][[fake:fail_after=1]]"},
        "parameters": {"incremental_output": True},
    }
    events = post_stream(srv, "chat", body)
    *results, error = events
    assert [d["output"]["text"] for d in result_data(results)] == ["a"]
    n = len(results) + 1
    assert error[:4] == [f"id:{n}", "event:error", "status:502", ":HTTP_STATUS/502"]
    data = json.loads(error[4].removeprefix("data:"))
    assert set(data) == {"code", "message", "request_id"}
    assert data["code"] == "LLMError"


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
            assert ref.startswith("#/"), ref
            target: Any = spec
            for part in ref[2:].split("/"):
                assert part in target, f"unresolvable $ref {ref}"
                target = target[part]
            refs_in(spec, target, seen)
        for v in node.values():
            refs_in(spec, v, seen)
    return seen


def test_openapi_documents_the_endpoint(srv: Any) -> None:
    spec = requests.get(f"{srv.url}/openapi.json").json()
    op = spec["paths"]["/api/v1/apps/{app_id}/completion"]["post"]
    refs_in(spec, op)
    req = op["requestBody"]["content"]["application/json"]["schema"]
    assert req["title"] == "AppRequest"
    assert {"input", "parameters"} <= set(req["properties"])
    assert {"prompt", "session_id", "biz_params", "memory_id"} <= set(
        req["properties"]["input"]["properties"]
    )
    params = req["properties"]["parameters"]["properties"]
    assert {"incremental_output", "has_thoughts", "rag_options"} <= set(params)
    ok = op["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/AppResponse"}
    assert "#/components/schemas/AppResponse" in refs_in(spec, ok["text/event-stream"])
    for status in ("400", "401", "404", "500"):
        err = op["responses"][status]["content"]["application/json"]["schema"]
        assert err == {"$ref": "#/components/schemas/AppError"}, status
    assert "422" not in op["responses"]  # validation errors are 400 InvalidParameter
    [param] = op["parameters"]
    assert (param["name"], param["in"], param["required"]) == ("app_id", "path", True)
