"""Filtered recall against exact search: a narrow filter must never lose results (LanceDB)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from flowhost.knowledge.filters import StoreFilter, meta_label, tag_label
from flowhost.knowledge.lancedb_store import (
    ANN_MIN_ROWS,
    EXACT_ROWS,
    IVF_MIN_ROWS,
    MIN_PROBE_FRACTION,
    LanceDBStore,
    _arrow,
    nprobes_for,
)
from flowhost.knowledge.vectorstore import ChunkRow, fuse

pytestmark = pytest.mark.anyio
N, DIM = IVF_MIN_ROWS + 2000, 64


def corpus(
    rng: np.random.Generator,
    n: int = N,
    dim: int = DIM,
    clusters: int = 40,
    spread: float = 0.6,
) -> tuple[np.ndarray[Any, Any], list[ChunkRow]]:
    """``n`` unit vectors around ``clusters`` centers, as chunks of 4 bases, 20 per file."""
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    picked = centers[rng.integers(0, clusters, n)]
    vecs = picked + spread * rng.standard_normal((n, dim)).astype(np.float32)
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
        for i in range(n)
    ]
    return vecs, rows


@contextlib.asynccontextmanager
async def indexed(
    tmp_path: Any, space: str, rows: list[ChunkRow], dim: int = DIM
) -> AsyncIterator[LanceDBStore]:
    """A store whose ``space`` holds ``rows``, maintained (compacted and indexed)."""
    store = LanceDBStore(str(tmp_path / "lance"))
    await store.open()
    try:
        await store.ensure_space(space, dim)
        await store.add(space, rows)
        await store.maintain(space)
        yield store
    finally:
        await store.close()


async def vector_recalls(
    store: LanceDBStore,
    space: str,
    vecs: np.ndarray[Any, Any],
    allowed: np.ndarray[Any, Any],
    flt: StoreFilter,
    rng: np.random.Generator,
) -> list[float]:
    """recall@10 of the vector leg against exact search over ``allowed``, for 10 queries near
    random corpus vectors."""
    n, dim = vecs.shape
    recalls = []
    for _ in range(10):
        q = vecs[rng.integers(n)] + 0.2 * rng.standard_normal(dim).astype(np.float32)
        q /= np.linalg.norm(q)
        exact = allowed[np.argsort(-(vecs[allowed] @ q))[:10]]
        got = await store.search(space, q.tolist(), "", flt, 10)
        ids = {int(h.chunk_id[1:]) for h in got.vector}
        recalls.append(len(ids & set(exact.tolist())) / min(10, len(allowed)))
    return recalls


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
    async with indexed(tmp_path, "recall", rows) as store:
        table = await store._table("recall")
        assert "vector_idx" in {i.name for i in await table.list_indices()}
        flt, pred = SHAPES[shape]
        allowed = np.array([i for i in range(N) if pred(i)])
        assert await store.count("recall", flt) == len(allowed)
        recalls = await vector_recalls(store, "recall", vecs, allowed, flt, rng)
        assert np.mean(recalls) == 1.0, json.dumps(recalls)


def test_probes_follow_the_filter() -> None:
    rows = 100_000
    assert nprobes_for(316, EXACT_ROWS, rows) is None  # narrow: exact
    assert nprobes_for(316, 50_000, ANN_MIN_ROWS - 1) is None  # small table: exact
    assert nprobes_for(316, rows, rows) == math.ceil(316 * MIN_PROBE_FRACTION)
    # Enough partitions that about EXACT_ROWS admitted rows lie in the probed ones.
    assert nprobes_for(316, 1000, rows) == math.ceil(316 * EXACT_ROWS / 1000)
    assert nprobes_for(316, EXACT_ROWS + 1, rows) == 316


async def test_wide_filters_probe_part_of_the_index_narrow_ones_stay_exact(tmp_path: Any) -> None:
    """At ANN_MIN_ROWS+ rows a wide filter probes some partitions (recall >= 0.95 against
    exact search); a filter admitting at most EXACT_ROWS rows still finds exactly."""
    n, dim = ANN_MIN_ROWS + 4000, 32
    rng = np.random.default_rng(3)
    vecs, rows = corpus(rng, n, dim, clusters=64, spread=0.5)
    shapes: dict[str, tuple[StoreFilter, Callable[[int], bool], float]] = {
        "wide": (StoreFilter(("kb1", "kb2")), lambda i: i % 4 in (1, 2), 0.95),
        "narrow": (
            StoreFilter(("kb0", "kb1", "kb2", "kb3"), None, (tag_label("r5"),)),
            lambda i: i % 97 == 5,
            1.0,
        ),
        # more rows than EXACT_ROWS, but a file_ids filter: still exact
        "files": (
            StoreFilter(("kb0", "kb1", "kb2", "kb3"), tuple(f"file_{k * 31}" for k in range(30))),
            lambda i: i // 20 in {k * 31 for k in range(30)},
            1.0,
        ),
    }
    async with indexed(tmp_path, "ann", rows, dim) as store:
        for name, (flt, pred, floor) in shapes.items():
            allowed = np.array([i for i in range(n) if pred(i)])
            recalls = await vector_recalls(store, "ann", vecs, allowed, flt, rng)
            assert np.mean(recalls) >= floor, (name, json.dumps(recalls))


async def test_reading_only_the_fused_head_gives_the_same_answer(tmp_path: Any) -> None:
    """search(..., keep=k) reads only the rows that can make fuse's top k: same hits, order,
    scores and ranks as fusing the full legs."""
    rng = np.random.default_rng(12)
    vecs, rows = corpus(np.random.default_rng(11))
    async with indexed(tmp_path, "keep", rows) as store:
        flt = StoreFilter(("kb0", "kb1", "kb2", "kb3"))
        for i in range(8):
            q = vecs[rng.integers(N)]
            text = f"topic {i} chunk {i * 7}"
            full = await store.search("keep", q.tolist(), text, flt, 20)
            assert full.vector
            assert full.text
            for keep in (1, 5, 10):
                part = await store.search("keep", q.tolist(), text, flt, 20, keep)
                want = [(h.chunk_id, round(h.score, 5)) for h in fuse(full, keep)]
                got = [(h.chunk_id, round(h.score, 5)) for h in fuse(part, keep)]
                assert got == want
                assert len(part.vector) + len(part.text) < len(full.vector) + len(full.text)


async def test_maintain_compacts_the_writes_and_indexes_them(tmp_path: Any) -> None:
    rng = np.random.default_rng(5)
    vecs, rows = corpus(rng)
    store = LanceDBStore(str(tmp_path / "lance"))
    await store.open()
    try:
        await store.ensure_space("frag", DIM)
        for start in range(0, 3000, 1000):
            await store.add("frag", rows[start : start + 1000])
        table = await store._table("frag")
        assert (await table.stats())["fragment_stats"]["num_fragments"] == 3
        await store.maintain("frag")
        assert (await table.stats())["fragment_stats"]["num_fragments"] == 1
        names = {i.name for i in await table.list_indices()}
        assert {"pipeline_id_idx", "file_id_idx", "labels_idx", "text_idx"} <= names
        await store.add("frag", rows[3000:])  # later writes join the indexes on the next run
        await store.maintain("frag")
        assert "vector_idx" in {i.name for i in await table.list_indices()}
        got = await store.search(
            "frag", vecs[4000].tolist(), "chunk 4000", StoreFilter(("kb0",)), 5
        )
        assert got.vector[0].chunk_id == "c4000"
        assert got.text[0].chunk_id == "c4000"
    finally:
        await store.close()


async def test_the_admitted_count_is_kept_until_the_table_changes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter's rows are counted once per table version: repeated searches reuse the count,
    and a write (a new version) makes the next search count again and find the new rows."""
    from lancedb.table import AsyncTable

    counted: list[str | None] = []
    real = AsyncTable.count_rows

    async def spy(self: AsyncTable, filter: str | None = None) -> int:
        counted.append(filter)
        return await real(self, filter)

    vecs, rows = corpus(np.random.default_rng(3))
    async with indexed(tmp_path, "count", rows[: N - 3]) as store:
        monkeypatch.setattr(AsyncTable, "count_rows", spy)
        flt = StoreFilter(("kb1",))
        for i in range(3):
            await store.search("count", vecs[i].tolist(), "", flt, 5)
        assert counted == [flt.to_lance(), None]  # the filter's rows, and the table's
        last = rows[N - 3]
        assert last.pipeline_id == "kb1"
        await store.add("count", [last])
        got = await store.search("count", vecs[N - 3].tolist(), "", flt, 5)
        assert counted == [flt.to_lance(), None] * 2
        assert got.vector[0].chunk_id == last.chunk_id


