"""``type: knowledge_retrieval`` nodes: search knowledge bases from a flow.

::

    - name: retrieve
      type: knowledge_retrieval
      inputs:
        query: ${inputs.question}
        pipeline_ids: [flowhost_docs]      # the app's own bases (a list or "a,b")
        top_k: 5                           # default 5
        score_threshold: 0.2               # optional; on the cosine similarity

The request's ``rag_options`` (``RunContext.extra["rag_options"]``) narrow or replace the
bases, as Bailian does. The output is a list of dicts: ``index_id`` (the pipeline id),
``doc_id`` (the file id), ``doc_name``, ``title``, ``text``, ``score``, ``metadata``,
``images``, ``chunk_id``. Importing this module registers the node type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowhost.exceptions import FlowDefinitionError, InvalidInput
from flowhost.flows.loader import NODE_FACTORIES
from flowhost.flows.spec import NodeSpec, Reference
from flowhost.knowledge.filters import parse_rag_options
from flowhost.nodes.base import NodeRuntime

__all__ = ["KnowledgeRetrievalNode", "make_node"]

_KNOWN_INPUTS = frozenset({"query", "top_k", "score_threshold", "pipeline_ids"})


def _ids(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    raise InvalidInput("pipeline_ids must be a list or a comma-separated string")


def _int(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be an integer, not {value!r}") from None


def _float(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be a number, not {value!r}") from None


class KnowledgeRetrievalNode:
    node_type = "knowledge_retrieval"
    streaming = False

    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, inputs: dict[str, Any], rt: NodeRuntime) -> Any:
        service = rt.services.extra.get("knowledge")
        if service is None:
            raise RuntimeError(
                "knowledge bases are not available in this process (no knowledge service)"
            )
        query = inputs.get("query")
        if not isinstance(query, str) or not query.strip():
            return []
        options = parse_rag_options(rt.ctx.extra.get("rag_options"))
        chunks = await service.retrieve(
            query,
            pipeline_ids=_ids(inputs.get("pipeline_ids")),
            options=options,
            top_k=_int(inputs.get("top_k"), "top_k", 5),
            score_threshold=_float(inputs.get("score_threshold"), "score_threshold"),
        )
        rt.trace["knowledge.results"] = len(chunks)
        return [c.to_node_output() for c in chunks]


def make_node(spec: NodeSpec, folder: Path, file: str) -> KnowledgeRetrievalNode:
    """The factory registered in ``NODE_FACTORIES["knowledge_retrieval"]``."""
    if "query" not in spec.inputs:
        raise FlowDefinitionError(
            "needs a `query` input", file=file, node=spec.name, field="inputs"
        )
    unknown = sorted(set(spec.inputs) - _KNOWN_INPUTS)
    if unknown:
        raise FlowDefinitionError(
            f"unknown inputs {unknown}; a knowledge_retrieval node takes {sorted(_KNOWN_INPUTS)}",
            file=file,
            node=spec.name,
            field="inputs",
        )
    ids = spec.inputs.get("pipeline_ids")
    if ids is not None and not isinstance(ids, Reference):
        try:
            _ids(ids)
        except InvalidInput as exc:
            raise FlowDefinitionError(
                exc.message, file=file, node=spec.name, field="inputs.pipeline_ids"
            ) from None
    return KnowledgeRetrievalNode(spec.name)


NODE_FACTORIES["knowledge_retrieval"] = make_node
