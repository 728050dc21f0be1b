"""The knowledge API: bases (``pipeline_id``), documents (``file_id``), jobs, retrieve.

Thin routes over ``KnowledgeService`` (``request.app.state.knowledge``); errors are raised as
flowhost exceptions and rendered by the app's handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field

from flowhost.exceptions import InvalidInput, PayloadTooLarge, ServiceUnavailable
from flowhost.knowledge.filters import RagOptions
from flowhost.knowledge.records import BaseKind, Chunk, Document, Job, KnowledgeBase
from flowhost.knowledge.references import doc_references
from flowhost.wire.http import MAX_OFFSET, parse_json_text

if TYPE_CHECKING:
    from flowhost.knowledge.service import KnowledgeService

__all__ = ["router"]


async def _started(request: Request) -> None:
    """Start the knowledge service on first use when the server deferred it."""
    from flowhost.knowledge import ensure_knowledge

    await ensure_knowledge(request.app)


router = APIRouter(prefix="/api/v1/knowledge", tags=["knowledge"], dependencies=[Depends(_started)])


class BaseIn(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    type: BaseKind = "unstructured"
    pipeline_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="choose the id (default: generated)"
    )
    description: str | None = Field(None, max_length=1000)
    embedding_connection: str | None = Field(
        None, description="connection for an embeddings endpoint (default: settings)"
    )
    embedding_model: str | None = None
    chunk_size: int | None = Field(None, ge=50, le=20000)
    chunk_overlap: int | None = Field(None, ge=0, le=5000)


class BaseList(BaseModel):
    bases: list[KnowledgeBase]


class DocumentList(BaseModel):
    documents: list[Document]
    limit: int
    offset: int


class Upload(BaseModel):
    document: Document
    job: Job | None = Field(description="the indexing job; null when the content was already there")
    duplicate: bool = Field(description="true when the same content was uploaded before")


class JobList(BaseModel):
    jobs: list[Job]


class RetrieveIn(BaseModel):
    query: str = Field(min_length=1, max_length=8000)
    pipeline_ids: list[str] = Field(default_factory=list, description="the bases to search")
    top_k: int = Field(5, ge=1, le=100)
    score_threshold: float | None = Field(None, description="minimum cosine similarity")
    rag_options: RagOptions | None = Field(None, description="Bailian rag_options filters")


class RetrieveOut(BaseModel):
    chunks: list[Chunk]
    doc_references: list[dict[str, Any]]


class Deleted(BaseModel):
    deleted: bool = True


def _svc(request: Request) -> KnowledgeService:
    svc: KnowledgeService | None = getattr(request.app.state, "knowledge", None)
    if svc is None:
        raise ServiceUnavailable("knowledge bases are not available (the service is not started)")
    return svc


@router.post("/bases", status_code=201, summary="Create a knowledge base")
async def create_base(body: BaseIn, request: Request) -> KnowledgeBase:
    return await _svc(request).create_base(
        body.name,
        type=body.type,
        pipeline_id=body.pipeline_id,
        description=body.description,
        embedding_connection=body.embedding_connection,
        embedding_model=body.embedding_model,
        chunk_size=body.chunk_size,
        chunk_overlap=body.chunk_overlap,
    )


@router.get("/bases", summary="List knowledge bases")
async def list_bases(request: Request) -> BaseList:
    return BaseList(bases=await _svc(request).list_bases())


@router.get("/bases/{pipeline_id}", summary="Get a knowledge base")
async def get_base(pipeline_id: str, request: Request) -> KnowledgeBase:
    return await _svc(request).get_base(pipeline_id)


@router.delete("/bases/{pipeline_id}", summary="Delete a knowledge base, its documents and chunks")
async def delete_base(pipeline_id: str, request: Request) -> Deleted:
    await _svc(request).delete_base(pipeline_id)
    return Deleted()


def _tags(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v.strip().startswith("["):
            parsed = parse_json_text(v, "tags")
            if not isinstance(parsed, list) or not all(isinstance(t, str) for t in parsed):
                raise InvalidInput("tags: expected a list of strings", field="tags")
            out.extend(parsed)
        else:
            out.extend(t.strip() for t in v.split(",") if t.strip())
    return out


def _metadata(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    parsed = parse_json_text(value, "metadata")
    if not isinstance(parsed, dict):
        raise InvalidInput("metadata: expected a JSON object", field="metadata")
    return parsed


@router.post(
    "/bases/{pipeline_id}/documents",
    status_code=202,
    summary="Upload a document (multipart) and start indexing it",
)
async def upload(
    pipeline_id: str,
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description="txt, md, html, pdf, docx; csv, xlsx")],
    tags: Annotated[list[str], Form(description="tags: repeat the field, or a,b or JSON")] = [],  # noqa: B006
    metadata: Annotated[str | None, Form(description='JSON object, e.g. {"lang": "en"}')] = None,
) -> Upload:
    svc = _svc(request)
    limit = svc.settings.max_body_bytes
    content = await file.read(limit + 1)
    if len(content) > limit:
        raise PayloadTooLarge(f"the file is larger than {limit} bytes")
    doc, job, created = await svc.add_document(
        pipeline_id,
        file.filename or "document",
        content,
        tags=_tags(tags),
        metadata=_metadata(metadata),
    )
    if not created:
        response.status_code = 200
    return Upload(document=doc, job=job, duplicate=not created)


@router.get("/bases/{pipeline_id}/documents", summary="List a base's documents")
async def list_documents(
    pipeline_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DocumentList:
    docs = await _svc(request).list_documents(pipeline_id, limit=limit, offset=offset)
    return DocumentList(documents=docs, limit=limit, offset=offset)


@router.get("/documents/{file_id}", summary="Get a document and its indexing status")
async def get_document(file_id: str, request: Request) -> Document:
    return await _svc(request).get_document(file_id)


@router.delete("/documents/{file_id}", summary="Delete a document and its chunks")
async def delete_document(file_id: str, request: Request) -> Deleted:
    await _svc(request).delete_document(file_id)
    return Deleted()


@router.post("/documents/{file_id}/reindex", status_code=202, summary="Index a document again")
async def reindex(file_id: str, request: Request) -> Job:
    return await _svc(request).reindex_document(file_id)


@router.get("/jobs/{job_id}", summary="Poll an indexing job")
async def get_job(job_id: str, request: Request) -> Job:
    return await _svc(request).get_job(job_id)


@router.get("/jobs", summary="List indexing jobs (newest first)")
async def list_jobs(
    request: Request,
    pipeline_id: str | None = None,
    file_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    jobs = await _svc(request).list_jobs(pipeline_id=pipeline_id, file_id=file_id, limit=limit)
    return JobList(jobs=jobs)


@router.post("/retrieve", summary="Retrieve chunks (hybrid search with rag_options filters)")
async def retrieve(body: RetrieveIn, request: Request) -> RetrieveOut:
    chunks = await _svc(request).retrieve(
        body.query,
        pipeline_ids=body.pipeline_ids,
        options=body.rag_options,
        top_k=body.top_k,
        score_threshold=body.score_threshold,
    )
    return RetrieveOut(
        chunks=chunks, doc_references=doc_references(c.to_node_output() for c in chunks)
    )
