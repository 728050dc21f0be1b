"""The knowledge_retrieval node in the shipped `rag` example, built from its knowledge.yaml."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowhost.engine.context import RunContext
from flowhost.engine.events import NodeFinished, RunFailed, RunFinished
from flowhost.engine.executor import execute
from flowhost.exceptions import FlowDefinitionError
from flowhost.flows.loader import NODE_FACTORIES, load_flow
from flowhost.knowledge import KnowledgeService, RagOptions, doc_references
from flowhost.knowledge.bootstrap import bootstrap_flows
from flowhost.llm.client import LLMClient
from flowhost.llm.connections import ConnectionRegistry
from flowhost.nodes.base import NodeServices

pytestmark = pytest.mark.anyio
Started = Callable[..., AbstractAsyncContextManager[KnowledgeService]]  # conftest's `started`
RAG = Path(__file__).resolve().parents[2] / "examples" / "flows" / "rag"


@pytest.fixture
async def rag(service: KnowledgeService, monkeypatch: pytest.MonkeyPatch) -> KnowledgeService:
    for var in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    await bootstrap_flows(service, RAG)
    await bootstrap_flows(service, RAG)  # idempotent: nothing new
    await service.wait_idle()
    return service


async def run(
    svc: KnowledgeService, question: str, rag_options: Any = None
) -> tuple[Any, list[Any]]:
    flow = load_flow(RAG)
    llm = LLMClient()
    services = NodeServices(ConnectionRegistry({}, None), llm, extra={"knowledge": svc})
    ctx = RunContext(run_id="r1", extra={"rag_options": rag_options} if rag_options else {})
    retrieved: list[Any] = []
    outputs: Any = None
    try:
        async for ev in execute(flow, {"question": question, "chat_history": []}, ctx, services):
            if isinstance(ev, NodeFinished) and ev.node_type == "knowledge_retrieval":
                retrieved = ev.output
            if isinstance(ev, RunFailed):
                raise AssertionError(ev.error)
            if isinstance(ev, RunFinished):
                outputs = ev.outputs
    finally:
        await llm.aclose()
    return outputs, retrieved


async def test_example_bases_are_built_from_knowledge_yaml(rag: KnowledgeService) -> None:
    bases = {b.pipeline_id: b for b in await rag.list_bases()}
    assert set(bases) == {"rag_docs", "rag_phones"}
    assert bases["rag_docs"].document_count == 3
    assert bases["rag_phones"].type == "structured"
    docs = await rag.list_documents("rag_docs")
    assert {d.status for d in docs} == {"completed"}


async def test_rag_flow_answers_without_an_llm(rag: KnowledgeService) -> None:
    outputs, retrieved = await run(rag, "What is a knowledge base identified by?")
    assert retrieved
    assert retrieved[0]["index_id"] == "rag_docs"
    assert "pipeline_id" in retrieved[0]["text"]
    assert set(retrieved[0]) >= {
        "index_id",
        "doc_id",
        "doc_name",
        "title",
        "text",
        "score",
        "metadata",
        "images",
        "chunk_id",
    }
    assert outputs["answer"].startswith("[1]")
    assert outputs["references"] == retrieved


async def test_rag_options_reach_the_node(rag: KnowledgeService) -> None:
    # the seed's structured example, as a dict and as a RagOptions
    for opts in (
        {"pipeline_ids": ["rag_phones"], "structured_filter": {"price": "2999"}},
        RagOptions(pipeline_ids=["rag_phones"], structured_filter={"price": "2999"}),
    ):
        _, retrieved = await run(rag, "请帮我推荐一款3000元以下的手机", opts)
        assert [r["metadata"]["model"] for r in retrieved] == ["百炼手机"]
    _, retrieved = await run(
        rag,
        "推荐一款手机",
        {"pipeline_ids": ["rag_docs"], "tags": "手机", "metadata_filter": {"name": "张三"}},
    )
    assert retrieved
    assert {r["doc_name"] for r in retrieved} == {"phones_zh.md"}
    refs = doc_references(retrieved)
    assert [r["index_id"] for r in refs] == [str(i + 1) for i in range(len(refs))]
    assert refs[0]["doc_id"] == retrieved[0]["doc_id"]
    assert refs[0]["pipeline_id"] == "rag_docs"


async def test_the_first_question_after_a_first_start_waits_for_the_declared_bases(
    service: KnowledgeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    await bootstrap_flows(service, RAG)  # as a first start does: documents queued, not indexed
    assert {d.status for d in await service.list_documents("rag_docs")} != {"completed"}
    outputs, retrieved = await run(service, "What is a knowledge base identified by?")
    assert retrieved  # not "no passage": the search waited for the base
    assert retrieved[0]["index_id"] == "rag_docs"
    assert outputs["answer"].startswith("[1]")
    assert {d.status for d in await service.list_documents("rag_docs")} == {"completed"}


async def test_a_restart_during_the_first_indexing_still_waits_for_it(
    started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    async with started(worker=False) as first:
        await bootstrap_flows(first, RAG)  # queued, then the process stops before indexing
    async with started() as svc:
        await bootstrap_flows(svc, RAG)  # the documents are there: no new job, still waited for
        _, retrieved = await run(svc, "What is a knowledge base identified by?")
        assert retrieved
        assert retrieved[0]["index_id"] == "rag_docs"


async def search(svc: KnowledgeService) -> list[Any]:
    return await svc.retrieve(
        "knowledge base", pipeline_ids=["rag_docs"], options=None, top_k=3, score_threshold=None
    )


async def test_a_search_sees_declared_documents_another_replica_indexed(started: Started) -> None:
    # neither replica's worker runs: the other one indexes by hand, as its worker would
    async with started(worker=False) as this, started(worker=False) as other:
        await bootstrap_flows(this, RAG)
        waiting = asyncio.create_task(this.wait_declared(["rag_docs"], 30))
        await asyncio.sleep(0)  # the search is waiting ...
        assert not waiting.done()
        assert await other.run_pending_jobs() > 0  # ... while another process indexes
        with anyio.fail_after(10):  # noticed at the next look (DECLARED_POLL_S), not at 30 s
            await waiting
        assert await search(this)


async def test_a_declared_base_still_indexing_is_searched_as_it_is_after_the_wait(
    started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(worker=False) as svc:  # nothing indexes: as when another replica does it
        await bootstrap_flows(svc, RAG)
        with caplog.at_level(logging.INFO, "flowhost.knowledge"):
            await svc.wait_declared(["rag_docs", "not_declared"], 0.05)
            assert "rag_docs still indexing after 0.05s" in caplog.text
            caplog.clear()
            await svc.wait_declared(["rag_docs"], 0.05)  # given up once, for every search
        assert "waits" not in caplog.text
        assert await search(svc) == []


async def test_declared_indexing_counts_what_is_left_whoever_indexes_it(
    started: Started,
) -> None:
    async with started(worker=False) as this, started(worker=False) as other:
        assert await this.declared_indexing() == {}
        await bootstrap_flows(this, RAG)
        queued = {p: len(await this.list_documents(p)) for p in ("rag_docs", "rag_phones")}
        assert await this.declared_indexing() == queued
        await this.wait_declared(["rag_docs"], 0.01)  # a search stops waiting: still indexing
        assert await this.declared_indexing() == queued
        assert await other.run_pending_jobs() > 0  # another process indexes them all
        assert await this.declared_indexing() == {}


def test_node_definition_errors(tmp_path: Path) -> None:
    assert "knowledge_retrieval" in NODE_FACTORIES
    (tmp_path / "flow.dag.yaml").write_text(
        "inputs: {q: {type: string}}\noutputs: {o: {type: list, reference: '${r.output}'}}\n"
        "nodes:\n- name: r\n  type: knowledge_retrieval\n  inputs: {query: '${inputs.q}', k: 1}\n"
    )
    with pytest.raises(FlowDefinitionError, match="unknown inputs"):
        load_flow(tmp_path)
