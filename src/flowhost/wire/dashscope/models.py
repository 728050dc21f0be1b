"""Bailian application-call wire models (seed 003). Unknown and null fields are ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AppInput",
    "AppOutput",
    "AppParameters",
    "AppRequest",
    "AppResponse",
    "AppUsage",
    "ModelUsageItem",
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
    rag_options: dict[str, Any] | None = Field(None, description="knowledge-base retrieval filters")


class AppRequest(_Lenient):
    model: str | None = None
    input: AppInput
    parameters: AppParameters = Field(default_factory=AppParameters)
    debug: dict[str, Any] | None = None


class ModelUsageItem(BaseModel):
    model_id: str
    input_tokens: int
    output_tokens: int


class AppUsage(BaseModel):
    models: list[ModelUsageItem] | None = None


class AppOutput(BaseModel):
    text: str | None = None
    finish_reason: str
    session_id: str
    thoughts: list[dict[str, Any]] | None = None
    doc_references: list[dict[str, Any]] | None = None


class AppResponse(BaseModel):
    output: AppOutput
    usage: AppUsage | None = None
    request_id: str
