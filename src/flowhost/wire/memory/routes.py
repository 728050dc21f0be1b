"""The long-term memory API (Bailian's memory and memory-node operations, as REST)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from flowhost.exceptions import ServiceUnavailable
from flowhost.memory import MemoryNode, MemoryRecord, MemoryService
from flowhost.wire.http import MAX_OFFSET

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/memories", tags=["long-term memory"])


class MemoryIn(BaseModel):
    description: str | None = Field(None, max_length=500)


class MemoryOut(BaseModel):
    memory_id: str
    description: str | None
    created_at: datetime
    updated_at: datetime


class MemoryList(BaseModel):
    memories: list[MemoryOut]
    total: int
    limit: int
    offset: int


class NodeIn(BaseModel):
    content: str = Field(
        min_length=1, max_length=2000, description="a fact or preference about the user"
    )


class NodeOut(BaseModel):
    memory_node_id: str
    memory_id: str
    content: str
    source: str = Field(description="api (written through this API) or extracted (from a message)")
    created_at: datetime
    updated_at: datetime


class NodeList(BaseModel):
    memory_nodes: list[NodeOut]
    total: int
    limit: int
    offset: int


def _svc(request: Request) -> MemoryService:
    svc: MemoryService | None = getattr(request.app.state, "memory", None)
    if svc is None:
        raise ServiceUnavailable("long-term memory is disabled on this server")
    return svc


def _mem(r: MemoryRecord) -> MemoryOut:
    return MemoryOut(
        memory_id=r.memory_id,
        description=r.description,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def _node(n: MemoryNode) -> NodeOut:
    return NodeOut(
        memory_node_id=n.node_id,
        memory_id=n.memory_id,
        content=n.content,
        source=n.source,
        created_at=n.created_at,
        updated_at=n.updated_at,
    )


@router.post(
    "", response_model=MemoryOut, status_code=201, summary="Create a memory (CreateMemory)"
)
async def create_memory(request: Request, body: MemoryIn | None = None) -> MemoryOut:
    return _mem(await _svc(request).create_memory(body.description if body else None))


@router.get("", response_model=MemoryList, summary="List memories (ListMemories)")
async def list_memories(
    request: Request,
    limit: int = Query(20, ge=1, le=200),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> MemoryList:
    items, total = await _svc(request).list_memories(limit=limit, offset=offset)
    return MemoryList(memories=[_mem(m) for m in items], total=total, limit=limit, offset=offset)


@router.get("/{memory_id}", response_model=MemoryOut, summary="Get a memory")
async def get_memory(request: Request, memory_id: str) -> MemoryOut:
    return _mem(await _svc(request).get_memory(memory_id))


@router.delete(
    "/{memory_id}", status_code=204, summary="Delete a memory and its nodes (DeleteMemory)"
)
async def delete_memory(request: Request, memory_id: str) -> Response:
    await _svc(request).delete_memory(memory_id)
    return Response(status_code=204)


@router.post(
    "/{memory_id}/nodes", response_model=NodeOut, status_code=201, summary="Add a memory node"
)
async def create_node(request: Request, memory_id: str, body: NodeIn) -> NodeOut:
    return _node(await _svc(request).create_node(memory_id, body.content))


@router.get(
    "/{memory_id}/nodes", response_model=NodeList, summary="List a memory's nodes, newest first"
)
async def list_nodes(
    request: Request,
    memory_id: str,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> NodeList:
    items, total = await _svc(request).list_nodes(memory_id, limit=limit, offset=offset)
    return NodeList(memory_nodes=[_node(n) for n in items], total=total, limit=limit, offset=offset)


@router.get("/{memory_id}/nodes/{node_id}", response_model=NodeOut, summary="Get a memory node")
async def get_node(request: Request, memory_id: str, node_id: str) -> NodeOut:
    return _node(await _svc(request).get_node(memory_id, node_id))


@router.put("/{memory_id}/nodes/{node_id}", response_model=NodeOut, summary="Edit a memory node")
async def update_node(request: Request, memory_id: str, node_id: str, body: NodeIn) -> NodeOut:
    return _node(await _svc(request).update_node(memory_id, node_id, body.content))


@router.delete("/{memory_id}/nodes/{node_id}", status_code=204, summary="Delete a memory node")
async def delete_node(request: Request, memory_id: str, node_id: str) -> Response:
    await _svc(request).delete_node(memory_id, node_id)
    return Response(status_code=204)
