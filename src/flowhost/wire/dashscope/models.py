"""Bailian application-call wire models (seed 003). Unknown and null fields are ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowhost.knowledge.filters import RagOptions
from flowhost.wire.http import null_is_the_default

__all__ = [
    "AppError",
    "AppInput",
    "AppOutput",
    "AppParameters",
    "AppRequest",
    "AppResponse",
    "AppUsage",
    "ModelUsageItem",
    "RagOptions",
    "Thought",
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class AppInput(_Lenient):
    prompt: str | None = Field(None, description="the user's message (fills the flow's chat input)")
    messages: list[dict[str, Any]] | None = Field(
        None, description="chat messages; the last user message is the prompt, earlier ones history"
    )
    session_id: str | None = Field(None, description="continue this conversation (multi-turn)")
    biz_params: dict[str, Any] | None = Field(
        None,
        description="keys fill start-node (flow) inputs of the same name; user_defined_params and "
        "user_defined_tokens reach python nodes through the run context",
    )
    memory_id: str | None = Field(None, description="long-term memory to read and extend")
    image_list: list[str] | None = None
    file_list: list[str] | None = None


class AppParameters(_Lenient):
    incremental_output: bool | None = Field(
        None, description="true: each chunk carries only new text; false/absent: cumulative text"
    )
    has_thoughts: bool | None = Field(
        None, description="stream per-node progress in output.thoughts"
    )
    rag_options: RagOptions | None = Field(None, description="knowledge-base retrieval filters")


class AppRequest(_Lenient):
    model: str | None = None
    input: AppInput
    parameters: AppParameters = Field(default_factory=AppParameters)
    debug: dict[str, Any] | None = None

    nulls_are_defaults = field_validator("parameters", mode="before")(null_is_the_default)


class ModelUsageItem(BaseModel):
    model_id: str
    input_tokens: int
    output_tokens: int


class AppUsage(BaseModel):
    models: list[ModelUsageItem] | None = None


class Thought(BaseModel):
    response: str = Field(
        description="a JSON string: nodeId, nodeName, nodeType, nodeStatus (executing, success, "
        'failed), nodeExecTime ("1844ms"), nodeResult (the node\'s output as a JSON string)'
    )


class AppOutput(BaseModel):
    text: str | None = Field(
        None,
        description="the answer; while streaming the new text (incremental_output) or all so far",
    )
    finish_reason: str = Field(description='"null" (the string) while streaming, "stop" at the end')
    session_id: str = Field(description="send it as input.session_id to continue the conversation")
    thoughts: list[Thought] | None = Field(None, description="per-node progress (has_thoughts)")
    doc_references: list[dict[str, Any]] | None = None


class AppResponse(BaseModel):
    """The JSON body, and with ``X-DashScope-SSE: enable`` each ``data:`` line of the stream."""

    output: AppOutput
    usage: AppUsage | None = None
    request_id: str


class AppError(BaseModel):
    """Error body (and the ``data:`` of an ``event:error`` in a stream)."""

    code: str = Field(description="InvalidApiKey, InvalidParameter, NotFound, NodeFailed, ...")
    message: str
    request_id: str
