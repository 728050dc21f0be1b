"""Knowledge bases through a real server: the rag example with rag_options, and lazy start."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from dashscope import Application

from flowhost.testing import FakeLLM

ROOT_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"


def wait_indexed(url: str, headers: dict[str, str], pipeline_id: str) -> None:
    """Bootstrap jobs index the shipped documents in the background: poll (bounded)."""
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        while time.monotonic() < deadline:
            r = c.get(f"/api/v1/knowledge/bases/{pipeline_id}/documents")
            docs = r.json().get("documents", []) if r.status_code == 200 else []
            if docs and all(d["status"] == "completed" for d in docs):
                return
            time.sleep(0.1)
    raise AssertionError(f"{pipeline_id} was not indexed in time")


def test_rag_example_with_structured_filter_and_doc_references(
    server_factory: Callable[..., Any], fake_llm: FakeLLM
) -> None:
    server = server_factory(ROOT_EXAMPLES / "rag", token="secret")  # no LLM: answers with passages
    wait_indexed(server.url, server.headers, "rag_phones")
    r = Application.call(
        api_key="secret",
        app_id="rag",
        prompt="请帮我推荐一款3000元以下的手机",
        rag_options={"pipeline_ids": ["rag_phones"], "structured_filter": {"price": "2999"}},
        base_address=f"{server.url}/api/v1",
    )
    assert r.status_code == 200, r.message
    refs = r.output.doc_references
    assert refs, "the rag app must return doc_references"
    assert all(ref["pipeline_id"] == "rag_phones" for ref in refs)
    assert all("2999" in ref["text"] for ref in refs)
    assert [ref["index_id"] for ref in refs] == [str(i) for i in range(1, len(refs) + 1)]
    assert "百炼手机" in r.output.text
    # an injection string is a literal value: it matches nothing
    r = Application.call(
        api_key="secret",
        app_id="rag",
        prompt="手机",
        rag_options={
            "pipeline_ids": ["rag_phones"],
            "structured_filter": {"price": "2999' OR '1'='1"},
        },
        base_address=f"{server.url}/api/v1",
    )
    assert r.status_code == 200
    assert not r.output.doc_references


def test_knowledge_api_starts_lazily_when_no_flow_needs_it(
    server_factory: Callable[..., Any],
) -> None:
    server = server_factory(ROOT_EXAMPLES / "echo", token="secret")
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        r = c.post("/api/v1/knowledge/bases", json={"name": "notes", "pipeline_id": "notes"})
        assert r.status_code == 201, r.text
        assert c.get("/api/v1/knowledge/bases/notes").json()["pipeline_id"] == "notes"