async def test_a_filter_naming_every_base_searches_unfiltered_but_returns_only_them(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the bases hold every row of the space the legs run without a prefilter; a row of
    another base that lands between the count and the search is still never returned."""
    vecs, rows = corpus(np.random.default_rng(9))
    async with indexed(tmp_path, "all", rows) as store:
        every = StoreFilter(("kb0", "kb1", "kb2", "kb3"))
        q = vecs[17]
        got = await store.search("all", q.tolist(), "chunk 17", every, 10)
        assert got.vector[0].chunk_id == "c17"
        assert got.text[0].chunk_id == "c17"

        intruder = dataclasses.replace(rows[17], chunk_id="x", pipeline_id="kb9")
        await store.add("all", [intruder])  # the best match for q, in another base

        async def stale(space: str, table: Any, where: str | None, version: int) -> int:
            return N  # as counted before the intruder's write

        monkeypatch.setattr(store, "_count_admitted", stale)
        got = await store.search("all", q.tolist(), "chunk 17", every, 10)
        assert {h.pipeline_id for h in (*got.vector, *got.text)} <= set(every.pipeline_ids)
        assert got.vector[0].chunk_id == "c17"


async def test_lancedb_computes_on_every_cpu_unless_told_otherwise(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 1-2 CPUs LanceDB would compute on one thread (a search's two legs in turn)."""
    import os

    monkeypatch.delenv("LANCE_CPU_THREADS", raising=False)
    store = LanceDBStore(str(tmp_path / "lance"))
    await store.open()
    await store.close()
    assert os.environ["LANCE_CPU_THREADS"] == str(max(2, len(os.sched_getaffinity(0))))
    monkeypatch.setenv("LANCE_CPU_THREADS", "3")
    store = LanceDBStore(str(tmp_path / "lance"))
    await store.open()
    await store.close()
    assert os.environ["LANCE_CPU_THREADS"] == "3"


async def test_queries_run_past_the_wrapper_return_what_to_arrow_returns(tmp_path: Any) -> None:
    """``_arrow`` (the store's way to run a query, without the Python wrapper's per-query
    schema round trip) returns what LanceDB's public ``to_arrow()`` does, for each kind of query
    the store runs, and falls back to ``to_arrow()`` on a query built another way."""
    rng = np.random.default_rng(11)
    vecs, rows = corpus(rng, 300)
    async with indexed(tmp_path, "raw", rows) as store:
        table = await store._table("raw")
        q = vecs[5]
        queries = {
            "vector": lambda: (
                table.query()
                .nearest_to(q)
                .distance_type("cosine")
                .where("pipeline_id = 'kb1'")
                .select(["_distance"])
                .with_row_id()
                .limit(7)
            ),
            "text": lambda: (
                table.query()
                .nearest_to_text("chunk topic")
                .select(["_score"])
                .with_row_id()
                .limit(7)
            ),
            "take": lambda: table.take_row_ids([0, 3, 9]).select(["chunk_id", "text"]),
        }
        for name, make in queries.items():
            expected = await make().to_arrow()
            got = await _arrow(make())
            assert got.num_rows > 0, name
            assert got.equals(expected), name

        class Other:  # a query object without the wrapper's internals
            async def to_arrow(self) -> pa.Table:
                return pa.table({"x": [1]})

        assert (await _arrow(Other())).to_pylist() == [{"x": 1}]


async def test_a_table_made_before_the_hit_column_is_written_and_read_as_before(
    tmp_path: Any,
) -> None:
    """Tables now keep a hit's fields in one JSON column; one made by an earlier flowhost (a
    column per field) takes new rows in its own layout and its searches return the same hits."""
    import lancedb

    rng = np.random.default_rng(13)
    vecs, rows = corpus(rng, 200)
    rows = [
        dataclasses.replace(r, doc_name=f"文档{i}.md", title="Ü", meta={"k": i}, position=i)
        for i, r in enumerate(rows)
    ]
    old = pa.schema(
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
            pa.field("vector", pa.list_(pa.float32(), DIM)),
        ]
    )
    db = await lancedb.connect_async(str(tmp_path / "old"))
    await db.create_table("s", schema=old)
    db.close()
    found = {}
    for layout in ("old", "new"):
        store = LanceDBStore(str(tmp_path / layout))
        await store.open()
        try:
            await store.ensure_space("s", DIM)
            await store.add("s", rows)
            await store.maintain("s")
            names = (await (await store._table("s")).schema()).names
            assert ("hit" in names) == (layout == "new")
            got = await store.search("s", vecs[7].tolist(), "chunk 7", StoreFilter(("kb3",)), 5)
            found[layout] = [dataclasses.astuple(h) for h in (*got.vector, *got.text)]
        finally:
            await store.close()
    assert found["old"] == found["new"]
    hit = next(h for h in found["new"] if h[0] == "c7")
    assert hit[:8] == ("c7", "kb3", "file_0", "文档7.md", "Ü", "chunk 7 about topic 7", 7, {"k": 7})
