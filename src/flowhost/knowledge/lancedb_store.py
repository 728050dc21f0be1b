"""The embedded default vector store: LanceDB in a local folder or an object-storage URI.

One table per space. Indexes (built by ``maintain`` once a table has rows, i.e. after
ingestion jobs): a bitmap on ``pipeline_id``, a B-tree on ``file_id``, a label-list index on
``labels`` (tags, metadata and structured cells as digests), a full-text index on ``text``
with the ICU tokenizer (Chinese word segmentation; built in partitions of about 50k chunks,
which LanceDB searches in parallel), and, from ``IVF_MIN_ROWS`` rows on, an IVF_FLAT vector
index (about sqrt(rows) partitions).

Filters are applied before ranking (LanceDB's prefilter) in both legs. A search first
counts the rows the filter admits (the scalar indexes answer in about a millisecond; the count
is kept per filter until the table's version changes):

- at most ``EXACT_ROWS`` rows (a rare tag), a ``file_ids`` filter (up to ``FILE_FLAT_ROWS``
  rows), or a table under ``ANN_MIN_ROWS`` rows: exact search, a flat scan of those rows (up
  to ``FLAT_ROWS``, or a few files) or every IVF partition probed, so a narrow filter never
  loses results;
- more: the IVF partitions nearest the query are probed, at least ``MIN_PROBE_FRACTION`` of
  them and enough to expect ``EXACT_ROWS`` admitted rows among them (recall@10 against exact
  search >= 0.98 at 100k chunks for every filter shape of ``bench.knowledge``; a fifth of
  them bought at most 0.02 more recall for 1-2 ms more per search).

Both legs return row ids and scores only; the rows that can make the fused top ``keep`` (default
``limit``) are then read in one ``take`` of two columns, the text and ``hit`` (the rest of what a
hit shows, as JSON): every LanceDB query costs ~1.5 ms however few rows it reads, and each column
read back ~0.2 ms more. (Reading the vector leg's rows while the text leg still runs was slower
on 2 CPUs: both are busy.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

import numpy as np
import pyarrow as pa

from flowhost.jsontext import compact_json, parse_json
from flowhost.knowledge.filters import StoreFilter
from flowhost.knowledge.processes import cpus
from flowhost.knowledge.vectorstore import RRF_K, ChunkRow, Hit, SearchResult

log = logging.getLogger("flowhost.knowledge")

__all__ = [
    "ANN_MIN_ROWS",
    "EXACT_ROWS",
    "IVF_MIN_ROWS",
    "MIN_PROBE_FRACTION",
    "LanceDBStore",
    "nprobes_for",
]

IVF_MIN_ROWS = 4096
MAX_PARTITIONS = 1024  # the IVF index never has more
EXACT_ROWS = 400  # a filter admitting at most this many rows is searched exactly
ANN_MIN_ROWS = 20_000  # below this a table is searched exactly (every partition is cheap)
FLAT_ROWS = 256  # exact search of at most this many rows scans them (else: every partition)
FILE_FLAT_ROWS = 4000  # a file_ids filter up to this many rows: scanned (a file's rows are
# stored together, so reading them back is cheap)
MIN_PROBE_FRACTION = 0.1  # an approximate search probes at least this share of partitions
ADMITTED_CACHE = 4096  # filters whose admitted-row counts are kept
FTS_PARTITION_MB = 8  # full-text index build memory per partition (about 50k chunks)
# Loaded into LanceDB's cache after maintain() and when a table is first opened: a cold IVF
# index makes the first searches 5-10 times slower while its partitions load one by one.
_PREWARM = ("vector_idx", "text_idx", "labels_idx", "pipeline_id_idx", "file_id_idx")
# What a search reads back of a hit. A table keeps it, but for the text, in one JSON column
# ``hit``: reading rows back costs ~0.2 ms a column (2 columns of 12 rows: 1.9 ms, 8: 3.0 ms).
# Tables made before ``hit`` existed keep one column per field (``_FIELDS``) and are read so.
_READ = ["text", "hit"]
_FIELDS = ["chunk_id", "pipeline_id", "file_id", "doc_name", "title", "text", "position", "meta"]


def _schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("pipeline_id", pa.string(), nullable=False),
            pa.field("file_id", pa.string(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("labels", pa.list_(pa.string())),
            pa.field("hit", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def _hit_json(row: ChunkRow) -> str:
    fields = {
        "chunk_id": row.chunk_id,
        "pipeline_id": row.pipeline_id,
        "file_id": row.file_id,
        "doc_name": row.doc_name,
        "title": row.title,
        "position": row.position,
        "meta": row.meta,
    }
    return compact_json(fields)


def _columns(rows: Sequence[ChunkRow], schema: pa.Schema) -> dict[str, Any]:
    """``rows`` as the columns of a table of ``schema`` (this one's, or one per field)."""
    cols: dict[str, Any] = {
        "chunk_id": [r.chunk_id for r in rows],
        "pipeline_id": [r.pipeline_id for r in rows],
        "file_id": [r.file_id for r in rows],
        "text": [r.text for r in rows],
        "labels": [list(r.labels) for r in rows],
    }
    if "hit" in schema.names:
        cols["hit"] = [_hit_json(r) for r in rows]
    else:
        cols["doc_name"] = [r.doc_name for r in rows]
        cols["title"] = [r.title for r in rows]
        cols["position"] = pa.array([r.position for r in rows], pa.int32())
        cols["meta"] = [r.meta_json() for r in rows]
    return cols


def _use_every_cpu() -> None:
    """Let LanceDB compute on every CPU this process may use (unless ``LANCE_CPU_THREADS`` is
    set). LanceDB keeps two cores for I/O and computes on the rest, and on one or two CPUs it
    computes on a single thread: a search's vector and full-text legs then run one after the
    other (2 CPUs here: the pair took the sum of both, 9 ms instead of 5.5)."""
    if "LANCE_CPU_THREADS" not in os.environ:
        os.environ["LANCE_CPU_THREADS"] = str(max(2, cpus()))


def _partitions_for(rows: int) -> int:
    return max(8, min(MAX_PARTITIONS, int(math.sqrt(rows))))


def _fused_head(vector_ids: list[int], text_ids: list[int], limit: int) -> set[int]:
    """Row ids that can be in ``fuse``'s top ``limit`` (ties at the boundary included)."""
    rrf: dict[int, float] = {}
    for leg in (vector_ids, text_ids):
        for rank, rid in enumerate(leg):
            rrf[rid] = rrf.get(rid, 0.0) + 1.0 / (RRF_K + rank + 1)
    if len(rrf) <= limit:
        return set(rrf)
    cutoff = sorted(rrf.values(), reverse=True)[limit - 1]
    return {rid for rid, score in rrf.items() if score >= cutoff}


def nprobes_for(partitions: int, admitted: int, rows: int) -> int | None:
    """IVF partitions to probe for a filter admitting ``admitted`` of ``rows``; None: exact.

    Exact when the filter is narrow or the table small; otherwise at least
    ``MIN_PROBE_FRACTION`` of the partitions, and enough that about ``EXACT_ROWS`` admitted
    rows lie in the probed ones.
    """
    if admitted <= EXACT_ROWS or rows < ANN_MIN_ROWS:
        return None
    fraction = max(MIN_PROBE_FRACTION, EXACT_ROWS / admitted)
    return min(partitions, max(1, math.ceil(partitions * fraction)))


async def _arrow(query: Any) -> pa.Table:
    """Run a LanceDB query and collect its rows: ``query.to_arrow()`` without the wrapper's
    per-query work for blob columns (which this store's tables do not have), above all its
    ``table.schema()`` round trip to LanceDB's runtime: 0.6 of the 1.4 ms a one-row read takes.
    Falls back to ``to_arrow()`` on a LanceDB whose query object is built otherwise."""
    execute = getattr(getattr(query, "_inner", None), "execute", None)
    if execute is None:
        return cast(pa.Table, await query.to_arrow())
    stream = await execute(max_batch_length=None, timeout=None)
    batches = [batch async for batch in stream]
    return pa.Table.from_batches(batches, schema=stream.schema)


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back (``_READ``, or ``_FIELDS`` of an older table) as a hit's fields."""
    packed = row.get("hit")
    if packed is not None:
        fields: dict[str, Any] = parse_json(packed)
        fields["text"] = row["text"]
        return fields
    meta = row.get("meta")
    return {**row, "meta": parse_json(meta) if meta else {}}


def _hit(fields: dict[str, Any], similarity: float | None, rank: int) -> Hit:
    return Hit(
        chunk_id=fields["chunk_id"],
        pipeline_id=fields["pipeline_id"],
        file_id=fields["file_id"],
        doc_name=fields["doc_name"] or "",
        title=fields["title"] or "",
        text=fields["text"] or "",
        position=int(fields["position"] or 0),
        meta=fields["meta"] or {},
        similarity=similarity,
        rank=rank,
    )


class LanceDBStore:
    """``VectorStore`` on LanceDB (``lancedb.connect_async``)."""

    backend = "lancedb"

    def __init__(self, uri: str, *, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self._storage_options = storage_options
        self._db: Any = None
        self._tables: dict[str, Any] = {}
        self._text_indexed: set[str] = set()  # spaces known to have their full-text index
        self._layouts: dict[str, bool] = {}  # space -> its table has the ``hit`` column
        self._indexed: dict[str, tuple[int, int]] = {}
        # (space, where) -> (table version, rows the filter admits): apps repeat their filters
        self._admitted: dict[tuple[str, str], tuple[int, int]] = {}
        self._lock = asyncio.Lock()
        self._warming: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        _use_every_cpu()
        import lancedb

        if self._db is None:
            # Strong read consistency: another process (the CLI, a replica) may have written.
            self._db = await lancedb.connect_async(
                self.uri,
                read_consistency_interval=timedelta(seconds=0),
                storage_options=self._storage_options,
            )

    async def close(self) -> None:
        for task in list(self._warming):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
                    self._warm_later(table)
        return table

    def _warm_later(self, table: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._prewarm(table))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _prewarm(self, table: Any) -> None:
        """Load the table's indexes into LanceDB's cache (best effort)."""
        try:
            names = {idx.name for idx in await table.list_indices()}
            for name in _PREWARM:
                if name in names:
                    await table.prewarm_index(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a cold cache is slower, never wrong
            log.debug("prewarming %s failed: %s", table.name, exc)

    async def ensure_space(self, space: str, dim: int) -> None:
        async with self._lock:
            if space in self._tables:
                return
            try:  # an existing table may have an earlier layout (see _READ)
                table = await self._db.open_table(space)
            except ValueError:  # LanceDB: "Table '...' was not found"
                table = await self._db.create_table(space, schema=_schema(dim), exist_ok=True)
            field = (await table.schema()).field("vector")
            if field.type.list_size != dim:
                raise ValueError(f"space {space!r} holds {field.type.list_size}-d vectors")
            self._tables[space] = table

    async def add(self, space: str, rows: Sequence[ChunkRow]) -> None:
        if not rows:
            return
        table = await self._table(space)
        schema = await table.schema()
        dim = schema.field("vector").type.list_size
        flat = np.asarray([r.vector for r in rows], dtype=np.float32).reshape(-1)
        cols = _columns(rows, schema)
        cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
        await table.add(pa.table(cols, schema=schema))

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

    async def _ivf(self, space: str, table: Any) -> tuple[int, int]:
        """(about how many partitions the IVF index has, rows it covers); (0, 0): no index."""
        if space not in self._indexed:
            stats = await table.index_stats("vector_idx")
            if stats is None:
                self._indexed[space] = (0, 0)
            else:
                # maintain() builds sqrt(rows) partitions; rows added since then only make
                # this an overestimate (more probes, never fewer).
                rows = stats.num_indexed_rows + stats.num_unindexed_rows
                self._indexed[space] = (_partitions_for(rows), rows)
        return self._indexed[space]

    async def _vector_leg(
        self, space: str, table: Any, query: Any, flt: StoreFilter, admitted: int
    ) -> Any:
        partitions, rows = await self._ivf(space, table)
        if not partitions:
            return await _arrow(query.bypass_vector_index())
        nprobes = nprobes_for(partitions, admitted, rows)
        if flt.file_ids is not None and admitted <= FILE_FLAT_ROWS:
            query = query.bypass_vector_index()  # a few files: always exact
        elif nprobes is None and admitted <= FLAT_ROWS:
            query = query.bypass_vector_index()
        else:
            query = query.nprobes(nprobes or MAX_PARTITIONS)
        return await _arrow(query)

    async def _count_admitted(self, space: str, table: Any, where: str | None, version: int) -> int:
        """Rows ``where`` admits (None: all) in ``version`` of the table, counted once per
        version (the caller asks the version once, ~0.1 ms; counting through the scalar
        indexes costs ~1 ms)."""
        key = (space, where or "")
        known = self._admitted.get(key)
        if known is not None and known[0] == version:
            return known[1]
        admitted = int(await table.count_rows(where))
        if len(self._admitted) >= ADMITTED_CACHE:
            self._admitted.clear()
        self._admitted[key] = (version, admitted)
        return admitted

    async def search(
        self,
        space: str,
        vector: Sequence[float],
        text: str,
        flt: StoreFilter,
        limit: int,
        keep: int | None = None,
    ) -> SearchResult:
        result = await self._search(space, vector, text, flt, limit, keep, strict=True)
        if result is None:
            # A row read back had moved or gone (a compaction or a delete committed between
            # the ranking and the read): rank again on the new version, keeping what is found.
            result = await self._search(space, vector, text, flt, limit, keep, strict=False)
        assert result is not None
        return result

    async def _search(
        self,
        space: str,
        vector: Sequence[float],
        text: str,
        flt: StoreFilter,
        limit: int,
        keep: int | None,
        *,
        strict: bool,
    ) -> SearchResult | None:
        from lancedb.query import MatchQuery

        table = await self._table(space)
        where: str | None = flt.to_lance()
        version = int(await table.version())
        admitted = await self._count_admitted(space, table, where, version)
        # Bases only, and they hold every row of the space: the legs need no filter (a
        # prefilter over every row costs ~1 ms); a row of another base written meanwhile is
        # dropped when read back.
        everything = not flt.is_scoped and admitted == await self._count_admitted(
            space, table, None, version
        )
        if everything:
            where = None
        query_vec = np.asarray(vector, dtype=np.float32)
        fts: asyncio.Future[Any] | None = None
        if text.strip() and await self._has_fts(space, table):
            tq = table.query().nearest_to_text(cast(Any, MatchQuery)(text, "text"))
            if where is not None:
                tq = tq.where(where)
            fts = asyncio.ensure_future(_arrow(tq.select(["_score"]).with_row_id().limit(limit)))
        try:
            vq = table.query().nearest_to(query_vec).distance_type("cosine")
            if where is not None:
                vq = vq.where(where)
            vq = vq.select(["_distance"]).with_row_id().limit(limit)
            vres = await self._vector_leg(space, table, vq, flt, admitted)
            tres = await fts if fts is not None else None
        finally:
            if fts is not None and not fts.done():
                fts.cancel()
        vids: list[int] = vres.column("_rowid").to_pylist()
        dists: list[float] = vres.column("_distance").to_pylist()
        tids: list[int] = tres.column("_rowid").to_pylist() if tres is not None else []
        wanted = _fused_head(vids, tids, min(keep or limit, limit))
        if not wanted:
            return SearchResult()
        need_vectors = bool(wanted - set(vids))
        read = _READ if await self._packed(space, table) else _FIELDS
        cols = [*read, "vector"] if need_vectors else read
        take = table.take_row_ids(sorted(wanted)).select(cols).with_row_id()
        try:
            rows = await _arrow(take)
        except (OSError, RuntimeError, ValueError):  # the row ids' fragment was compacted away
            if strict:
                return None
            raise
        if strict and rows.num_rows != len(wanted):
            return None
        by_id: dict[int, dict[str, Any]] = {}
        sims: dict[int, float] = {}
        if need_vectors and rows.num_rows:
            flat = rows.column("vector").combine_chunks().flatten()
            vecs = np.asarray(flat, dtype=np.float32).reshape(rows.num_rows, -1)
            rows = rows.drop_columns(["vector"])
            sims = dict(
                zip(rows.column("_rowid").to_pylist(), (vecs @ query_vec).tolist(), strict=True)
            )
        bases = set(flt.pipeline_ids)
        for row in rows.to_pylist():
            fields = _fields(row)
            if fields["pipeline_id"] in bases:
                by_id[row["_rowid"]] = fields
        out = SearchResult()
        for rank, (rid, dist) in enumerate(zip(vids, dists, strict=True)):
            if rid in by_id:
                out.vector.append(_hit(by_id[rid], 1.0 - float(dist), rank))
        vsim = {rid: 1.0 - float(d) for rid, d in zip(vids, dists, strict=True)}
        for rank, rid in enumerate(tids):
            if rid in by_id:
                sim = vsim.get(rid, sims.get(rid))
                out.text.append(_hit(by_id[rid], sim, rank))
        return out

    async def _packed(self, space: str, table: Any) -> bool:
        """Whether the space's table keeps a hit's fields in ``hit`` (tables made since)."""
        packed = self._layouts.get(space)
        if packed is None:
            packed = self._layouts[space] = "hit" in (await table.schema()).names
        return packed

    async def _has_fts(self, space: str, table: Any) -> bool:
        # not known yet: asked again (another process may have built it meanwhile)
        if space not in self._text_indexed and "text_idx" in {
            idx.name for idx in await table.list_indices()
        }:
            self._text_indexed.add(space)
        return space in self._text_indexed

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
        stats = await table.stats()
        if names or stats["fragment_stats"]["num_fragments"] > 1:
            # Compact the fragments the writes left (reading rows back, which every search
            # does for its results, slows down with their number) and fold new rows into the
            # existing indexes. Before the first indexes are built, so they cover the
            # compacted files.
            await table.optimize()
        scalar = [
            ("pipeline_id", li.Bitmap()),
            ("file_id", li.BTree()),
            ("labels", li.LabelList()),
        ]
        for column, config in scalar:
            if f"{column}_idx" not in names:
                await table.create_index(column, config=config)
        if "text_idx" not in names:
            fts = li.FTS(
                base_tokenizer="icu",
                stem=False,
                remove_stop_words=False,
                memory_limit=FTS_PARTITION_MB,
            )
            await table.create_index("text", config=fts)
        if "vector_idx" not in names and rows >= IVF_MIN_ROWS:
            await table.create_index(
                "vector",
                config=li.IvfFlat(distance_type="cosine", num_partitions=_partitions_for(rows)),
            )
        self._indexed.pop(space, None)
        self._text_indexed.discard(space)
        await self._prewarm(table)
