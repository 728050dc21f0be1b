"""OpenAI chat-completions wire models (the subset a flow can honour; extra fields are kept)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatCompletionRequest", "ChatMessage", "ModelCard", "ModelList", "StreamOptions"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. ``model`` names the app (``default``: the default app).

    flowhost extensions (send them with the SDK's ``extra_body``): ``rag_options`` (knowledge-base
    filters, as Bailian's) and ``memory_id`` (long-term memory).
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    rag_options: dict[str, Any] | None = None
    memory_id: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "flowhost"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
