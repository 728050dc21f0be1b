"""Long-term memory: memories and their nodes (a branch of its own beside the chat tables).

Revision ID: m0001
Revises: 0001
Create Date: 2026-11-22

Frozen copy of the schema at this revision: do not import ``flowhost.memory.tables`` here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from flowhost.store.names import ServiceNames

revision: str = "m0001"
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
    return ServiceNames(config.attributes["service_name"]).service


def _timestamp() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    s = _service()
    op.create_table(
        f"flowhost_memory_{s}",
        sa.Column("memory_id", sa.String(64), nullable=False),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("memory_id"),
        **_MYSQL,
    )
    op.create_table(
        f"flowhost_memory_node_{s}",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("memory_id", sa.String(64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("embedding", sa.JSON(), nullable=True),
        sa.Column("embedding_model", sa.String(128), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
        sa.ForeignKeyConstraint(
            ["memory_id"],
            [f"flowhost_memory_{s}.memory_id"],
            name=f"fk_fh_memn_{s}_mem",
            ondelete="CASCADE",
        ),
        **_MYSQL,
    )
    op.create_index(f"ix_fh_memn_{s}_mem", f"flowhost_memory_node_{s}", ["memory_id", "updated_at"])


def downgrade() -> None:
    s = _service()
    op.drop_table(f"flowhost_memory_node_{s}")
    op.drop_table(f"flowhost_memory_{s}")
