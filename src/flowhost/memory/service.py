"""MemoryService: memories and their nodes in the SQL store, recall, background extraction."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, delete, func, insert, select, update

from flowhost.exceptions import InvalidInput, NotFound
from flowhost.history import translate_store_errors
from flowhost.llm.client import LLMClient
from flowhost.llm.connections import ConnectionRegistry
from flowhost.memory.extract import Operation, build_messages, normalise, parse_operations
from flowhost.memory.tables import memory_tables
from flowhost.store import Store
from flowhost.store.records import utcnow

if TYPE_CHECKING:
    from flowhost.knowledge.embedding import Embedder

__all__ = ["MemoryNode", "MemoryRecord", "MemoryService"]

log = logging.getLogger("flowhost.memory")
MAX_CONTENT = 2000


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    memory_id: str
    description: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MemoryNode:
    node_id: str
    memory_id: str
    content: str
    source: str
    created_at: datetime
    updated_at: datetime
    score: float | None = None


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _check_content(content: str) -> str:
    text = content.strip()
    if not text:
        raise InvalidInput("content must not be empty", field="content")
    if len(text) > MAX_CONTENT:
        raise InvalidInput(f"content is longer than {MAX_CONTENT} characters", field="content")
    return text


class MemoryService:
    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        llm: LLMClient,
        connections: ConnectionRegistry,
        *,
        connection: str | None = None,
        model: str | None = None,
        recall_k: int = 5,
        min_score: float = 0.0,
    ) -> None:
        self.store, self.embedder, self.llm, self.connections = store, embedder, llm, connections
        self.connection, self.model = connection, model
        self.recall_k, self.min_score = recall_k, min_score
        self.tables = memory_tables(store.service, MetaData())
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        """Let extractions under way finish (bounded), then stop."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)

    # --- memories -------------------------------------------------------------------------
    async def create_memory(self, description: str | None = None) -> MemoryRecord:
        now = utcnow()
        record = MemoryRecord(
            _new_id("mem_"), (description or None) and description[:500], now, now
        )
        async with translate_store_errors(), self.store.engine.begin() as conn:
            await conn.execute(
                insert(self.tables.memory).values(
                    memory_id=record.memory_id,
                    description=record.description,
                    created_at=now,
                    updated_at=now,
                )
            )
        return record

    async def get_memory(self, memory_id: str) -> MemoryRecord:
        m = self.tables.memory
        async with translate_store_errors(), self.store.engine.connect() as conn:
            row = (
                (await conn.execute(select(m).where(m.c.memory_id == memory_id))).mappings().first()
            )
        if row is None:
            raise NotFound(f"memory {memory_id!r} not found")
        return MemoryRecord(
            row["memory_id"], row["description"], row["created_at"], row["updated_at"]
        )

    async def list_memories(self, *, limit: int, offset: int) -> tuple[list[MemoryRecord], int]:
        m = self.tables.memory
        async with translate_store_errors(), self.store.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(m))).scalar_one()
            rows = (
                await conn.execute(
                    select(m).order_by(m.c.created_at.desc()).limit(limit).offset(offset)
                )
            ).mappings()
            out = [
                MemoryRecord(r["memory_id"], r["description"], r["created_at"], r["updated_at"])
                for r in rows
            ]
        return out, int(total)

    async def delete_memory(self, memory_id: str) -> None:
        await self.get_memory(memory_id)
        async with translate_store_errors(), self.store.engine.begin() as conn:
            await conn.execute(
                delete(self.tables.node).where(self.tables.node.c.memory_id == memory_id)
            )
            await conn.execute(
                delete(self.tables.memory).where(self.tables.memory.c.memory_id == memory_id)
            )

    # --- nodes ----------------------------------------------------------------------------
    def _node(self, row: Any, score: float | None = None) -> MemoryNode:
        return MemoryNode(
            row["node_id"],
            row["memory_id"],
            row["content"],
            row["source"],
            row["created_at"],
            row["updated_at"],
            score,
        )

    async def _rows(self, memory_id: str) -> list[Any]:
        n = self.tables.node
        async with translate_store_errors(), self.store.engine.connect() as conn:
            result = await conn.execute(
                select(n).where(n.c.memory_id == memory_id).order_by(n.c.updated_at.desc())
            )
            return list(result.mappings())

    async def create_node(
        self, memory_id: str, content: str, *, source: str = "api", run_id: str | None = None
    ) -> MemoryNode:
        await self.get_memory(memory_id)
        text = _check_content(content)
        vector = (await self.embedder.embed([text]))[0].tolist()
        now = utcnow()
        values = {
            "node_id": _new_id("node_"),
            "memory_id": memory_id,
            "content": text,
            "embedding": vector,
            "embedding_model": self.embedder.model,
            "source": source,
            "run_id": run_id,
            "hits": 0,
            "created_at": now,
            "updated_at": now,
        }
        async with translate_store_errors(), self.store.engine.begin() as conn:
            await conn.execute(insert(self.tables.node).values(**values))
            await self._touch(conn, memory_id)
        return self._node(values)

    async def _touch(self, conn: Any, memory_id: str) -> None:
        m = self.tables.memory
        await conn.execute(update(m).where(m.c.memory_id == memory_id).values(updated_at=utcnow()))

    async def get_node(self, memory_id: str, node_id: str) -> MemoryNode:
        n = self.tables.node
        async with translate_store_errors(), self.store.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(n).where(n.c.memory_id == memory_id, n.c.node_id == node_id)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"memory node {node_id!r} not found in memory {memory_id!r}")
        return self._node(row)

    async def list_nodes(
        self, memory_id: str, *, limit: int, offset: int
    ) -> tuple[list[MemoryNode], int]:
        await self.get_memory(memory_id)
        rows = await self._rows(memory_id)
        return [self._node(r) for r in rows[offset : offset + limit]], len(rows)

    async def update_node(self, memory_id: str, node_id: str, content: str) -> MemoryNode:
        await self.get_node(memory_id, node_id)
        text = _check_content(content)
        vector = (await self.embedder.embed([text]))[0].tolist()
        n = self.tables.node
        async with translate_store_errors(), self.store.engine.begin() as conn:
            await conn.execute(
                update(n)
                .where(n.c.memory_id == memory_id, n.c.node_id == node_id)
                .values(
                    content=text,
                    embedding=vector,
                    embedding_model=self.embedder.model,
                    updated_at=utcnow(),
                )
            )
            await self._touch(conn, memory_id)
        return await self.get_node(memory_id, node_id)

    async def delete_node(self, memory_id: str, node_id: str) -> None:
        await self.get_node(memory_id, node_id)
        n = self.tables.node
        async with translate_store_errors(), self.store.engine.begin() as conn:
            await conn.execute(delete(n).where(n.c.memory_id == memory_id, n.c.node_id == node_id))

    # --- recall ---------------------------------------------------------------------------
    async def recall(self, memory_id: str, query: str, *, k: int | None = None) -> list[MemoryNode]:
        """The nodes most relevant to ``query``: cosine similarity, ties broken by recency.

        Exact search over one memory's nodes (a memory holds hundreds, not millions), so a
        memory never sees another's nodes and nothing relevant is lost to approximation.
        """
        await self.get_memory(memory_id)
        rows = await self._rows(memory_id)
        if not rows:
            return []
        qv = (await self.embedder.embed([query]))[0].tolist()
        scored = []
        for r in rows:
            emb = r["embedding"]
            score = _cosine(qv, emb) if emb and r["embedding_model"] == self.embedder.model else 0.0
            if score >= self.min_score:
                scored.append((round(score, 3), r["updated_at"], r))
        scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
        return [self._node(r, s) for s, _, r in scored[: k or self.recall_k]]

    # --- extraction -----------------------------------------------------------------------
    def extract_later(self, memory_id: str, message: str, run_id: str) -> None:
        """Extract from ``message`` in the background: never delays or fails the run."""
        task = asyncio.create_task(self._extract_logged(memory_id, message, run_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _extract_logged(self, memory_id: str, message: str, run_id: str) -> None:
        try:
            ops = await self.extract(memory_id, message, run_id)
            log.debug("memory %s: run %s: %d operation(s) applied", memory_id, run_id, len(ops))
        except Exception as exc:
            log.warning("memory %s: extraction for run %s failed: %s", memory_id, run_id, exc)

    async def extract(
        self, memory_id: str, message: str, run_id: str | None = None
    ) -> list[Operation]:
        """Extract facts from ``message`` and apply them; returns the operations applied."""
        lock = self._locks.setdefault(memory_id, asyncio.Lock())
        async with lock:  # one extraction per memory at a time in this process: no duplicates
            rows = await self._rows(memory_id)
            known = {r["node_id"]: r["content"] for r in rows}
            conn = self.connections.get(self.connection)
            model = self.model or conn.model
            if not model:
                raise InvalidInput("no model for memory extraction: set FLOWHOST_MEMORY_MODEL")
            parts = [
                c.delta
                async for c in self.llm.stream_chat(
                    conn,
                    model=model,
                    messages=build_messages(message, list(known.items())),
                    params={"temperature": 0},
                )
            ]
            seen = {normalise(c) for c in known.values()}
            applied: list[Operation] = []
            for op in parse_operations("".join(parts), set(known)):
                key = normalise(op.content)
                if key in seen:
                    continue
                seen.add(key)
                if op.op == "update" and op.node_id:
                    await self.update_node(memory_id, op.node_id, op.content)
                else:
                    await self.create_node(memory_id, op.content, source="extracted", run_id=run_id)
                applied.append(op)
            return applied
