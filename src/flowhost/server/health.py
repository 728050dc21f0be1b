"""``/health/live`` and ``/health/ready`` (both open: no token; see the middleware's OPEN_PATHS).

- live: the process answers HTTP. A failing liveness probe restarts the container, so it checks
  nothing outside the process.
- ready: the database answers ``SELECT 1`` and, when the knowledge service is running, the vector
  store answers too. Otherwise 503 with an RFC 7807 body naming what is down, so a load balancer
  stops sending traffic to this replica until its dependencies are back. While bases declared in
  knowledge.yaml are still indexing, the 200 body counts their documents left (``indexing``).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from flowhost.wire.http import request_id

__all__ = ["CHECK_TIMEOUT", "router"]

log = logging.getLogger("flowhost.server")
CHECK_TIMEOUT = 5.0  # seconds per dependency; below a typical probe timeout

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="Liveness: the process serves HTTP")
async def live() -> dict[str, Any]:
    return {"status": "ok"}


async def _ping_vectors(vectors: Any) -> None:
    """A cheap round trip to the vector store (the VectorStore protocol has no ping)."""
    ping = getattr(vectors, "ping", None)
    if ping is not None:
        await ping()
        return
    backend = getattr(vectors, "backend", "")
    if backend == "milvus":
        client = getattr(vectors, "_client", None)
        if client is None:
            raise RuntimeError("not connected")
        await anyio.to_thread.run_sync(client.list_collections)
    elif backend == "lancedb":
        db = getattr(vectors, "_db", None)
        if db is None:
            raise RuntimeError("not connected")
        await db.list_tables(limit=1)


async def _check(name: str, call: Any, down: dict[str, str]) -> None:
    """Run one check; on failure record a short reason. The details go to the log only: the
    route is open, so its body says what is down, never a server's error text."""
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            await call()
    except TimeoutError:
        down[name] = f"no answer within {CHECK_TIMEOUT:g}s"
        log.warning("readiness: %s did not answer within %gs", name, CHECK_TIMEOUT)
    except Exception as exc:
        down[name] = "unreachable"
        log.warning("readiness: %s is down: %s", name, getattr(exc, "message", None) or exc)


async def _declared_indexing(knowledge: Any) -> dict[str, int]:
    """Documents the bases declared in knowledge.yaml are still indexing (searches of those
    bases wait for them), per base; informative only: it does not make the replica unready."""
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            indexing: dict[str, int] = await knowledge.declared_indexing()
            return indexing
    except Exception as exc:  # the database answered a moment ago: report nothing this time
        log.debug("readiness: cannot read the declared bases' indexing: %s", exc)
        return {}


@router.get(
    "/health/ready",
    summary="Readiness: the database (and the vector store, when in use) answer",
    responses={
        503: {
            "description": "a dependency is down",
            "content": {"application/problem+json": {"schema": {"type": "object"}}},
        }
    },
)
async def ready(request: Request) -> Response:
    state = request.app.state
    checks: dict[str, str] = {}
    down: dict[str, str] = {}
    store = getattr(state, "store", None)
    if store is None:
        down["database"] = "not open"  # before startup finished or after shutdown began
    else:
        await _check("database", store.ping, down)
    checks["database"] = "ok" if "database" not in down else "down"
    knowledge = getattr(state, "knowledge", None)
    if knowledge is not None:
        vectors = knowledge.vectors
        await _check("vector_store", lambda: _ping_vectors(vectors), down)
        checks["vector_store"] = "ok" if "vector_store" not in down else "down"
    if not down:
        body: dict[str, Any] = {"status": "ok", "checks": checks}
        if knowledge is not None and (indexing := await _declared_indexing(knowledge)):
            body["indexing"] = indexing
        return JSONResponse(body)
    detail = "; ".join(f"{name}: {why}" for name, why in down.items())
    body = {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": f"not ready: {detail}",
        "code": "ServiceUnavailable",
        "request_id": request_id(request),
        "checks": checks,  # each dependency's state, machine-readably
    }
    return JSONResponse(body, status_code=503, media_type="application/problem+json")
