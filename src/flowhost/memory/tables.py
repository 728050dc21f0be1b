"""The memory tables of one service (created by migration ``m0001``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from flowhost.store.schema import MYSQL_TABLE_ARGS, UTCDateTime

__all__ = ["MemoryTables", "memory_tables"]


@dataclass(frozen=True, slots=True)
class MemoryTables:
    memory: Table
    node: Table


def memory_tables(service: str, metadata: MetaData) -> MemoryTables:
    mem_name, node_name = f"flowhost_memory_{service}", f"flowhost_memory_node_{service}"
    if mem_name in metadata.tables:
        return MemoryTables(metadata.tables[mem_name], metadata.tables[node_name])
    memory = Table(
        mem_name,
        metadata,
        Column("memory_id", String(64), nullable=False),
        Column("description", String(500), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        PrimaryKeyConstraint("memory_id"),
        **MYSQL_TABLE_ARGS,
    )
    node = Table(
        node_name,
        metadata,
        Column("node_id", String(64), nullable=False),
        Column("memory_id", String(64), nullable=False),
        Column("content", Text(), nullable=False),
        Column("embedding", JSON(), nullable=True),
        Column("embedding_model", String(128), nullable=True),
        Column("source", String(16), nullable=False),
        Column("run_id", String(64), nullable=True),
        Column("hits", Integer(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        PrimaryKeyConstraint("node_id"),
        ForeignKeyConstraint(
            ["memory_id"],
            [f"{mem_name}.memory_id"],
            name=f"fk_fh_memn_{service}_mem",
            ondelete="CASCADE",
        ),
        Index(f"ix_fh_memn_{service}_mem", "memory_id", "updated_at"),
        **MYSQL_TABLE_ARGS,
    )
    return MemoryTables(memory, node)
