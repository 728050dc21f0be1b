"""Complete mode wire models (request body; the SSE payloads are documented in the adapter)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ResponseConfigModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_node_description: bool = False
    include_node_display_name: bool = False
    include_node_output: bool = False
    exclude_nodes: list[str] = Field(default_factory=list)


class RunBody(BaseModel):
    """``POST /run``: the flow inputs, whether to stream, and what node events carry."""

    model_config = ConfigDict(extra="ignore")

    inputs: dict[str, Any] = Field(default_factory=dict, description="the flow inputs")
    stream: bool = Field(True, description="true: SSE events; false: one JSON body")
    response_config: ResponseConfigModel | None = None
