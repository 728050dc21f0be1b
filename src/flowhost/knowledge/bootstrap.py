"""Build the knowledge bases a served flow declares in its ``knowledge.yaml``, if missing.

``knowledge.yaml`` sits beside ``flow.dag.yaml``::

    knowledge_bases:
      - pipeline_id: flowhost_docs        # fixed id, so flow.dag.yaml can name it
        name: flowhost documentation
        type: unstructured                # or structured (csv / xlsx rows)
        documents:
          - path: docs/intro_en.md        # relative to the flow folder
            tags: [intro]
            metadata: {lang: en}

At start the service creates each missing base and uploads each document (upload is
idempotent by content, so documents already there are skipped); the worker indexes them in the
background, and a search of such a base waits (up to ``retrieval.DECLARED_WAIT_S``) until the
documents this start added are indexed, so the first question is answered from the whole base.
Replicas starting together are safe: the second ``create`` is refused and skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import yaml

from flowhost.exceptions import FlowDefinitionError, InvalidInput, NotFound
from flowhost.flows.loader import find_flow_file

if TYPE_CHECKING:
    from flowhost.knowledge.service import KnowledgeService

__all__ = ["KNOWLEDGE_FILE", "bootstrap_flows", "read_declarations"]

log = logging.getLogger("flowhost.knowledge")
KNOWLEDGE_FILE = "knowledge.yaml"


def read_declarations(folder: Path) -> list[dict[str, Any]]:
    """The base declarations of one flow folder (empty without knowledge.yaml)."""
    path = folder / KNOWLEDGE_FILE
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise FlowDefinitionError(f"invalid YAML: {exc}", file=str(path)) from exc
    bases = data.get("knowledge_bases") if isinstance(data, dict) else None
    if not isinstance(bases, list) or not all(isinstance(b, dict) for b in bases):
        raise FlowDefinitionError("expected `knowledge_bases:` with a list", file=str(path))
    for b in bases:
        if not b.get("pipeline_id"):
            raise FlowDefinitionError("every knowledge base needs a pipeline_id", file=str(path))
        b["_folder"] = folder
    return bases


def _flow_folders(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    if find_flow_file(path) is not None:
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and find_flow_file(p))


def _declarations(flows: Path) -> list[dict[str, Any]]:
    return [d for folder in _flow_folders(flows.resolve()) for d in read_declarations(folder)]


async def bootstrap_flows(svc: KnowledgeService, flows: Path) -> None:
    for decl in await anyio.to_thread.run_sync(_declarations, flows):
        await _ensure(svc, decl)


async def _ensure(svc: KnowledgeService, decl: dict[str, Any]) -> None:
    pid = str(decl["pipeline_id"])
    folder: Path = decl["_folder"]
    try:
        await svc.repo.get_base(pid)
    except NotFound:
        try:
            await svc.create_base(
                str(decl.get("name") or pid),
                pipeline_id=pid,
                type=decl.get("type", "unstructured"),
                description=decl.get("description"),
                embedding_connection=decl.get("embedding_connection"),
                embedding_model=decl.get("embedding_model"),
                chunk_size=decl.get("chunk_size"),
                chunk_overlap=decl.get("chunk_overlap"),
            )
            log.info("created knowledge base %s from %s", pid, folder / KNOWLEDGE_FILE)
        except InvalidInput as exc:
            if "already exists" not in exc.message:
                raise
    for doc in decl.get("documents") or []:
        path = anyio.Path(folder / str(doc["path"]))
        if not (await path.resolve()).is_relative_to(folder) or not await path.is_file():
            raise FlowDefinitionError(f"document {doc['path']!r} not found", file=str(folder))
        document, job, _ = await svc.add_document(
            pid,
            path.name,
            await path.read_bytes(),
            tags=list(doc.get("tags") or []),
            metadata=dict(doc.get("metadata") or {}),
        )
        await svc.expect_declared(document, job)
