"""Complete mode wire models (request body; the SSE payloads are documented in the adapter)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


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
    rag_options: dict[str, Any] | None = Field(
        None, description="knowledge-base retrieval filters (Bailian's rag_options)"
    )

    @field_validator("inputs", "stream", mode="before")
    @classmethod
    def _null_is_the_default(cls, value: Any, info: ValidationInfo) -> Any:
        """Seed 000 gives ``inputs`` the default None ("ignored" for a flow without inputs):
        an explicit null means the default, as an absent field does."""
        if value is None and info.field_name is not None:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return value


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined, for an ``openapi_extra`` body.

    A schema pasted into the OpenAPI document keeps refs like ``#/$defs/X``, which resolve
    against the document's root, where there is no ``$defs``: Swagger UI shows a resolver error.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined
