"""MemoryService against the real store (SQLite, MariaDB, PostgreSQL), the packaged embedding
model and the fake LLM."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from flowhost.exceptions import InvalidInput, NotFound
from flowhost.knowledge.embedding import LocalEmbedder
from flowhost.llm.client import LLMClient
from flowhost.llm.connections import Connection, ConnectionRegistry
from flowhost.memory import MemoryService
from flowhost.memory.extract import parse_operations
from flowhost.store import Store
from flowhost.testing import FakeLLM, Reply
from flowhost.testing.databases import drop_service

EXTRACTOR = "memory-extractor"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("FLOWHOST_TEST_MYSQL_URL", marks=pytest.mark.mysql),
        pytest.param("FLOWHOST_TEST_POSTGRES_URL", marks=pytest.mark.postgres),
    ]
)
async def memory(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    llm: FakeLLM,
    embedder: LocalEmbedder,
    db_service_url: Callable[[str], str],
) -> AsyncIterator[MemoryService]:
    url = None if request.param == "sqlite" else db_service_url(request.param)
    service = f"mem_{uuid.uuid4().hex[:8]}"
    store = await Store.open(url, data_dir=tmp_path, service=service)
    conns = ConnectionRegistry(
        {"fake": Connection("fake", llm.base_url, "sk-test", model=EXTRACTOR, max_retries=0)},
        "fake",
    )
    client = LLMClient()
    svc = MemoryService(store, embedder, client, conns)
    try:
        yield svc
    finally:
        await svc.close()
        await client.aclose()
        await store.close()
        if url is not None:
            await drop_service(url, service)


def ops(*items: dict[str, str]) -> Reply:
    return Reply(text=json.dumps({"operations": list(items)}, ensure_ascii=False))


@pytest.mark.anyio
async def test_crud(memory: MemoryService) -> None:
    m = await memory.create_memory("for user 42")
    node = await memory.create_node(m.memory_id, "用户喜欢猫")
    assert (await memory.get_node(m.memory_id, node.node_id)).content == "用户喜欢猫"
    updated = await memory.update_node(m.memory_id, node.node_id, "用户喜欢狗")
    assert updated.content == "用户喜欢狗"
    assert updated.updated_at >= node.updated_at
    nodes, total = await memory.list_nodes(m.memory_id, limit=10, offset=0)
    assert total == 1
    assert nodes[0].content == "用户喜欢狗"
    await memory.delete_node(m.memory_id, node.node_id)
    assert (await memory.list_nodes(m.memory_id, limit=10, offset=0))[1] == 0
    await memory.delete_memory(m.memory_id)
    with pytest.raises(NotFound):
        await memory.get_memory(m.memory_id)
    with pytest.raises(InvalidInput):
        await memory.create_node((await memory.create_memory()).memory_id, "   ")


@pytest.mark.anyio
async def test_extraction_adds_then_updates_instead_of_duplicating(
    memory: MemoryService, llm: FakeLLM
) -> None:
    m = await memory.create_memory()
    llm.set_model_reply(EXTRACTOR, ops({"op": "add", "content": "用户饮食偏好：面食"}))
    applied = await memory.extract(m.memory_id, "用户饮食偏好：面食")
    assert [o.op for o in applied] == ["add"]
    [node] = (await memory.list_nodes(m.memory_id, limit=10, offset=0))[0]
    assert node.content == "用户饮食偏好：面食"
    assert node.source == "extracted"

    # the model saw the existing node, and restates it: update, never a second node
    llm.set_model_reply(
        EXTRACTOR, ops({"op": "update", "id": node.node_id, "content": "用户饮食偏好：米饭"})
    )
    await memory.extract(m.memory_id, "我现在更喜欢米饭")
    nodes, total = await memory.list_nodes(m.memory_id, limit=10, offset=0)
    assert total == 1
    assert nodes[0].node_id == node.node_id
    assert nodes[0].content == "用户饮食偏好：米饭"
    extraction_prompt = llm.requests[-1].body["messages"][0]["content"]
    assert f"{node.node_id}: 用户饮食偏好：面食" in extraction_prompt

    # the same fact again (add of a known fact) is ignored
    llm.set_model_reply(EXTRACTOR, ops({"op": "add", "content": "用户饮食偏好：米饭。"}))
    assert await memory.extract(m.memory_id, "米饭") == []
    assert (await memory.list_nodes(m.memory_id, limit=10, offset=0))[1] == 1


@pytest.mark.anyio
async def test_memories_are_isolated(memory: MemoryService) -> None:
    a, b = await memory.create_memory(), await memory.create_memory()
    await memory.create_node(a.memory_id, "用户住在杭州")
    await memory.create_node(b.memory_id, "User lives in Berlin")
    assert [n.content for n in await memory.recall(a.memory_id, "用户住在哪里", k=10)] == [
        "用户住在杭州"
    ]
    assert [
        n.content for n in await memory.recall(b.memory_id, "Where does the user live", k=10)
    ] == ["User lives in Berlin"]
    with pytest.raises(NotFound):
        await memory.get_node(
            b.memory_id, (await memory.list_nodes(a.memory_id, limit=1, offset=0))[0][0].node_id
        )


@pytest.mark.anyio
async def test_recall_ranks_by_relevance(memory: MemoryService) -> None:
    m = await memory.create_memory()
    for fact in (
        "用户喜欢猫",
        "用户饮食偏好：面食",
        "用户是一名软件工程师",
        "The user plays tennis on Sundays",
    ):
        await memory.create_node(m.memory_id, fact)
    recalled = await memory.recall(m.memory_id, "美食推荐", k=4)
    assert recalled[0].content == "用户饮食偏好：面食"
    assert [n.score for n in recalled] == sorted((n.score or 0) for n in recalled)[::-1]
    sport = await memory.recall(m.memory_id, "What sport should I play this weekend?", k=1)
    assert sport[0].content == "The user plays tennis on Sundays"


@pytest.mark.anyio
async def test_extraction_failure_raises_in_extract_but_not_in_the_background(
    memory: MemoryService, llm: FakeLLM
) -> None:
    m = await memory.create_memory()
    llm.set_model_reply(EXTRACTOR, Reply(status=500))
    with pytest.raises(Exception, match="HTTP 500"):
        await memory.extract(m.memory_id, "用户饮食偏好：面食")
    memory.extract_later(m.memory_id, "用户饮食偏好：面食", "run-1")
    await memory.close()  # waits for the background task, which logs instead of raising
    assert (await memory.list_nodes(m.memory_id, limit=10, offset=0))[1] == 0
    # garbage answers are ignored
    llm.set_model_reply(EXTRACTOR, Reply(text="I think the user likes noodles"))
    assert await memory.extract(m.memory_id, "用户饮食偏好：面食") == []


def test_parse_operations_tolerates_fences_and_unknown_ids() -> None:
    answer = '```json\n{"operations": [{"op": "update", "id": "nope", "content": "a"}, {"op": "x", "content": "b"}, {"op": "add", "content": ""}]}\n```'
    parsed = parse_operations(answer, {"known"})
    assert [(o.op, o.content, o.node_id) for o in parsed] == [("add", "a", None)]
    assert parse_operations("no json here", set()) == []
