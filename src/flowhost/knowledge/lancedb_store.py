"""The embedded default vector store: LanceDB in a local folder or an object-storage URI.

One table per space. Indexes (built by ``maintain`` once a table has rows): a bitmap on
``pipeline_id``, a B-tree on ``file_id``, a label-list index on ``labels`` (tags, metadata and
structured cells as digests), a full-text index on ``text`` with the ICU tokenizer (Chinese
word segmentation), and, from ``IVF_MIN_ROWS`` rows on, an IVF_FLAT vector index.

Searches are exact: every IVF partition is probed (``nprobes`` = partition count), so the
index only serves the vectors from memory and a narrow filter never loses results. Filters are
applied before ranking (LanceDB's default prefilter) in both legs.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

import numpy as np
import pyarrow as pa

from flowhost.knowledge.filters import StoreFilter
from flowhost.knowledge.vectorstore import ChunkRow, Hit, SearchResult

__all__ = ["IVF_MIN_ROWS", "LanceDBStore"]

IVF_MIN_ROWS = 4096
MAX_PARTITIONS = 1024  # the IVF index never has more; probing this many probes all
_COLUMNS = ["chunk_id", "pipeline_id", "file_id", "doc_name", "title", "text", "position", "meta"]


def _schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("pipeline_id", pa.string(), nullable=False),
            pa.field("file_id", pa.string(), nullable=False),
            pa.field("doc_name", pa.string()),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field("position", pa.int32()),
            pa.field("labels", pa.list_(pa.string())),
            pa.field("meta", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def _hit(row: dict[str, Any], similarity: float | None) -> Hit:
    return Hit(
        chunk_id=row["chunk_id"],
        pipeline_id=row["pipeline_id"],
        file_id=row["file_id"],
        doc_name=row["doc_name"] or "",
        title=row["title"] or "",
        text=row["text"] or "",
        position=int(row["position"] or 0),
        meta=json.loads(row["meta"]) if row["meta"] else {},
        similarity=similarity,
    )


class LanceDBStore:
    """``VectorStore`` on LanceDB (``lancedb.connect_async``)."""

    backend = "lancedb"

    def __init__(self, uri: str, *, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self._storage_options = storage_options
        self._db: Any = None
        self._tables: dict[str, Any] = {}
        self._partitions: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        import lancedb

        if self._db is None:
            # Strong read consistency: another process (the CLI, a replica) may have written.
            self._db = await lancedb.connect_async(
                self.uri,
                read_consistency_interval=timedelta(seconds=0),
                storage_options=self._storage_options,
            )

    async def close(self) -> None:
        for table in self._tables.values():
            table.close()
        self._tables.clear()
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _table(self, space: str) -> Any:
        table = self._tables.get(space)
        if table is None:
            async with self._lock:
                table = self._tables.get(space)
                if table is None:
                    table = await self._db.open_table(space)
                    self._tables[space] = table
        return table

    async def ensure_space(self, space: str, dim: int) -> None:
        async with self._lock:
            if space in self._tables:
                return
            table = await self._db.create_table(space, schema=_schema(dim), exist_ok=True)
            field = (await table.schema()).field("vector")
            if field.type.list_size != dim:
                raise ValueError(f"space {space!r} holds {field.type.list_size}-d vectors")
            self._tables[space] = table

    async def add(self, space: str, rows: Sequence[ChunkRow]) -> None:
        if not rows:
            return
        table = await self._table(space)
        dim = (await table.schema()).field("vector").type.list_size
        flat = np.asarray([r.vector for r in rows], dtype=np.float32).reshape(-1)
        data = pa.table(
            {
                "chunk_id": [r.chunk_id for r in rows],
                "pipeline_id": [r.pipeline_id for r in rows],
                "file_id": [r.file_id for r in rows],
                "doc_name": [r.doc_name for r in rows],
                "title": [r.title for r in rows],
                "text": [r.text for r in rows],
                "position": pa.array([r.position for r in rows], pa.int32()),
                "labels": [list(r.labels) for r in rows],
                "meta": [r.meta_json() for r in rows],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat), dim),
            },
            schema=_schema(dim),
        )
        await table.add(data)

    async def _exists(self, space: str) -> bool:
        if space in self._tables:
            return True
        try:
            await self._table(space)
        except ValueError:  # LanceDB: "Table '...' was not found"
            return False
        return True

    async def delete(self, space: str, pipeline_id: str, file_id: str | None = None) -> None:
        if not await self._exists(space):
            return
        table = await self._table(space)
        flt = StoreFilter((pipeline_id,), (file_id,) if file_id else None)
        await table.delete(flt.to_lance())

    async def _nprobes(self, space: str, table: Any) -> int | None:
        """``MAX_PARTITIONS`` (every partition: exact) when the table has a vector index."""
        if space not in self._partitions:
            stats = await table.index_stats("vector_idx")
            self._partitions[space] = MAX_PARTITIONS if stats is not None else 0
        return self._partitions[space] or None

    async def search(
        self, space: str, vector: Sequence[float], text: str, flt: StoreFilter, limit: int
    ) -> SearchResult:
        from lancedb.query import MatchQuery

        table = await self._table(space)
        where = flt.to_lance()
        query_vec = np.asarray(vector, dtype=np.float32)
        vq = (
            table.query()
            .nearest_to(query_vec)
            .distance_type("cosine")
            .where(where)
            .select([*_COLUMNS, "_distance"])
            .limit(limit)
        )
        nprobes = await self._nprobes(space, table)
        vq = vq.nprobes(nprobes) if nprobes else vq.bypass_vector_index()
        legs: list[Any] = [vq.to_arrow()]
        if text.strip() and await self._has_fts(space, table):
            tq = (
                table.query()
                .nearest_to_text(cast(Any, MatchQuery)(text, "text"))
                .where(where)
                .select([*_COLUMNS, "vector", "_score"])
                .limit(limit)
            )
            legs.append(tq.to_arrow())
        results = await asyncio.gather(*legs)
        out = SearchResult()
        for row in results[0].to_pylist():
            out.vector.append(_hit(row, 1.0 - float(row["_distance"])))
        if len(results) > 1 and results[1].num_rows:
            tbl = results[1]
            vecs = np.asarray(tbl.column("vector").combine_chunks().flatten(), dtype=np.float32)
            sims = vecs.reshape(tbl.num_rows, -1) @ query_vec
            for row, sim in zip(
                tbl.drop_columns(["vector", "_score"]).to_pylist(), sims, strict=True
            ):
                out.text.append(_hit(row, float(sim)))
        return out

    async def _has_fts(self, space: str, table: Any) -> bool:
        key = f"fts:{space}"
        if not self._partitions.get(key):
            names = {idx.name for idx in await table.list_indices()}
            self._partitions[key] = 1 if "text_idx" in names else 0
        return bool(self._partitions[key])

    async def count(self, space: str, flt: StoreFilter) -> int:
        if not await self._exists(space):
            return 0
        table = await self._table(space)
        return int(await table.count_rows(flt.to_lance()))

    async def maintain(self, space: str) -> None:
        import lancedb.index as li

        table = await self._table(space)
        rows = await table.count_rows()
        if rows == 0:
            return
        names = {idx.name for idx in await table.list_indices()}
        created = False
        scalar = [
            ("pipeline_id", li.Bitmap()),
            ("file_id", li.BTree()),
            ("labels", li.LabelList()),
        ]
        for column, config in scalar:
            if f"{column}_idx" not in names:
                await table.create_index(column, config=config)
                created = True
        if "text_idx" not in names:
            fts = li.FTS(base_tokenizer="icu", stem=False, remove_stop_words=False)
            await table.create_index("text", config=fts)
            created = True
        if "vector_idx" not in names and rows >= IVF_MIN_ROWS:
            partitions = max(8, min(MAX_PARTITIONS, int(math.sqrt(rows))))
            await table.create_index(
                "vector", config=li.IvfFlat(distance_type="cosine", num_partitions=partitions)
            )
            created = True
        if not created:
            await table.optimize()
        self._partitions.pop(space, None)
        self._partitions.pop(f"fts:{space}", None)
