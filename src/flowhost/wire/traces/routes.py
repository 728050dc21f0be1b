"""``/api/v1/traces``: list the runs' traces and read one trace as a tree of spans.

Reads the local span store. Spans still queued in this process are written first, so a run's
trace can be read as soon as its response has ended.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from flowhost.exceptions import InvalidInput, NotFound, ServiceUnavailable
from flowhost.store.errors import StoreError
from flowhost.store.traces import SpanRecord, TraceQuery, TraceRepository
from flowhost.tracing.setup import Tracing
from flowhost.wire.http import MAX_OFFSET
from flowhost.wire.traces.models import SpanOut, TraceList, TraceOut, span_out, summary_of

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/traces", tags=["traces"])
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


async def _repository(request: Request) -> TraceRepository:
    tracing: Tracing | None = getattr(request.app.state, "tracing", None)
    if tracing is None:
        raise ServiceUnavailable("tracing is disabled on this server (--disable-tracing)")
    if tracing.repository is None:
        raise ServiceUnavailable("the local span store is not available")
    try:
        await tracing.flush()
    except StoreError as exc:
        raise ServiceUnavailable(f"the trace database is unavailable: {exc.message}") from None
    return tracing.repository


def _utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-12:00 is past the last datetime in UTC
        raise InvalidInput(f"{field}: out of range in UTC", field=field) from None


@router.get("", response_model=TraceList, summary="List traces (one per run), newest first")
async def list_traces(
    request: Request,
    app_id: str | None = Query(None, description="only this app's runs"),
    session_id: str | None = Query(None, description="only this chat session's runs"),
    run_id: str | None = Query(None, description="only this run"),
    status: Literal["completed", "failed", "canceled"] | None = Query(None),
    since: Annotated[
        datetime | None, Query(description="runs started at or after (ISO 8601)")
    ] = None,
    until: Annotated[datetime | None, Query(description="runs started before (ISO 8601)")] = None,
    limit: int = Query(20, ge=1, le=200),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> TraceList:
    repo = await _repository(request)
    query = TraceQuery(
        app_id=app_id,
        session_id=session_id,
        run_id=run_id,
        status=status,
        since=_utc(since, "since"),
        until=_utc(until, "until"),
    )
    try:
        records, total = await repo.list_runs(query, limit=limit, offset=offset)
    except StoreError as exc:
        raise ServiceUnavailable(f"the trace database is unavailable: {exc.message}") from None
    return TraceList(
        traces=[summary_of(r) for r in records], total=total, limit=limit, offset=offset
    )


def build_tree(records: list[SpanRecord]) -> list[SpanOut]:
    """Spans as a forest: children in start order under their parent; orphans are roots."""
    nodes = {r.span_id: span_out(r) for r in records}
    roots: list[SpanOut] = []
    for r in records:
        node = nodes[r.span_id]
        parent = nodes.get(r.parent_span_id) if r.parent_span_id else None
        (parent.children if parent is not None else roots).append(node)
    return roots


@router.get("/{trace_id}", response_model=TraceOut, summary="Get one trace as a tree of spans")
async def get_trace(
    request: Request,
    trace_id: str = Path(description="32 hex digits (X-Trace-Id, otel_trace_id)"),
) -> TraceOut:
    trace_id = trace_id.lower()
    if not _TRACE_ID.match(trace_id):
        raise InvalidInput("trace_id must be 32 hex digits", field="trace_id")
    repo = await _repository(request)
    try:
        records = await repo.get_trace(trace_id)
    except StoreError as exc:
        raise ServiceUnavailable(f"the trace database is unavailable: {exc.message}") from None
    if not records:
        raise NotFound(f"trace {trace_id} not found")
    return TraceOut(trace_id=trace_id, span_count=len(records), spans=build_tree(records))
