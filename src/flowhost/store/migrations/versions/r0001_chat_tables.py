"""Chat sessions and their turns.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Frozen copy of the schema at this revision: do not import ``flowhost.store.schema`` here, which
follows the newest revision.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from flowhost.store.names import ServiceNames

revision: str = "0001"
down_revision: str | None = None
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
    names = service_names()
    op.create_table(
        names.session_table,
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("app_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("title", sa.String(200), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
        **_MYSQL,
    )
    op.create_index(names.session_user_index, names.session_table, ["user_id", "updated_at"])
    op.create_index(names.session_app_index, names.session_table, ["app_id", "updated_at"])
    op.create_table(
        names.history_table,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("app_id", sa.String(128), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("protocol", sa.String(32), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            [f"{names.session_table}.session_id"],
            name=names.history_session_fk,
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('completed', 'failed', 'canceled')",
            name=names.history_status_check,
        ),
        sqlite_autoincrement=True,
        **_MYSQL,
    )
    op.create_index(names.history_session_index, names.history_table, ["session_id", "id"])


def downgrade() -> None:
    names = service_names()
    op.drop_table(names.history_table)
    op.drop_table(names.session_table)
