"""Knowledge bases: ingestion, hybrid retrieval with per-request ``rag_options`` filters.

Integration points (server/app.py):

- at build time ``mount_knowledge(app)`` includes the ``/api/v1/knowledge`` routes (so they are
  in ``/openapi.json``); in the lifespan, once the store is open,
  ``await start_knowledge(app, settings, store, apps)`` builds and starts the service, sets
  ``app.state.knowledge`` and every app's ``NodeServices.extra["knowledge"]``; at shutdown
  ``await stop_knowledge(app)`` (before the store closes).
- ``attach_knowledge(app, settings, store)`` does the mount and builds the service in one call
  for callers that already have a store (the caller awaits ``start()`` / ``close()``).
- ``import flowhost.knowledge.node`` registers the ``knowledge_retrieval`` node type (this
  package's import does it too); the node finds the service in
  ``NodeServices.extra["knowledge"]`` and the request's ``rag_options`` in
  ``RunContext.extra["rag_options"]``.
- ``doc_references(node_output)`` maps the node's output to Bailian ``doc_references``.
- ``flowhost.knowledge.cli.kb``: the ``flowhost kb`` command group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowhost.knowledge import node as _node  # noqa: F401  (registers knowledge_retrieval)
from flowhost.knowledge.filters import RagOptions, parse_rag_options
from flowhost.knowledge.records import Chunk, Document, Job, KnowledgeBase
from flowhost.knowledge.references import doc_references

if TYPE_CHECKING:
    from fastapi import FastAPI

    from flowhost.apps import AppRegistry
    from flowhost.config import Settings
    from flowhost.knowledge.service import KnowledgeService
    from flowhost.store import Store

__all__ = [
    "Chunk",
    "Document",
    "Job",
    "KnowledgeBase",
    "KnowledgeService",
    "RagOptions",
    "attach_knowledge",
    "doc_references",
    "ensure_knowledge",
    "mount_knowledge",
    "needs_knowledge",
    "parse_rag_options",
    "start_knowledge",
    "stop_knowledge",
]


def __getattr__(name: str) -> object:
    # KnowledgeService pulls in numpy and the retrieval code: import it when first asked for
    if name == "KnowledgeService":
        from flowhost.knowledge.service import KnowledgeService

        return KnowledgeService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mount_knowledge(app: FastAPI) -> None:
    """Include the knowledge API router; routes answer 503 until the service is started."""
    from flowhost.wire.knowledge.routes import router

    app.include_router(router)
    if not hasattr(app.state, "knowledge"):
        app.state.knowledge = None


async def start_knowledge(
    app: FastAPI, settings: Settings, store: Store, apps: AppRegistry | None = None
) -> KnowledgeService:
    """Build and start the service; expose it to the routes and to every app's nodes."""
    from flowhost.knowledge.service import KnowledgeService

    service = KnowledgeService(settings, store)
    await service.start()
    app.state.knowledge = service
    for served in apps.apps.values() if apps is not None else ():
        served.services.extra["knowledge"] = service
    return service


def needs_knowledge(apps: AppRegistry) -> bool:
    """Whether a served flow searches knowledge bases or declares some (``knowledge.yaml``)."""
    return any(
        (app.flow.path / "knowledge.yaml").is_file()
        or any(n.spec.type == "knowledge_retrieval" for n in app.flow.nodes.values())
        for app in apps.apps.values()
    )


async def ensure_knowledge(app: FastAPI) -> KnowledgeService:
    """The running service, started now if the server deferred it (no flow needed it).

    Starting opens the vector store (importing LanceDB takes seconds), so servers whose flows
    do not use knowledge bases pay for it only when the knowledge API is first called.
    """
    service: KnowledgeService | None = getattr(app.state, "knowledge", None)
    if service is not None:
        return service
    starter = getattr(app.state, "knowledge_starter", None)
    if starter is None:
        from flowhost.exceptions import ServiceUnavailable

        raise ServiceUnavailable("knowledge bases are not available (the service is not started)")
    started: KnowledgeService = await starter()
    return started


async def stop_knowledge(app: FastAPI, apps: AppRegistry | None = None) -> None:
    service = getattr(app.state, "knowledge", None)
    app.state.knowledge = None
    for served in apps.apps.values() if apps is not None else ():
        served.services.extra.pop("knowledge", None)
    if service is not None:
        await service.close()


def attach_knowledge(app: FastAPI, settings: Settings, store: Store) -> KnowledgeService:
    """Create the service, include the knowledge router and set ``app.state.knowledge``.

    The caller's lifespan must ``await service.start()`` after the store is open and
    ``await service.close()`` before closing the store.
    """
    from flowhost.knowledge.service import KnowledgeService

    mount_knowledge(app)
    service = KnowledgeService(settings, store)
    app.state.knowledge = service
    return service
