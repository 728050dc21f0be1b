"""The scale-out vector store: a Milvus server through ``pymilvus`` (or milvus-lite for tests).

One collection per space, with a BM25 function on ``text`` (the ``chinese`` analyzer) feeding a
sparse field, so both legs run inside Milvus with the same filter expression. Filters are
compiled by ``StoreFilter.to_milvus``: values go through ``filter_params`` on a server; on
milvus-lite (a ``*.db`` file URI; it lacks expression templates) through ``json.dumps`` — the
values are checked ids and hex digests either way.

``pymilvus``' ``MilvusClient`` is synchronous: every call runs in a worker thread. On a server
the vector index is HNSW and scoped searches raise ``ef`` to at least 16x the limit (512
minimum); milvus-lite only has FLAT (exact).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np

from flowhost.knowledge.filters import StoreFilter
from flowhost.knowledge.vectorstore import MAX_LABELS, ChunkRow, Hit, SearchResult

__all__ = ["MilvusStore"]

_OUTPUT = ["chunk_id", "pipeline_id", "file_id", "doc_name", "title", "text", "position", "meta"]


def _hit(entity: dict[str, Any], similarity: float | None) -> Hit:
    return Hit(
        chunk_id=entity["chunk_id"],
        pipeline_id=entity["pipeline_id"],
        file_id=entity["file_id"],
        doc_name=entity.get("doc_name") or "",
        title=entity.get("title") or "",
        text=entity.get("text") or "",
        position=int(entity.get("position") or 0),
        meta=json.loads(entity["meta"]) if entity.get("meta") else {},
        similarity=similarity,
    )


class MilvusStore:
    """``VectorStore`` on Milvus. ``uri``: ``http://host:19530`` or a milvus-lite ``*.db``."""

    backend = "milvus"

    def __init__(self, uri: str, *, token: str | None = None) -> None:
        self.uri = uri
        self.lite = uri.endswith(".db") and "://" not in uri
        self._token = token
        self._client: Any = None
        self._known: set[str] = set()
        self._lock = threading.Lock()

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            return fn(*args, **kwargs)

        return await anyio.to_thread.run_sync(call)

    async def open(self) -> None:
        from pymilvus import MilvusClient

        if self._client is None:
            kwargs: dict[str, Any] = {"uri": self.uri}
            if self._token:
                kwargs["token"] = self._token
            self._client = await self._run(MilvusClient, **kwargs)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await self._run(client.close)

    def _create(self, space: str, dim: int) -> None:
        from pymilvus import DataType, Function, FunctionType

        with self._lock:
            client = self._client
            if client.has_collection(space):
                desc = client.describe_collection(space)
                for f in desc["fields"]:
                    if f["name"] == "vector" and int(f["params"]["dim"]) != dim:
                        raise ValueError(f"space {space!r} holds {f['params']['dim']}-d vectors")
                self._known.add(space)
                return
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("pipeline_id", DataType.VARCHAR, max_length=64)
            schema.add_field("file_id", DataType.VARCHAR, max_length=64)
            schema.add_field("doc_name", DataType.VARCHAR, max_length=1024)
            schema.add_field("title", DataType.VARCHAR, max_length=1024)
            schema.add_field(
                "text",
                DataType.VARCHAR,
                max_length=65535,
                enable_analyzer=True,
                analyzer_params={"type": "chinese"},
            )
            schema.add_field("position", DataType.INT32)
            schema.add_field(
                "labels",
                DataType.ARRAY,
                element_type=DataType.VARCHAR,
                max_capacity=MAX_LABELS,
                max_length=32,
            )
            schema.add_field("meta", DataType.VARCHAR, max_length=65535)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name="text_bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=["text"],
                    output_field_names=["sparse"],
                )
            )
            index = client.prepare_index_params()
            if self.lite:
                index.add_index("vector", index_type="FLAT", metric_type="COSINE")
            else:
                index.add_index(
                    "vector",
                    index_type="HNSW",
                    metric_type="COSINE",
                    params={"M": 16, "efConstruction": 200},
                )
                for name in ("pipeline_id", "file_id", "labels"):
                    index.add_index(name, index_type="INVERTED")
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
            client.create_collection(
                space, schema=schema, index_params=index, consistency_level="Strong"
            )
            self._known.add(space)

    async def ensure_space(self, space: str, dim: int) -> None:
        if space not in self._known:
            await self._run(self._create, space, dim)

    async def add(self, space: str, rows: Sequence[ChunkRow]) -> None:
        if not rows:
            return
        data = [
            {
                "chunk_id": r.chunk_id,
                "pipeline_id": r.pipeline_id,
                "file_id": r.file_id,
                "doc_name": r.doc_name[:1000],
                "title": r.title[:1000],
                "text": r.text,
                "position": r.position,
                "labels": list(r.labels),
                "meta": r.meta_json(),
                "vector": np.asarray(r.vector, dtype=np.float32).tolist(),
            }
            for r in rows
        ]
        await self._run(self._client.insert, space, data)

    async def _exists(self, space: str) -> bool:
        if space in self._known:
            return True
        return bool(await self._run(self._client.has_collection, space))

    async def delete(self, space: str, pipeline_id: str, file_id: str | None = None) -> None:
        if not await self._exists(space):
            return
        expr, params = StoreFilter((pipeline_id,), (file_id,) if file_id else None).to_milvus(
            bind=not self.lite
        )
        kwargs = {"filter_params": params} if params else {}
        await self._run(self._client.delete, space, filter=expr, **kwargs)

    async def search(
        self,
        space: str,
        vector: Sequence[float],
        text: str,
        flt: StoreFilter,
        limit: int,
        keep: int | None = None,
    ) -> SearchResult:
        expr, params = flt.to_milvus(bind=not self.lite)
        extra: dict[str, Any] = {"filter_params": params} if params else {}
        vparams: dict[str, Any] = {"metric_type": "COSINE"}
        if not self.lite:
            vparams["params"] = {"ef": max(512 if flt.is_scoped else 64, 16 * limit)}
        query_vec = np.asarray(vector, dtype=np.float32)
        vres = self._run(
            self._client.search,
            space,
            data=[query_vec.tolist()],
            anns_field="vector",
            filter=expr,
            limit=limit,
            output_fields=_OUTPUT,
            search_params=vparams,
            **extra,
        )
        out = SearchResult()
        if text.strip():
            tres = self._run(
                self._client.search,
                space,
                data=[text],
                anns_field="sparse",
                filter=expr,
                limit=limit,
                output_fields=[*_OUTPUT, "vector"],
                search_params={"metric_type": "BM25"},
                **extra,
            )
            vhits, thits = await _gather(vres, tres)
        else:
            vhits, thits = await vres, [[]]
        for hit in vhits[0]:
            out.vector.append(_hit(hit["entity"], float(hit["distance"])))
        for hit in thits[0]:
            entity = hit["entity"]
            sim = float(np.asarray(entity.pop("vector"), dtype=np.float32) @ query_vec)
            out.text.append(_hit(entity, sim))
        return out

    async def count(self, space: str, flt: StoreFilter) -> int:
        if not await self._exists(space):
            return 0
        expr, params = flt.to_milvus(bind=not self.lite)
        kwargs = {"filter_params": params} if params else {}
        res = await self._run(
            self._client.query, space, filter=expr, output_fields=["count(*)"], **kwargs
        )
        return int(res[0]["count(*)"]) if res else 0

    async def maintain(self, space: str) -> None:
        if not self.lite and await self._exists(space):
            await self._run(self._client.flush, space)


async def _gather(*awaitables: Any) -> list[Any]:
    results: list[Any] = [None] * len(awaitables)

    async def run(i: int, aw: Any) -> None:
        results[i] = await aw

    async with anyio.create_task_group() as tg:
        for i, aw in enumerate(awaitables):
            tg.start_soon(run, i, aw)
    return results
