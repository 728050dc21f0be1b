"""``POST /v1/chat/completions`` and ``GET /v1/models``: the OpenAI-compatible API."""

from __future__ import annotations

import time

import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from flowhost.exceptions import InvalidInput, NotFound
from flowhost.knowledge.filters import parse_rag_options
from flowhost.server.errors import register_renderer, render_error_info
from flowhost.server.hot import hot
from flowhost.service import RunRequest
from flowhost.wire.chat import openapi_schema, split_messages
from flowhost.wire.http import (
    EventStream,
    client_headers,
    get_service,
    header_parameter,
    read_json_object,
    request_id,
    until_disconnect,
)
from flowhost.wire.openai import adapter
from flowhost.wire.openai.models import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from flowhost.wire.simple.routes import session_headers
from flowhost.wire.sse import dumps

__all__ = ["render_openai_error", "router"]

router = APIRouter(prefix="/v1", tags=["OpenAI compatible"])
_STARTED = int(time.time())


def render_openai_error(
    status: int, code: str, message: str, field: str | None, rid: str
) -> Response:
    headers = {"x-should-retry": "false"} if status >= 500 else None
    return JSONResponse(
        adapter.error_body(status, code, message, field), status_code=status, headers=headers
    )


register_renderer("/v1/", render_openai_error)


class ModelNotFound(NotFound):
    code = "model_not_found"


_SSE_ITEM = {
    "type": "object",
    "description": "`data: <chunk>` and a blank line per event, no `id:` lines; a failure after "
    'the first chunk is `data: {"error": {...}}`; the stream ends with `data: [DONE]`.',
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [
                    openapi_schema(ChatCompletionChunk, mode="serialization"),
                    {"$ref": "#/components/schemas/ErrorResponse"},
                    {"const": "[DONE]"},
                ]
            },
        }
    },
}


@router.get(
    "/models",
    summary="The served apps, as models",
    response_model=ModelList,
    responses={401: {"model": ErrorResponse, "description": "missing or wrong API key"}},
)
async def list_models(request: Request) -> ModelList:
    apps = get_service(request).apps
    ids = ["default", *(a for a in apps.apps if a != "default")]
    return ModelList(data=[ModelCard(id=i, created=_STARTED) for i in ids])


@router.post(
    "/chat/completions",
    summary="Chat with an app",
    description="`model` names the app (`default`: the default app). Streams (SSE) when the "
    "body has `stream: true`. Send `Chat-Session-Id` to use (and extend) the server's session "
    "instead of the earlier messages.",
    response_model=ChatCompletion,
    responses={
        200: {
            "description": "The answer; with `stream: true`, ChatCompletionChunk events.",
            "content": {"text/event-stream": {"itemSchema": _SSE_ITEM}},
        },
        400: {"model": ErrorResponse, "description": "invalid request (param names the field)"},
        401: {"model": ErrorResponse, "description": "missing or wrong API key"},
        404: {"model": ErrorResponse, "description": "model_not_found: no such app"},
        500: {"model": ErrorResponse, "description": "the run failed (NodeFailed, LLMError, ...)"},
    },
    openapi_extra={
        "parameters": [
            header_parameter(
                "Chat-Session-Id",
                "continue this stored session (its turns are the history, not the earlier "
                "messages); the turn is stored in it",
            ),
            header_parameter("Chat-User-Id", "the user the session belongs to (optional)"),
            header_parameter("Memory-Id", "long-term memory (or the body's memory_id)"),
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": openapi_schema(ChatCompletionRequest)}},
        },
    },
)
@hot
async def chat_completions(request: Request) -> Response:
    svc = get_service(request)
    try:
        body = ChatCompletionRequest.model_validate(await read_json_object(request))
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"{field}: {err['msg']}", field=field) from None
    try:
        app = svc.apps.get(body.model)
    except NotFound as exc:
        raise ModelNotFound(exc.message) from None
    flow = app.flow
    if flow.chat_input is None:
        raise InvalidInput(
            f"app {app.app_id!r} is not a chat flow (no input has is_chat_input: true)",
            field="model",
        )
    prompt, history = split_messages(
        [m.model_dump() for m in body.messages],
        chat_input=flow.chat_input,
        chat_output=flow.chat_output,
    )
    client = client_headers(request)
    session_id = client.session_id
    prepared = await svc.prepare(
        RunRequest(
            app_id=app.app_id,
            inputs={flow.chat_input: prompt},
            protocol="openai",
            request_id=request_id(request),
            session_id=session_id,
            user_id=client.user_id or body.user,
            use_session=session_id is not None,
            history=None if session_id else history,
            memory_id=body.memory_id or client.memory_id,
            rag_options=parse_rag_options(body.rag_options),
        )
    )
    key = flow.chat_output or next(iter(flow.outputs), "answer")
    completion = adapter.Completion.new(prepared.run_id, body.model, key)
    headers = session_headers(prepared)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStream(
            adapter.stream(prepared.events(), completion, include_usage=include_usage), headers
        )
    result, error = await until_disconnect(
        request, lambda: adapter.collect(prepared.events(), completion), prepared=prepared
    )
    if error is not None or result is None:
        assert error is not None
        resp = render_error_info(request.url.path, error, prepared.ctx.request_id)
        resp.headers.update(headers)
        return resp
    return Response(dumps(result), media_type="application/json", headers=headers)
