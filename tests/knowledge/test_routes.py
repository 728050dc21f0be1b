"""The knowledge HTTP API in-process (httpx.ASGITransport), and its place in /openapi.json."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kbdocs import fixture_bytes

from flowhost.config import Settings
from flowhost.knowledge import start_knowledge, stop_knowledge
from flowhost.server.app import create_app
from flowhost.store import Store

pytestmark = pytest.mark.anyio
ECHO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "echo"


@pytest.fixture
async def client(kb_settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    settings = kb_settings.model_copy(update={"flows": ECHO})
    app = create_app(settings)  # mounts the knowledge routes; the service starts below
    await start_knowledge(app, settings, store, app.state.apps)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kb") as c:
        yield c
    await stop_knowledge(app, app.state.apps)


async def wait_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    import anyio

    for _ in range(400):
        job = (await client.get(f"/api/v1/knowledge/jobs/{job_id}")).json()
        if job["status"] in ("completed", "failed"):
            return dict(job)
        await anyio.sleep(0.05)
    raise AssertionError("job did not finish")


async def test_create_upload_poll_retrieve_delete(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/knowledge/bases", json={"name": "kettle", "pipeline_id": "kettle"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["pipeline_id"] == "kettle"
    assert r.json()["type"] == "unstructured"
    r = await client.post(
        "/api/v1/knowledge/bases/kettle/documents",
        files={"file": ("guide_zh.md", fixture_bytes("guide_zh.md"), "text/markdown")},
        data={"tags": ["manual", "中文"], "metadata": json.dumps({"lang": "zh"})},
    )
    assert r.status_code == 202, r.text
    upload = r.json()
    assert upload["duplicate"] is False
    assert upload["document"]["tags"] == ["manual", "中文"]
    job = await wait_job(client, upload["job"]["job_id"])
    assert job["status"] == "completed"
    assert job["progress"] == job["total"] > 0
    r = await client.post(
        "/api/v1/knowledge/bases/kettle/documents",
        files={"file": ("again.md", fixture_bytes("guide_zh.md"))},
    )
    assert r.status_code == 200
    assert r.json()["duplicate"] is True
    assert r.json()["job"] is None
    file_id = upload["document"]["file_id"]
    doc = (await client.get(f"/api/v1/knowledge/documents/{file_id}")).json()
    assert doc["status"] == "completed"
    assert doc["metadata"] == {"lang": "zh"}
    listed = (await client.get("/api/v1/knowledge/bases/kettle/documents")).json()
    assert [d["file_id"] for d in listed["documents"]] == [file_id]
    bases = (await client.get("/api/v1/knowledge/bases")).json()["bases"]
    assert bases[0]["document_count"] == 1

    body = {
        "query": "怎么除垢",
        "pipeline_ids": ["kettle"],
        "top_k": 2,
        "rag_options": {"tags": "中文", "metadata_filter": {"lang": "zh"}},
    }
    r = await client.post("/api/v1/knowledge/retrieve", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["chunks"][0]["file_id"] == file_id
    assert "白醋" in out["chunks"][0]["text"]
    ref = out["doc_references"][0]
    assert ref["index_id"] == "1"
    assert ref["doc_id"] == file_id
    assert ref["doc_name"] == "guide_zh.md"
    assert ref["images"] == []
    assert ref["text"]
    body["rag_options"] = {"metadata_filter": {"lang": "' OR 1=1 --"}}
    assert (await client.post("/api/v1/knowledge/retrieve", json=body)).json()["chunks"] == []

    r = await client.post(f"/api/v1/knowledge/documents/{file_id}/reindex")
    assert r.status_code == 202
    assert (await wait_job(client, r.json()["job_id"]))["status"] == "completed"
    jobs = (await client.get("/api/v1/knowledge/jobs", params={"file_id": file_id})).json()["jobs"]
    assert len(jobs) == 2
    assert (await client.delete(f"/api/v1/knowledge/documents/{file_id}")).json() == {
        "deleted": True
    }
    assert (await client.delete("/api/v1/knowledge/bases/kettle")).status_code == 200
    assert (await client.get("/api/v1/knowledge/bases/kettle")).status_code == 404


async def test_errors_are_problem_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/knowledge/bases/missing")
    assert r.status_code == 404
    assert "missing" in r.text
    r = await client.post("/api/v1/knowledge/bases", json={"name": "x", "pipeline_id": "a b"})
    assert r.status_code == 400
    await client.post("/api/v1/knowledge/bases", json={"name": "dup", "pipeline_id": "dup"})
    r = await client.post("/api/v1/knowledge/bases", json={"name": "dup", "pipeline_id": "dup"})
    assert r.status_code == 400
    assert "already exists" in r.text
    r = await client.post("/api/v1/knowledge/bases/dup/documents", files={"file": ("a.exe", b"MZ")})
    assert r.status_code == 400
    assert "takes" in r.text
    r = await client.post(
        "/api/v1/knowledge/bases/dup/documents",
        files={"file": ("a.txt", b"hello")},
        data={"metadata": "[1]"},
    )
    assert r.status_code == 400
    assert "metadata" in r.text
    # form fields are JSON a client sent, as a body is: depth and number limits, no 500
    hostile = [
        ("metadata", "[" * 50_000 + "]" * 50_000, "nested deeper than 64"),
        ("metadata", '{"n": ' + "9" * 5_000 + "}", "not valid JSON"),
        ("tags", "[" * 50_000 + "]" * 50_000, "nested deeper than 64"),
    ]
    for field, value, says in hostile:
        r = await client.post(
            "/api/v1/knowledge/bases/dup/documents",
            files={"file": ("a.txt", b"hello")},
            data={field: value},
        )
        assert r.status_code == 400, r.text
        assert (r.json()["field"], says in r.json()["detail"]) == (field, True)
    r = await client.post("/api/v1/knowledge/retrieve", json={"query": "x", "pipeline_ids": []})
    assert r.status_code == 400
    r = await client.post(
        "/api/v1/knowledge/retrieve",
        json={
            "query": "x",
            "pipeline_ids": ["dup"],
            "rag_options": {"metadata_filter": {"a": [1]}},
        },
    )
    assert r.status_code == 400


async def test_structured_upload_and_filter(client: httpx.AsyncClient) -> None:
    await client.post(
        "/api/v1/knowledge/bases", json={"name": "p", "pipeline_id": "phones", "type": "structured"}
    )
    r = await client.post(
        "/api/v1/knowledge/bases/phones/documents",
        files={"file": ("phones.csv", fixture_bytes("phones.csv"))},
    )
    assert (await wait_job(client, r.json()["job"]["job_id"]))["status"] == "completed"
    r = await client.post(
        "/api/v1/knowledge/retrieve",
        json={
            "query": "3000元以下的手机",
            "rag_options": {"pipeline_ids": ["phones"], "structured_filter": {"price": "2999"}},
        },
    )
    models = sorted(c["metadata"]["model"] for c in r.json()["chunks"])
    assert models == ["Nova X", "百炼手机"]


async def test_openapi_lists_the_knowledge_api(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/api/v1/knowledge/bases",
        "/api/v1/knowledge/bases/{pipeline_id}/documents",
        "/api/v1/knowledge/jobs/{job_id}",
        "/api/v1/knowledge/retrieve",
    ):
        assert path in paths
    assert "RagOptions" in spec["components"]["schemas"]
