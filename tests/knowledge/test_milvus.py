"""The Milvus adapter on milvus-lite (small data): the service end to end, filters, injection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kbdocs import fixture_bytes

from flowhost.config import Settings
from flowhost.knowledge import KnowledgeService, RagOptions
from flowhost.store import Store

pytest.importorskip("milvus_lite")
pytestmark = pytest.mark.anyio


@pytest.fixture
async def milvus(kb_settings: Settings, store: Store) -> AsyncIterator[KnowledgeService]:
    settings = kb_settings.model_copy(
        update={"kb_backend": "milvus", "milvus_uri": str(kb_settings.data_dir / "milvus.db")}
    )
    svc = KnowledgeService(settings, store)
    await svc.start()
    yield svc
    await svc.close()


async def ask(svc: KnowledgeService, pid: str, opts: dict[str, Any] | None) -> set[str]:
    options = RagOptions.model_validate(opts) if opts else None
    hits = await svc.retrieve(
        "kettle 保修 水壶", pipeline_ids=[pid], options=options, top_k=10, score_threshold=None
    )
    return {h.file_id for h in hits}


async def test_milvus_lite_filters_and_hybrid_search(milvus: KnowledgeService) -> None:
    base = await milvus.create_base("m")
    pid = base.pipeline_id
    crafted = '\' or 1=1 or "x" == "x'
    f = {}
    for name, tags, meta in [
        ("guide_en.md", ["manual"], {"lang": "en"}),
        ("guide_zh.md", ["manual"], {"lang": "zh"}),
        ("faq_zh.html", [crafted], {"lang": crafted}),
    ]:
        doc, _, _ = await milvus.add_document(
            pid, name, fixture_bytes(name), tags=tags, metadata=meta
        )
        f[name] = doc.file_id
    await milvus.wait_idle()
    assert {d.status for d in await milvus.list_documents(pid)} == {"completed"}
    assert await ask(milvus, pid, None) == set(f.values())
    assert await ask(milvus, pid, {"tags": ["manual"]}) == {f["guide_en.md"], f["guide_zh.md"]}
    assert await ask(milvus, pid, {"metadata_filter": {"lang": "zh"}}) == {f["guide_zh.md"]}
    assert await ask(milvus, pid, {"tags": [crafted]}) == {f["faq_zh.html"]}
    assert await ask(milvus, pid, {"metadata_filter": {"lang": crafted[:-1]}}) == set()
    assert await ask(milvus, pid, {"pipeline_ids": [pid], "file_ids": [f["guide_en.md"]]}) == {
        f["guide_en.md"]
    }
    # the Chinese full-text leg finds the Chinese text
    hits = await milvus.retrieve(
        "除垢 白醋", pipeline_ids=[pid], options=None, top_k=1, score_threshold=None
    )
    assert hits[0].file_id == f["guide_zh.md"]
    await milvus.delete_document(f["guide_zh.md"])
    assert await ask(milvus, pid, {"tags": ["manual"]}) == {f["guide_en.md"]}


async def test_milvus_lite_structured(milvus: KnowledgeService) -> None:
    base = await milvus.create_base("p", type="structured")
    await milvus.add_document(base.pipeline_id, "phones.csv", fixture_bytes("phones.csv"))
    await milvus.wait_idle()
    hits = await milvus.retrieve(
        "手机",
        pipeline_ids=[base.pipeline_id],
        top_k=10,
        score_threshold=None,
        options=RagOptions(structured_filter={"price": "2999", "brand": "百炼"}),
    )
    assert [h.metadata["model"] for h in hits] == ["百炼手机"]
    await milvus.delete_base(base.pipeline_id)
