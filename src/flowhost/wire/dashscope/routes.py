"""``POST /api/v1/apps/{app_id}/completion``: Bailian's application-call API (seed 003)."""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from flowhost.exceptions import InvalidInput
from flowhost.server.errors import register_renderer
from flowhost.server.hot import hot
from flowhost.service import SESSION_ID_RULE, RunRequest, new_session_id
from flowhost.wire.chat import openapi_schema, split_messages
from flowhost.wire.dashscope import adapter
from flowhost.wire.dashscope.models import AppError, AppRequest, AppResponse
from flowhost.wire.http import (
    ClientHeaders,
    EventStream,
    client_headers,
    get_service,
    read_json_object,
    request_id,
    run_headers,
    until_disconnect,
)
from flowhost.wire.sse import dumps

__all__ = ["render_dashscope_error", "router"]

router = APIRouter(prefix="/api/v1", tags=["Bailian application API"])


def render_dashscope_error(
    status: int, code: str, message: str, field: str | None, rid: str
) -> Response:
    return JSONResponse(adapter.error_body(code, message, rid), status_code=status)


register_renderer("/api/v1/apps/", render_dashscope_error)


def _wants_stream(client: ClientHeaders) -> bool:
    return client.dashscope_sse.lower() == "enable" or client.wants_sse


def _parse(body: dict[str, Any]) -> AppRequest:
    try:
        return AppRequest.model_validate(body)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"{field}: {err['msg']}", field=field) from None


def _dict_of_dicts(value: Any, name: str) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InvalidInput(
            f"input.biz_params.{name} must map plugin codes to objects",
            field=f"input.biz_params.{name}",
        )
    return value


_SSE_ITEM = {
    "type": "object",
    "description": "Bailian framing: `id:N`, `event:result` (`event:error` and `status:NNN` for a "
    "failure), `:HTTP_STATUS/200`, one-line `data:`; no `[DONE]`, the stream ends with the body.",
    "required": ["data"],
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string", "enum": ["result", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/AppResponse"},
                    {"$ref": "#/components/schemas/AppError"},
                ]
            },
        },
    },
}


@router.post(
    "/apps/{app_id}/completion",
    summary="Call an app (Bailian-compatible)",
    description="Streams (SSE) with `X-DashScope-SSE: enable` or `Accept: text/event-stream`.",
    response_model=AppResponse,
    responses={
        200: {
            "description": "The answer; streamed, each `data:` line is one AppResponse chunk.",
            "content": {"text/event-stream": {"itemSchema": _SSE_ITEM}},
        },
        400: {"model": AppError, "description": "InvalidParameter: bad body, input or parameter"},
        401: {"model": AppError, "description": "InvalidApiKey: missing or wrong API key"},
        404: {"model": AppError, "description": "NotFound: no such app"},
        500: {"model": AppError, "description": "the run failed (NodeFailed, LLMError, ...)"},
    },
    openapi_extra={
        "parameters": [
            {
                "name": "app_id",
                "in": "path",
                "required": True,
                "description": "the served app (`GET /apps`); `default` is the default app",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": openapi_schema(AppRequest)}},
        },
    },
)
@hot
async def completion(request: Request) -> Response:
    # app_id is read from the path, not declared, so that FastAPI documents no 422: every
    # validation error is a 400 InvalidParameter.
    app_id: str = request.path_params["app_id"]
    svc = get_service(request)
    req = _parse(await read_json_object(request))
    client = client_headers(request)
    app = svc.apps.get(app_id)
    flow = app.flow
    inp, params = req.input, req.parameters
    biz = dict(inp.biz_params or {})
    udp = _dict_of_dicts(biz.pop("user_defined_params", None), "user_defined_params")
    udt = _dict_of_dicts(biz.pop("user_defined_tokens", None), "user_defined_tokens")
    inputs: dict[str, Any] = {k: v for k, v in biz.items() if k in flow.spec.inputs}
    if inp.session_id is not None and not SESSION_ID_RULE.fullmatch(inp.session_id):
        raise InvalidInput(
            "input.session_id must be 32-255 characters of letters, digits, '_', '-' and ':' "
            "(send back the output.session_id of an earlier call)",
            field="input.session_id",
        )
    history = None
    prompt = inp.prompt
    if inp.messages:
        messages = list(inp.messages)
        if prompt is not None:  # the prompt is the new turn; every message is history
            messages.append({"role": "user", "content": prompt})
        prompt, history = split_messages(
            messages,
            chat_input=flow.chat_input or "prompt",
            chat_output=flow.chat_output,
            field="input.messages",
        )
    if prompt is None and not inputs:
        raise InvalidInput("input.prompt (or input.messages) is required", field="input.prompt")
    if prompt is not None:
        target = flow.chat_input or _prompt_input(flow.spec.inputs, inputs)
        if target is not None:
            inputs.setdefault(target, prompt)
    prepared = await svc.prepare(
        RunRequest(
            app_id=app.app_id,
            inputs=inputs,
            protocol="dashscope",
            request_id=request_id(request),
            session_id=inp.session_id,
            user_id=client.user_id,
            history=history if history and not inp.session_id else None,
            user_defined_params=udp,
            user_defined_tokens=udt,
            memory_id=inp.memory_id or None,
            rag_options=params.rag_options,
        )
    )
    opts = adapter.Options(
        session_id=prepared.session_id or inp.session_id or new_session_id(),
        request_id=prepared.ctx.request_id,
        answer_key=flow.chat_output or next(iter(flow.outputs), "text"),
        incremental=bool(params.incremental_output),
        has_thoughts=bool(params.has_thoughts),
        inputs=prepared.inputs,
        display_names={n: c.spec.display_name or n for n, c in flow.nodes.items()},
        secrets=adapter.secrets_of(udt),
    )
    headers = run_headers(prepared)  # X-Trace-Id (the SDK ignores headers; curl users do not)
    if _wants_stream(client):
        return EventStream(adapter.stream(prepared.events(), opts), headers)
    body, error = await until_disconnect(
        request, lambda: adapter.collect(prepared.events(), opts), prepared=prepared
    )
    if error is not None or body is None:
        assert error is not None
        return JSONResponse(
            adapter.error_body(error.code, error.message, opts.request_id),
            status_code=error.status,
            headers=headers,
        )
    return Response(dumps(body), media_type="application/json", headers=headers)


def _prompt_input(specs: dict[str, Any], given: dict[str, Any]) -> str | None:
    """For non-chat flows: the one string input the request has not filled yet."""
    free = [k for k, s in specs.items() if k not in given and s.type == "string"]
    return free[0] if len(free) == 1 else None
