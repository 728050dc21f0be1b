"""Long-term memory end to end: the seed's two-step example through the real dashscope SDK."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from dashscope import Application

from flowhost.testing import FakeLLM, Reply

EXTRACTOR = "memory-extractor"


@pytest.fixture
def server(memory_server: Any) -> Any:
    return memory_server


def api(server: Any) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/api/v1", headers=server.headers, timeout=30)


def wait_for_nodes(server: Any, memory_id: str, count: int) -> list[dict[str, object]]:
    """Extraction runs in the background: poll (bounded) until it has stored ``count`` nodes."""
    deadline = time.monotonic() + 30
    with api(server) as c:
        while time.monotonic() < deadline:
            nodes = c.get(f"/memories/{memory_id}/nodes").json()["memory_nodes"]
            if len(nodes) >= count:
                return list(nodes)
            time.sleep(0.05)
    raise AssertionError(f"memory {memory_id} never reached {count} nodes")


def test_seed_two_step_example(server: Any, llm: FakeLLM) -> None:
    with api(server) as c:
        memory_id = c.post("/memories", json={"description": "end user 1"}).json()["memory_id"]
    llm.set_model_reply(
        EXTRACTOR,
        Reply(text=json.dumps({"operations": [{"op": "add", "content": "用户饮食偏好：面食"}]})),
    )
    first = Application.call(
        api_key="secret",
        app_id="chat",
        prompt="用户饮食偏好：面食",
        memory_id=memory_id,
        base_address=f"{server.url}/api/v1",
    )
    assert first.status_code == 200, first.message
    [node] = wait_for_nodes(server, memory_id, 1)
    assert node["content"] == "用户饮食偏好：面食"
    assert node["source"] == "extracted"

    llm.set_model_reply(EXTRACTOR, Reply(text='{"operations": []}'))
    second = Application.call(
        api_key="secret",
        app_id="chat",
        prompt="美食推荐",
        memory_id=memory_id,
        base_address=f"{server.url}/api/v1",
    )
    assert second.status_code == 200, second.message
    assert second.output.session_id != first.output.session_id  # a new session, same memory
    chat_calls = [
        r.body
        for r in llm.requests
        if r.path.endswith("/chat/completions") and r.body["model"] != EXTRACTOR
    ]
    system = chat_calls[-1]["messages"][0]
    assert system["role"] == "system"
    assert "用户饮食偏好：面食" in system["content"]
    assert chat_calls[-1]["messages"][-1] == {"role": "user", "content": "美食推荐"}


def test_other_protocols_take_a_memory_id(server: Any, llm: FakeLLM) -> None:
    with api(server) as c:
        memory_id = c.post("/memories", json={}).json()["memory_id"]
        c.post(
            f"/memories/{memory_id}/nodes", json={"content": "The user is vegetarian"}
        ).raise_for_status()
    llm.set_model_reply(EXTRACTOR, Reply(text='{"operations": []}'))
    r = httpx.post(
        f"{server.url}/apps/chat",
        headers={**server.headers, "Memory-Id": memory_id},
        json={"question": "What should I cook tonight?"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers=server.headers,
        timeout=30,
        json={
            "model": "chat",
            "memory_id": memory_id,
            "messages": [{"role": "user", "content": "Dinner ideas?"}],
        },
    )
    assert r.status_code == 200, r.text
    calls = [x.body for x in llm.requests if x.body and x.body.get("model") == "fake-chat"]
    assert len(calls) == 2
    assert all("The user is vegetarian" in c["messages"][0]["content"] for c in calls)


def test_extraction_failure_leaves_the_answer_intact(server: Any, llm: FakeLLM) -> None:
    with api(server) as c:
        memory_id = c.post("/memories", json={}).json()["memory_id"]
    llm.set_model_reply(EXTRACTOR, Reply(status=500))
    r = Application.call(
        api_key="secret",
        app_id="chat",
        prompt="我喜欢爬山",
        memory_id=memory_id,
        base_address=f"{server.url}/api/v1",
    )
    assert r.status_code == 200
    assert r.output.text == "echo: 我喜欢爬山"


def test_unknown_memory_and_crud_errors(server: Any) -> None:
    r = Application.call(
        api_key="secret",
        app_id="chat",
        prompt="hi",
        memory_id="mem_nope",
        base_address=f"{server.url}/api/v1",
    )
    assert r.status_code == 404
    assert "mem_nope" in r.message
    with api(server) as c:
        memory_id = c.post("/memories", json={}).json()["memory_id"]
        node = c.post(f"/memories/{memory_id}/nodes", json={"content": "likes tea"}).json()
        assert (
            c.put(
                f"/memories/{memory_id}/nodes/{node['memory_node_id']}",
                json={"content": "likes green tea"},
            ).json()["content"]
            == "likes green tea"
        )
        assert c.post(f"/memories/{memory_id}/nodes", json={"content": ""}).status_code == 400
        assert c.get(f"/memories/{memory_id}/nodes/node_nope").status_code == 404
        listed = c.get("/memories", params={"limit": 200}).json()
        assert memory_id in [m["memory_id"] for m in listed["memories"]]
        assert c.delete(f"/memories/{memory_id}").status_code == 204
        assert c.get(f"/memories/{memory_id}").status_code == 404
    assert httpx.get(f"{server.url}/api/v1/memories", timeout=10).status_code == 401


def test_memory_api_in_openapi(server: Any) -> None:
    paths = httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    assert {"/api/v1/memories", "/api/v1/memories/{memory_id}/nodes/{node_id}"} <= set(paths)
