"""The ``flow.dag.yaml`` schema (promptflow's), as pydantic models.

Unknown keys that promptflow allows (``environment``, ``additional_includes``, ``node_variants``...)
are accepted and ignored, so existing flows load unchanged.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Activate",
    "FlowInputSpec",
    "FlowOutputSpec",
    "FlowSpec",
    "InputType",
    "NodeSpec",
    "Reference",
    "SourceSpec",
    "parse_reference",
]

InputType = Literal["string", "int", "double", "bool", "list", "object"]
NodeType = Literal["python", "llm", "prompt", "knowledge_retrieval"]

_REF = re.compile(r"^\$\{\s*([A-Za-z_][\w-]*)\.([A-Za-z_]\w*)((?:\.[^.\s}]+)*)\s*\}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class FlowInputSpec(_Model):
    type: InputType = "string"
    default: Any = None
    description: str | None = None
    is_chat_input: bool = False
    is_chat_history: bool = False
    optional: bool = False


class FlowOutputSpec(_Model):
    type: InputType = "string"
    reference: str
    description: str | None = None
    is_chat_output: bool = False


class SourceSpec(_Model):
    type: Literal["code", "package"] = "code"
    path: str | None = None
    tool: str | None = None


class Activate(_Model):
    when: Any
    is_: Any = Field(alias="is")


class NodeSpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z_][\w-]*$")
    type: NodeType
    source: SourceSpec | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    connection: str | None = None
    api: str | None = None
    provider: str | None = None
    function: str | None = None
    activate: Activate | None = None
    description: str | None = None
    display_name: str | None = None
    timeout: float | None = Field(default=None, gt=0)


class FlowSpec(_Model):
    inputs: dict[str, FlowInputSpec] = Field(default_factory=dict)
    outputs: dict[str, FlowOutputSpec] = Field(default_factory=dict)
    nodes: list[NodeSpec] = Field(default_factory=list)
    description: str | None = None


class Reference(BaseModel):
    """A parsed ``${inputs.x}`` / ``${node.output}`` / ``${node.output.a.b}`` reference."""

    model_config = ConfigDict(frozen=True)

    source: str  # "inputs" or a node name
    name: str  # the input name, or "output"
    path: tuple[str, ...] = ()

    @property
    def is_input(self) -> bool:
        return self.source == "inputs"

    def __str__(self) -> str:
        return "${" + ".".join((self.source, self.name, *self.path)) + "}"


def parse_reference(value: Any) -> Reference | None:
    """Return the reference a YAML value holds, or None when it is a literal."""
    if not isinstance(value, str) or not value.startswith("${"):
        return None
    m = _REF.match(value.strip())
    if m is None:
        return None
    path = tuple(p for p in m.group(3).split(".") if p)
    return Reference(source=m.group(1), name=m.group(2), path=path)
