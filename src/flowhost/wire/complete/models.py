"""Complete mode wire models (request body; the SSE payloads are documented in the adapter)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowhost.exceptions import InvalidInput
from flowhost.wire.http import null_is_the_default


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

    # seed 000 gives inputs the default None ("ignored" for a flow without inputs)
    nulls_are_defaults = field_validator("inputs", "stream", mode="before")(null_is_the_default)


def refuse_top_level_inputs(body: dict[str, Any], names: Iterable[str]) -> None:
    """Simple mode takes the flow inputs as the body, complete mode under ``inputs``: a body
    without ``inputs`` that names a flow input was meant for the other mode; running it with
    no inputs would answer "missing required input" about an input the client did send. A flow
    input named as a field of the body (``stream``, say) does not count."""
    if "inputs" in body:
        return
    sent = [name for name in names if name in body and name not in RunBody.model_fields]
    if sent:
        raise InvalidInput(
            f'complete mode takes the flow inputs under "inputs": send {{"inputs": '
            f'{{"{sent[0]}": ...}}}}, not "{sent[0]}" at the top level',
            field="inputs",
        )


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
