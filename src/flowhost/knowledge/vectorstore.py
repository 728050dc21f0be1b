"""The one small protocol every vector store implements, its row and hit types, and fusion.

A *space* is one table (LanceDB) or collection (Milvus) holding the chunks of every knowledge
base that uses the same embedding model and dimension; ``pipeline_id`` is a filtered column.
One search runs the vector leg and the full-text leg with the same filter, applied before
ranking; ``fuse`` merges them with reciprocal-rank fusion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from flowhost.knowledge.filters import StoreFilter

__all__ = [
    "MAX_LABELS",
    "RRF_K",
    "ChunkRow",
    "Hit",
    "SearchResult",
    "VectorStore",
    "fuse",
]

MAX_LABELS = 256
RRF_K = 60


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One chunk as stored. ``labels`` are filter digests (see ``filters``)."""

    chunk_id: str
    pipeline_id: str
    file_id: str
    doc_name: str
    title: str
    text: str
    position: int
    labels: tuple[str, ...]
    meta: dict[str, Any]
    vector: Sequence[float] | np.ndarray[Any, Any]

    def meta_json(self) -> str:
        return json.dumps(self.meta, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class Hit:
    """A found chunk. ``similarity`` is the cosine similarity to the query, when known.

    ``rank`` is the hit's 0-based rank in its leg when the leg holds only some of the hits it
    ranked (a store may read only the rows that can make the fused top ``limit``); -1 means
    "its position in the leg's list".
    """

    chunk_id: str
    pipeline_id: str
    file_id: str
    doc_name: str
    title: str
    text: str
    position: int
    meta: dict[str, Any]
    similarity: float | None = None
    score: float = 0.0
    rank: int = -1


@dataclass(slots=True)
class SearchResult:
    vector: list[Hit] = field(default_factory=list)
    text: list[Hit] = field(default_factory=list)


class VectorStore(Protocol):
    """What the knowledge service needs from a vector database."""

    backend: str

    async def open(self) -> None:
        """Connect. Raises on an unreachable server."""

    async def close(self) -> None: ...

    async def ensure_space(self, space: str, dim: int) -> None:
        """Create the space's table/collection with ``dim``-d vectors if it does not exist."""

    async def add(self, space: str, rows: Sequence[ChunkRow]) -> None: ...

    async def delete(self, space: str, pipeline_id: str, file_id: str | None = None) -> None:
        """Delete a base's chunks, or one file's."""

    async def search(
        self,
        space: str,
        vector: Sequence[float],
        text: str,
        flt: StoreFilter,
        limit: int,
        keep: int | None = None,
    ) -> SearchResult:
        """Vector and full-text candidates (each leg ranks at most ``limit``) matching ``flt``.

        ``keep``: the caller uses only ``fuse(result, keep)``; a store may then return only
        the hits that can make it (with their ``rank``), so it reads fewer rows.
        """

    async def count(self, space: str, flt: StoreFilter) -> int: ...

    async def maintain(self, space: str) -> None:
        """Build or refresh indexes after writes (called after ingestion jobs)."""


def fuse(result: SearchResult, limit: int, k: int = RRF_K) -> list[Hit]:
    """Reciprocal-rank fusion of the two legs; ``score`` is the chunk's cosine similarity.

    The order is by fused rank (a chunk both legs found ranks first); the reported score, the
    one a score threshold applies to, is the cosine similarity (or 0 when unknown).
    """
    fused: dict[str, tuple[float, Hit]] = {}
    for leg in (result.vector, result.text):
        for position, hit in enumerate(leg):
            rank = hit.rank if hit.rank >= 0 else position
            prev = fused.get(hit.chunk_id)
            rrf = 1.0 / (k + rank + 1)
            if prev is None:
                fused[hit.chunk_id] = (rrf, hit)
            else:
                keep = prev[1] if prev[1].similarity is not None else hit
                fused[hit.chunk_id] = (prev[0] + rrf, keep)
    ordered = sorted(fused.values(), key=lambda item: (-item[0], item[1].chunk_id))
    hits = []
    for _, hit in ordered[:limit]:
        hit.score = float(hit.similarity) if hit.similarity is not None else 0.0
        hits.append(hit)
    return hits
