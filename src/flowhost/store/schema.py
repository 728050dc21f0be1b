"""SQLAlchemy Core tables, built per service name on a caller-owned ``MetaData``.

The migrations in ``migrations/versions`` create the same tables; ``tests/store`` checks that the
two agree on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

from flowhost.store.names import ServiceNames

__all__ = ["MYSQL_TABLE_ARGS", "Tables", "UTCDateTime", "tables_for"]

MYSQL_TABLE_ARGS: dict[str, Any] = {  # utf8mb4 with binary collation: ids case-sensitive
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; MySQL ``DATETIME(6)`` and SQLite text hold naive UTC. Naive
    values are refused on the way in and made aware (UTC) on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql  # only on MySQL: its dialect is slow to import

            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _id_type() -> TypeEngine[int]:
    # SQLite only auto-increments an INTEGER PRIMARY KEY (a rowid alias).
    return BigInteger().with_variant(Integer(), "sqlite")


@dataclass(frozen=True, slots=True)
class Tables:
    """The chat tables of one service."""

    names: ServiceNames
    session: Table
    history: Table


def tables_for(names: ServiceNames, metadata: MetaData) -> Tables:
    """Define (or return the already defined) chat tables of ``names.service`` on ``metadata``."""
    existing = metadata.tables.get(names.session_table)
    if existing is not None:
        return Tables(names, existing, metadata.tables[names.history_table])
    session = Table(
        names.session_table,
        metadata,
        Column("session_id", String(255), nullable=False),
        Column("app_id", String(128), nullable=False),
        Column("user_id", String(255), nullable=True),
        Column("title", String(200), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        Column("turn_count", Integer(), nullable=False),
        PrimaryKeyConstraint("session_id"),
        Index(names.session_user_index, "user_id", "updated_at"),
        Index(names.session_app_index, "app_id", "updated_at"),
        **MYSQL_TABLE_ARGS,
    )
    history = Table(
        names.history_table,
        metadata,
        Column("id", _id_type(), autoincrement=True, nullable=False),
        Column("session_id", String(255), nullable=False),
        Column("run_id", String(64), nullable=False),
        Column("app_id", String(128), nullable=False),
        Column("inputs", JSON(), nullable=False),
        Column("outputs", JSON(), nullable=True),
        Column("status", String(16), nullable=False),
        Column("error", JSON(), nullable=True),
        Column("protocol", String(32), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("duration_ms", Integer(), nullable=True),
        Column("usage", JSON(), nullable=True),
        PrimaryKeyConstraint("id"),
        ForeignKeyConstraint(
            ["session_id"],
            [f"{names.session_table}.session_id"],
            name=names.history_session_fk,
            ondelete="CASCADE",
        ),
        CheckConstraint(
            "status IN ('completed', 'failed', 'canceled')",
            name=names.history_status_check,
        ),
        Index(names.history_session_index, "session_id", "id"),
        sqlite_autoincrement=True,
        **MYSQL_TABLE_ARGS,
    )
    return Tables(names, session, history)
