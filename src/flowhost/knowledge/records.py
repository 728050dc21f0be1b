"""The knowledge catalogue's records (pydantic, so the HTTP API returns them as they are)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BaseKind",
    "Chunk",
    "Document",
    "DocumentStatus",
    "EmbeddingInfo",
    "Job",
    "JobStatus",
    "KnowledgeBase",
    "utcnow",
]

BaseKind = Literal["unstructured", "structured"]
DocumentStatus = Literal["pending", "running", "completed", "failed"]
JobStatus = Literal["pending", "running", "completed", "failed"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class EmbeddingInfo(_Record):
    """The embedding a base was built with; a base never mixes models."""

    connection: str | None = Field(None, description="connection name; null: packaged model")
    model: str
    dim: int


class KnowledgeBase(_Record):
    pipeline_id: str = Field(description="the knowledge base id (Bailian's pipeline_id)")
    name: str
    description: str | None = None
    type: BaseKind
    embedding: EmbeddingInfo
    columns: list[str] = Field(default_factory=list, description="structured bases: columns")
    metadata_keys: list[str] = Field(
        default_factory=list, description="keys seen in the documents' metadata"
    )
    chunk_size: int
    chunk_overlap: int
    space: str = Field(description="vector-store table/collection holding the chunks")
    created_at: datetime
    updated_at: datetime
    document_count: int | None = None


class Document(_Record):
    file_id: str = Field(description="the document id (Bailian's file_id)")
    pipeline_id: str
    name: str
    file_type: str
    size: int
    sha256: str
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: DocumentStatus
    error: str | None = None
    chunk_count: int = 0
    created_at: datetime
    updated_at: datetime


class Job(_Record):
    job_id: str
    pipeline_id: str
    file_id: str
    status: JobStatus
    error: str | None = Field(None, description="why the job failed")
    progress: int = Field(0, description="chunks embedded so far")
    total: int = Field(0, description="chunks to embed (known once parsed)")
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Chunk(_Record):
    """One retrieved chunk. ``score`` is its cosine similarity to the query."""

    chunk_id: str
    pipeline_id: str
    file_id: str
    doc_name: str
    title: str
    text: str
    score: float
    position: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_node_output(self) -> dict[str, Any]:
        """The ``knowledge_retrieval`` node's item for this chunk."""
        return {
            "index_id": self.pipeline_id,
            "doc_id": self.file_id,
            "doc_name": self.doc_name,
            "title": self.title,
            "text": self.text,
            "score": round(self.score, 6),
            "metadata": dict(self.metadata),
            "images": [],
            "chunk_id": self.chunk_id,
        }
