"""Traces: the local span store behind the console (one row per run, its spans as JSON); a
branch of its own beside the chat tables.

Revision ID: t0001
Revises: 0001
Create Date: 2026-11-23

Frozen copy of the schema at this revision: do not import ``flowhost.store.traces`` here, which
follows the newest revision.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from flowhost.store.names import ServiceNames

revision: str = "t0001"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_MYSQL: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def service_names() -> ServiceNames:
    config = op.get_context().config
    if config is None:
        raise RuntimeError("the migration needs the Alembic Config with a service_name")
    return ServiceNames(config.attributes["service_name"])


def _timestamp() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    service = service_names().service
    table = f"flowhost_trace_run_{service}"
    op.create_table(
        table,
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_span_id", sa.String(16), nullable=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("app_id", sa.String(128), nullable=True),
        sa.Column("session_id", sa.String(255), nullable=True),
        sa.Column("start_time", _timestamp(), nullable=False),
        sa.Column("end_time", _timestamp(), nullable=False),
        sa.Column("duration_us", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("spans", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("trace_id", "span_id"),
        **_MYSQL,
    )
    op.create_index(f"ix_fh_trace_{service}_time", table, ["start_time"])
    op.create_index(f"ix_fh_trace_{service}_app", table, ["app_id", "start_time"])
    op.create_index(f"ix_fh_trace_{service}_sess", table, ["session_id", "start_time"])
    op.create_index(f"ix_fh_trace_{service}_run", table, ["run_id"])


def downgrade() -> None:
    op.drop_table(f"flowhost_trace_run_{service_names().service}")
