"""Bailian ``doc_references`` from ``knowledge_retrieval`` node outputs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["doc_references"]


def doc_references(output: Iterable[dict[str, Any]], *, start: int = 1) -> list[dict[str, Any]]:
    """Map a ``knowledge_retrieval`` node's output to Bailian ``doc_references`` items.

    ``index_id`` is the reference's number as Bailian uses it ("1", "2", ... the ``[1]`` an
    answer cites); ``start`` continues the numbering across several retrieval nodes. The base
    is kept as ``pipeline_id`` and the similarity as ``score`` (extra keys, which the dashscope
    SDK accepts). Chunks of one document stay separate references, as in Bailian.
    """
    refs = []
    for i, item in enumerate(output):
        if not isinstance(item, dict):
            continue
        refs.append(
            {
                "index_id": str(start + i),
                "title": item.get("title") or item.get("doc_name") or "",
                "doc_id": item.get("doc_id") or "",
                "doc_name": item.get("doc_name") or "",
                "text": item.get("text") or "",
                "images": list(item.get("images") or []),
                "pipeline_id": item.get("index_id") or "",
                "score": item.get("score"),
            }
        )
    return refs
