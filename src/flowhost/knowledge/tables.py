"""SQL tables of the knowledge catalogue, per service: bases, documents, file blobs, jobs.

``flowhost_kb_base_<service>``, ``flowhost_kb_doc_<service>``, ``flowhost_kb_blob_<service>``
and ``flowhost_kb_job_<service>`` (the store's naming convention; the service name is already
sanitized to ``[a-z0-9_]``, at most 30 characters). The migration ``k0001_knowledge`` creates
the same tables; tests check that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeEngine

from flowhost.store.schema import MYSQL_TABLE_ARGS, UTCDateTime

__all__ = ["KBNames", "KBTables", "blob_type", "kb_tables"]


def blob_type() -> TypeEngine[bytes]:
    # MySQL's BLOB stops at 64 KiB.
    return LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def text_type() -> TypeEngine[str]:
    return Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


@dataclass(frozen=True, slots=True)
class KBNames:
    service: str

    @property
    def base(self) -> str:
        return f"flowhost_kb_base_{self.service}"

    @property
    def doc(self) -> str:
        return f"flowhost_kb_doc_{self.service}"

    @property
    def blob(self) -> str:
        return f"flowhost_kb_blob_{self.service}"

    @property
    def job(self) -> str:
        return f"flowhost_kb_job_{self.service}"

    @property
    def doc_pipeline_index(self) -> str:
        return f"ix_fh_kbdoc_{self.service}_pipe"

    @property
    def doc_hash_unique(self) -> str:
        return f"uq_fh_kbdoc_{self.service}_hash"

    @property
    def job_status_index(self) -> str:
        return f"ix_fh_kbjob_{self.service}_status"

    @property
    def job_file_index(self) -> str:
        return f"ix_fh_kbjob_{self.service}_file"


@dataclass(frozen=True, slots=True)
class KBTables:
    names: KBNames
    base: Table
    doc: Table
    blob: Table
    job: Table


def kb_tables(service: str, metadata: MetaData | None = None) -> KBTables:
    """The knowledge tables of an (already sanitized) service name."""
    names = KBNames(service)
    metadata = metadata if metadata is not None else MetaData()
    if names.base in metadata.tables:
        t = metadata.tables
        return KBTables(names, t[names.base], t[names.doc], t[names.blob], t[names.job])
    base = Table(
        names.base,
        metadata,
        Column("pipeline_id", String(64), nullable=False),
        Column("name", String(255), nullable=False),
        Column("description", String(1000), nullable=True),
        Column("kind", String(16), nullable=False),
        Column("embedding_connection", String(128), nullable=True),
        Column("embedding_model", String(255), nullable=False),
        Column("embedding_dim", Integer(), nullable=False),
        Column("space", String(128), nullable=False),
        Column("columns", JSON(), nullable=False),
        Column("metadata_keys", JSON(), nullable=False),
        Column("chunk_size", Integer(), nullable=False),
        Column("chunk_overlap", Integer(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        PrimaryKeyConstraint("pipeline_id"),
        **MYSQL_TABLE_ARGS,
    )
    doc = Table(
        names.doc,
        metadata,
        Column("file_id", String(64), nullable=False),
        Column("pipeline_id", String(64), nullable=False),
        Column("name", String(255), nullable=False),
        Column("file_type", String(16), nullable=False),
        Column("size", Integer(), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("tags", JSON(), nullable=False),
        Column("doc_metadata", JSON(), nullable=False),
        Column("status", String(16), nullable=False),
        Column("error", text_type(), nullable=True),
        Column("chunk_count", Integer(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        PrimaryKeyConstraint("file_id"),
        UniqueConstraint("pipeline_id", "sha256", name=names.doc_hash_unique),
        Index(names.doc_pipeline_index, "pipeline_id", "created_at"),
        **MYSQL_TABLE_ARGS,
    )
    blob = Table(
        names.blob,
        metadata,
        Column("file_id", String(64), nullable=False),
        Column("content", blob_type(), nullable=False),
        PrimaryKeyConstraint("file_id"),
        **MYSQL_TABLE_ARGS,
    )
    job = Table(
        names.job,
        metadata,
        Column("job_id", String(64), nullable=False),
        Column("pipeline_id", String(64), nullable=False),
        Column("file_id", String(64), nullable=False),
        Column("status", String(16), nullable=False),
        Column("error", text_type(), nullable=True),
        Column("progress", Integer(), nullable=False),
        Column("total", Integer(), nullable=False),
        Column("attempts", Integer(), nullable=False),
        Column("lease_until", UTCDateTime(), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("started_at", UTCDateTime(), nullable=True),
        Column("finished_at", UTCDateTime(), nullable=True),
        PrimaryKeyConstraint("job_id"),
        Index(names.job_status_index, "status", "created_at"),
        Index(names.job_file_index, "file_id"),
        **MYSQL_TABLE_ARGS,
    )
    return KBTables(names, base, doc, blob, job)
