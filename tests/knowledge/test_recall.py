"""Filtered recall against exact search: a narrow filter must never lose results (LanceDB)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from flowhost.knowledge.filters import StoreFilter, meta_label, tag_label
from flowhost.knowledge.lancedb_store import IVF_MIN_ROWS, LanceDBStore
from flowhost.knowledge.vectorstore import ChunkRow

pytestmark = pytest.mark.anyio
N, DIM = IVF_MIN_ROWS + 2000, 64


def corpus(rng: np.random.Generator) -> tuple[np.ndarray[Any, Any], list[ChunkRow]]:
    centers = rng.standard_normal((40, DIM)).astype(np.float32)
    vecs = centers[rng.integers(0, 40, N)] + 0.6 * rng.standard_normal((N, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = [
        ChunkRow(
            chunk_id=f"c{i}",
            pipeline_id=f"kb{i % 4}",
            file_id=f"file_{i // 20}",
            doc_name="d",
            title="t",
            text=f"chunk {i} about topic {i % 40}",
            position=i,
            labels=(
                tag_label(f"t{i % 10}"),
                tag_label(f"r{i % 97}"),
                meta_label("k", f"v{i % 50}"),
            ),
            meta={},
            vector=vecs[i],
        )
        for i in range(N)
    ]
    return vecs, rows


SHAPES: dict[str, tuple[StoreFilter, Any]] = {
    "pipeline": (StoreFilter(("kb1",)), lambda i: i % 4 == 1),
    "two pipelines": (StoreFilter(("kb1", "kb2")), lambda i: i % 4 in (1, 2)),
    "files": (
        StoreFilter(("kb0", "kb1", "kb2", "kb3"), ("file_3", "file_250")),
        lambda i: i // 20 in (3, 250),
    ),
    "broad tag": (
        StoreFilter(("kb0", "kb1", "kb2", "kb3"), None, (tag_label("t3"),)),
        lambda i: i % 10 == 3,
    ),
    "narrow tag": (
        StoreFilter(("kb0", "kb1", "kb2", "kb3"), None, (tag_label("r5"),)),
        lambda i: i % 97 == 5,
    ),
    "metadata": (
        StoreFilter(("kb2",), None, None, (meta_label("k", "v6"),)),
        lambda i: i % 4 == 2 and i % 50 == 6,
    ),
    "combined": (
        StoreFilter(("kb1",), None, (tag_label("t1"), tag_label("t5")), (meta_label("k", "v5"),)),
        lambda i: i % 4 == 1 and i % 10 in (1, 5) and i % 50 == 5,
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_filtered_search_equals_exact_search(shape: str, tmp_path: Any) -> None:
    rng = np.random.default_rng(7)
    vecs, rows = corpus(rng)
    store = LanceDBStore(str(tmp_path / "lance"))
    await store.open()
    try:
        await store.ensure_space("recall", DIM)
        await store.add("recall", rows)
        await store.maintain("recall")
        table = await store._table("recall")
        assert "vector_idx" in {i.name for i in await table.list_indices()}
        flt, pred = SHAPES[shape]
        allowed = np.array([i for i in range(N) if pred(i)])
        assert await store.count("recall", flt) == len(allowed)
        recalls = []
        for _ in range(10):
            q = vecs[rng.integers(N)] + 0.2 * rng.standard_normal(DIM).astype(np.float32)
            q /= np.linalg.norm(q)
            exact = allowed[np.argsort(-(vecs[allowed] @ q))[:10]]
            got = await store.search("recall", q.tolist(), "", flt, 10)
            ids = {int(h.chunk_id[1:]) for h in got.vector}
            recalls.append(len(ids & set(exact.tolist())) / min(10, len(allowed)))
        assert np.mean(recalls) == 1.0, json.dumps(recalls)
    finally:
        await store.close()
