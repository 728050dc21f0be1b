"""``POST /run`` (and ``POST /apps/{app_id}/run``): seed 000's complete mode."""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import Response

from flowhost.exceptions import InvalidInput
from flowhost.knowledge.filters import parse_rag_options
from flowhost.server.hot import hot
from flowhost.service import RunRequest
from flowhost.wire.complete import adapter
from flowhost.wire.complete.models import RunBody, inline_schema, refuse_top_level_inputs
from flowhost.wire.http import (
    RUN_HEADER_PARAMETERS,
    EventStream,
    client_headers,
    get_service,
    read_json_object,
    request_id,
    until_disconnect,
)
from flowhost.wire.simple.routes import session_headers
from flowhost.wire.sse import dumps

__all__ = ["router"]

router = APIRouter(tags=["complete mode"])

_DOC: dict[str, Any] = {
    "parameters": RUN_HEADER_PARAMETERS,
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": inline_schema(RunBody),
                "example": {"inputs": {"question": "hi"}, "stream": True},
            }
        },
    },
    "responses": {
        "200": {
            "description": "SSE `data:` events RunStarted, NodeUpdated, RunOutput, RunTerminated "
            "(stream true), or one JSON body with flow_run_info, outputs and node_run_infos.",
            "content": {"text/event-stream": {}, "application/json": {}},
        }
    },
}


def parse_run_body(body: dict[str, Any]) -> RunBody:
    try:
        return RunBody.model_validate(body)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"{field}: {err['msg']}", field=field) from None


async def _complete(request: Request, app_id: str | None) -> Response:
    svc = get_service(request)
    body = await read_json_object(request)
    app = svc.apps.get(app_id)
    refuse_top_level_inputs(body, app.flow.spec.inputs)
    run_body = parse_run_body(body)
    hist_key = app.flow.chat_history
    history = run_body.inputs.get(hist_key) if hist_key else None
    client = client_headers(request)
    prepared = await svc.prepare(
        RunRequest(
            app_id=app_id,
            inputs=run_body.inputs,
            protocol="complete",
            request_id=request_id(request),
            session_id=client.session_id,
            user_id=client.user_id,
            history=history if isinstance(history, list) else None,
            memory_id=client.memory_id,
            rag_options=parse_rag_options(run_body.rag_options),
        )
    )
    rc = run_body.response_config
    cfg = (
        adapter.ResponseConfig(
            include_node_description=rc.include_node_description,
            include_node_display_name=rc.include_node_display_name,
            include_node_output=rc.include_node_output,
            exclude_nodes=frozenset(rc.exclude_nodes),
        )
        if rc
        else adapter.ResponseConfig()
    )
    headers = session_headers(prepared)
    flow = prepared.app.flow
    if run_body.stream:
        return EventStream(adapter.stream(prepared.events(), flow, cfg), headers)
    body, error = await until_disconnect(
        request, lambda: adapter.collect(prepared.events(), flow, cfg), prepared=prepared
    )
    status = 200 if error is None else error.status
    return Response(dumps(body), status_code=status, media_type="application/json", headers=headers)


@router.post("/run", summary="Run the default app (complete mode)", openapi_extra=_DOC)
@hot
async def run_default_complete(request: Request) -> Response:
    return await _complete(request, None)


@router.post("/apps/{app_id}/run", summary="Run an app (complete mode)", openapi_extra=_DOC)
@hot
async def run_app_complete(request: Request, app_id: str) -> Response:
    return await _complete(request, app_id)
