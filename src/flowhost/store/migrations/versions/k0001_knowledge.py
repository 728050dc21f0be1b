"""Knowledge bases: bases, documents, file blobs and indexing jobs (a branch beside chat).

Revision ID: k0001
Revises: 0001
Create Date: 2026-11-22

Frozen copy of the schema at this revision: do not import ``flowhost.knowledge.tables`` here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "k0001"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def _service() -> str:
    config = op.get_context().config
    if config is None:
        raise RuntimeError("the migration needs the Alembic Config with a service_name")
    return str(config.attributes["service_name"])


def _ts() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _text() -> sa.types.TypeEngine[Any]:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    s = _service()
    op.create_table(
        f"flowhost_kb_base_{s}",
        sa.Column("pipeline_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.String(1000), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("embedding_connection", sa.String(128), nullable=True),
        sa.Column("embedding_model", sa.String(255), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("space", sa.String(128), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("metadata_keys", sa.JSON(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("chunk_overlap", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("pipeline_id"),
        **_MYSQL,
    )
    op.create_table(
        f"flowhost_kb_doc_{s}",
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("pipeline_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("file_type", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("doc_metadata", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", _text(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("file_id"),
        sa.UniqueConstraint("pipeline_id", "sha256", name=f"uq_fh_kbdoc_{s}_hash"),
        **_MYSQL,
    )
    op.create_index(f"ix_fh_kbdoc_{s}_pipe", f"flowhost_kb_doc_{s}", ["pipeline_id", "created_at"])
    op.create_table(
        f"flowhost_kb_blob_{s}",
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column(
            "content",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("file_id"),
        **_MYSQL,
    )
    op.create_table(
        f"flowhost_kb_job_{s}",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("pipeline_id", sa.String(64), nullable=False),
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", _text(), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("started_at", _ts(), nullable=True),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("job_id"),
        **_MYSQL,
    )
    op.create_index(f"ix_fh_kbjob_{s}_status", f"flowhost_kb_job_{s}", ["status", "created_at"])
    op.create_index(f"ix_fh_kbjob_{s}_file", f"flowhost_kb_job_{s}", ["file_id"])


def downgrade() -> None:
    s = _service()
    for name in ("job", "blob", "doc", "base"):
        op.drop_table(f"flowhost_kb_{name}_{s}")
