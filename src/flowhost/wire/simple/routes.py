"""``POST /`` (and ``POST /apps/{app_id}``): seed 000's simple mode."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from flowhost.server.errors import render_error_info
from flowhost.server.hot import hot
from flowhost.service import PreparedRun, RunRequest
from flowhost.wire.http import (
    RUN_HEADER_PARAMETERS,
    EventStream,
    client_headers,
    get_service,
    read_json_object,
    request_id,
    run_headers,
    until_disconnect,
)
from flowhost.wire.simple import adapter
from flowhost.wire.sse import dumps

__all__ = ["router", "session_headers"]

router = APIRouter(tags=["simple mode"])

_BODY: dict[str, Any] = {
    "parameters": RUN_HEADER_PARAMETERS,
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "additionalProperties": True},
                "example": {"question": "Where is the capital of France?"},
            }
        },
    },
    "responses": {
        "200": {
            "description": "The flow outputs as JSON, or with `Accept: text/event-stream` a stream "
            'of `event: Message` events whose data is `{"answer": "<fragment>"}`.',
            "content": {
                "application/json": {"example": {"answer": "The capital of France is Paris."}},
                "text/event-stream": {"example": 'event: Message\ndata: {"answer": "Paris"}\n\n'},
            },
        }
    },
}


def session_headers(prepared: PreparedRun) -> dict[str, str]:
    return run_headers(prepared)


async def _simple(request: Request, app_id: str | None) -> Response:
    svc = get_service(request)
    body = await read_json_object(request)
    client = client_headers(request)
    prepared = await svc.prepare(
        RunRequest(
            app_id=app_id,
            inputs=body,
            protocol="simple",
            request_id=request_id(request),
            session_id=client.session_id,
            user_id=client.user_id,
            history=_client_history(body, prepared_key=svc.apps.get(app_id).flow.chat_history),
            memory_id=client.memory_id,
        )
    )
    flow = prepared.app.flow
    headers = session_headers(prepared)
    if client.wants_sse:
        key = flow.chat_output or next(iter(flow.outputs), "answer")
        return EventStream(adapter.stream(prepared.events(), key), headers)
    outputs, error = adapter.answer(
        await until_disconnect(request, prepared.outcome, prepared=prepared)
    )
    if error is not None:
        resp = render_error_info(request.url.path, error, prepared.ctx.request_id)
        resp.headers.update(headers)
        return resp
    return Response(dumps(outputs), media_type="application/json", headers=headers)


def _client_history(
    body: dict[str, Any], *, prepared_key: str | None
) -> list[dict[str, Any]] | None:
    if prepared_key and isinstance(body.get(prepared_key), list):
        return list(body[prepared_key])
    return None


@router.post("/", summary="Run the default app (simple mode)", openapi_extra=_BODY)
@hot
async def run_default_simple(request: Request) -> Response:
    return await _simple(request, None)


@router.post("/apps/{app_id}", summary="Run an app (simple mode)", openapi_extra=_BODY)
@hot
async def run_app_simple(request: Request, app_id: str) -> Response:
    return await _simple(request, app_id)
