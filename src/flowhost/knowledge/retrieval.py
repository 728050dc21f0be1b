"""Resolve ``rag_options`` against the catalogue, search every space, fuse, threshold.

Resolution (the seed's rules, see ``filters``):

1. Bases: ``rag_options.pipeline_ids`` when given (replacing the app's own), else the node's.
2. Files: a file id counts when its base is among ``rag_options.pipeline_ids``; when some
   count, only those files (and so only their bases) are searched.
3. ``file_ids``, ``tags`` and ``metadata_filter`` apply to unstructured bases only;
   ``structured_filter`` to structured bases only (a filter kind that does not apply to a base
   is ignored for it).
4. A metadata key (or column) that a base's schema does not have matches nothing there:
   that base is not searched.

Bases sharing a space and the same filter are searched with one query (both legs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from flowhost.exceptions import InvalidInput
from flowhost.knowledge.filters import (
    RagOptions,
    StoreFilter,
    meta_label,
    parse_rag_options,
    structured_label,
    tag_label,
)
from flowhost.knowledge.records import Chunk, KnowledgeBase
from flowhost.knowledge.vectorstore import Hit, fuse

if TYPE_CHECKING:
    from flowhost.knowledge.service import KnowledgeService

# How long a search waits for a base declared in knowledge.yaml to finish its first indexing
DECLARED_WAIT_S = 60.0

__all__ = ["DECLARED_WAIT_S", "plan", "retrieve"]

Plan = dict[tuple[str, StoreFilter], list[KnowledgeBase]]


def _base_filter(
    base: KnowledgeBase, opts: RagOptions | None, files: dict[str, str] | None
) -> StoreFilter | None:
    """The filter for one base, or None when the base cannot match."""
    any_labels: tuple[str, ...] | None = None
    all_labels: list[str] = []
    file_ids: tuple[str, ...] | None = None
    if opts is not None and base.type == "unstructured":
        if files is not None:
            file_ids = tuple(sorted(f for f, p in files.items() if p == base.pipeline_id))
        if opts.tags:
            any_labels = tuple(sorted({tag_label(t) for t in opts.tags}))
        for key, value in (opts.metadata_filter or {}).items():
            if key not in base.metadata_keys:
                return None
            all_labels.append(meta_label(key, value))
    if opts is not None and base.type == "structured":
        for key, value in (opts.structured_filter or {}).items():
            if key not in base.columns:
                return None
            all_labels.append(structured_label(key, value))
    return StoreFilter(
        (base.pipeline_id,), file_ids, any_labels, tuple(sorted(set(all_labels))) or None
    )


async def plan(
    svc: KnowledgeService, pipeline_ids: Sequence[str], options: RagOptions | None
) -> Plan:
    """Group the bases to search by (space, filter); pipeline ids of a group are merged."""
    ids = list(options.pipeline_ids) if options and options.pipeline_ids else list(pipeline_ids)
    if not ids:
        raise InvalidInput("no knowledge base to search: give pipeline_ids", field="pipeline_ids")
    bases = await svc.bases_for(ids)
    files: dict[str, str] | None = None
    if options is not None and options.file_ids and options.pipeline_ids:
        owners = await svc.repo.files_of(options.file_ids)
        chosen = set(options.pipeline_ids)
        effective = {f: p for f, p in owners.items() if p in chosen}
        if effective:
            files = effective
            bases = [b for b in bases if b.pipeline_id in set(effective.values())]
    groups: dict[tuple[str, Any], list[KnowledgeBase]] = {}
    filters: dict[tuple[str, Any], StoreFilter] = {}
    for base in bases:
        flt = _base_filter(base, options, files)
        if flt is None or flt.matches_nothing():
            continue
        key = (base.space, (flt.file_ids is not None, flt.any_labels, flt.all_labels))
        groups.setdefault(key, []).append(base)
        prev = filters.get(key)
        if prev is None:
            filters[key] = flt
        else:
            merged_files = None
            if prev.file_ids is not None and flt.file_ids is not None:
                merged_files = tuple(sorted({*prev.file_ids, *flt.file_ids}))
            filters[key] = StoreFilter(
                (*prev.pipeline_ids, *flt.pipeline_ids),
                merged_files,
                prev.any_labels,
                prev.all_labels,
            )
    return {(key[0], filters[key]): group for key, group in groups.items()}


async def retrieve(
    svc: KnowledgeService,
    query: str,
    *,
    pipeline_ids: Sequence[str],
    options: RagOptions | dict[str, Any] | None,
    top_k: int,
    score_threshold: float | None,
) -> list[Chunk]:
    opts = parse_rag_options(options)
    groups = await plan(svc, pipeline_ids, opts)
    if not groups:
        return []
    await svc.wait_declared(
        {b.pipeline_id for bases in groups.values() for b in bases}, DECLARED_WAIT_S
    )
    # One query embedding per embedding model among the bases searched.
    models: dict[tuple[str | None, str], KnowledgeBase] = {}
    for bases in groups.values():
        for base in bases:
            models.setdefault((base.embedding.connection, base.embedding.model), base)
    vectors: dict[tuple[str | None, str], np.ndarray[Any, Any]] = {}
    for key, base in models.items():
        embedder = await svc.embedder_for(base)
        vectors[key] = (await embedder.embed([query]))[0]
    limit = max(2 * top_k, 20)
    searches = []
    for (space, flt), bases in groups.items():
        b = bases[0]
        vec = vectors[(b.embedding.connection, b.embedding.model)]
        # Without a threshold only each group's top_k can reach the answer; with one, hits
        # below it are skipped, so keep all the fused candidates.
        keep = top_k if score_threshold is None else None
        searches.append(svc.vectors.search(space, vec.tolist(), query, flt, limit, keep))
    results = await asyncio.gather(*searches)
    ranked: list[tuple[float, Hit]] = []
    for result in results:
        hits = fuse(result, limit)
        ranked.extend((_rrf_of(hits, i), h) for i, h in enumerate(hits))
    ranked.sort(key=lambda item: (-item[0], -item[1].score, item[1].chunk_id))
    out: list[Chunk] = []
    for _, hit in ranked:
        if score_threshold is not None and hit.score < score_threshold:
            continue
        out.append(_chunk(hit))
        if len(out) == top_k:
            break
    return out


def _rrf_of(hits: list[Hit], index: int) -> float:
    # fuse() returns hits best first; across groups, interleave by rank (ties: higher score).
    return 1.0 / (60 + index + 1)


def _chunk(hit: Hit) -> Chunk:
    meta = hit.meta
    metadata: dict[str, Any] = dict(meta.get("metadata") or {})
    if "row" in meta:
        metadata = {**metadata, **meta["row"]}
    return Chunk(
        chunk_id=hit.chunk_id,
        pipeline_id=hit.pipeline_id,
        file_id=hit.file_id,
        doc_name=hit.doc_name,
        title=hit.title,
        text=hit.text,
        score=hit.score,
        position=hit.position,
        metadata=metadata,
    )
