"""The chat history API: list, read and delete sessions and their messages (turns).

A ``Chat-User-Id`` header scopes every call to that user's sessions; without it the caller (who
holds the service token) sees all sessions and may filter with ``user_id``.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Header, Path, Query, Request, Response

from flowhost.exceptions import ServiceUnavailable
from flowhost.history import StoreHistory, translate_store_errors
from flowhost.store import ANY_USER, Store, UserScope
from flowhost.store.traces import TraceRepository
from flowhost.wire.history.models import MessageList, MessageOut, SessionList, SessionOut
from flowhost.wire.http import MAX_OFFSET

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/history", tags=["chat history"])

# Ids and offsets are signed 64-bit in every backend: larger values are a 400, not a driver error.


def _store(request: Request) -> Store:
    history = request.app.state.service.history
    if not isinstance(history, StoreHistory):
        raise ServiceUnavailable("chat history is disabled on this server (--no-history)")
    return history.store


def _scope(user_header: str | None) -> UserScope:
    return user_header if user_header is not None else ANY_USER


@router.get("/sessions", response_model=SessionList, summary="List sessions, newest first")
async def list_sessions(
    request: Request,
    user_id: str | None = Query(None, description="only this user's sessions"),
    app_id: str | None = Query(None, description="only this app's sessions"),
    limit: int = Query(20, ge=1, le=200),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    chat_user_id: str | None = Header(None),
) -> SessionList:
    if chat_user_id is not None:
        user_id = chat_user_id
    async with translate_store_errors():
        records, total = await _store(request).chats.list_sessions(
            user_id=user_id if user_id is not None else ANY_USER,
            app_id=app_id,
            limit=limit,
            offset=offset,
        )
    return SessionList(
        sessions=[SessionOut(**asdict(r)) for r in records], total=total, limit=limit, offset=offset
    )


@router.get("/sessions/{session_id}", response_model=SessionOut, summary="Get a session")
async def get_session(
    request: Request, session_id: str, chat_user_id: str | None = Header(None)
) -> SessionOut:
    async with translate_store_errors():
        record = await _store(request).chats.get_session(session_id, user_id=_scope(chat_user_id))
    return SessionOut(**asdict(record))


@router.get(
    "/sessions/{session_id}/messages",
    response_model=MessageList,
    summary="List a session's messages",
)
async def list_messages(
    request: Request,
    session_id: str,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    chat_user_id: str | None = Header(None),
) -> MessageList:
    store = _store(request)
    async with translate_store_errors():
        await store.chats.get_session(session_id, user_id=_scope(chat_user_id))
        turns, total = await store.chats.list_turns(session_id, limit=limit, offset=offset)
    return MessageList(
        messages=[MessageOut(**asdict(t)) for t in turns], total=total, limit=limit, offset=offset
    )


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    summary="Delete a session, its messages and its runs' traces",
)
async def delete_session(
    request: Request, session_id: str, chat_user_id: str | None = Header(None)
) -> Response:
    store = _store(request)
    async with translate_store_errors():
        await store.chats.delete_session(session_id, user_id=_scope(chat_user_id))
        # its traces too: they hold the session's messages (spans still queued first)
        tracing = request.app.state.tracing
        if tracing is not None and tracing.pipeline is not None:
            await tracing.pipeline.flush()
        await TraceRepository.for_store(store).delete_session(session_id)
    return Response(status_code=204)


@router.delete(
    "/sessions/{session_id}/messages/{message_id}", status_code=204, summary="Delete one message"
)
async def delete_message(
    request: Request,
    session_id: str,
    message_id: int = Path(ge=1, le=MAX_OFFSET, description="the message's id"),
    chat_user_id: str | None = Header(None),
) -> Response:
    async with translate_store_errors():
        await _store(request).chats.delete_turn(
            session_id, message_id, user_id=_scope(chat_user_id)
        )
    return Response(status_code=204)
