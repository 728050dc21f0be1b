"""``type: llm`` and ``type: prompt`` nodes.

An llm node renders its Jinja2 template (promptflow role markers split it into chat messages) and
streams a chat completion through its connection. Node inputs that are model parameters
(``deployment_name``/``model``, ``temperature``, ``max_tokens``, ...) go to the API; the rest are
template variables. A prompt node only renders its template to text.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from flowhost.engine.context import RunContext
from flowhost.engine.events import ModelUsage
from flowhost.exceptions import LLMError
from flowhost.llm.client import ChatChunk, LLMCallError
from flowhost.llm.connections import LLMNotConfigured
from flowhost.nodes.base import NodeRuntime
from flowhost.nodes.template import PromptTemplate

__all__ = ["LLMNode", "PromptNode", "split_llm_inputs", "with_memory_section"]

_FLOAT = {"temperature", "top_p", "presence_penalty", "frequency_penalty"}
_INT = {"max_tokens", "seed", "n"}
_PASS = {"stop", "response_format", "logit_bias", "user", "tools", "tool_choice"}
MODEL_KEYS = {"deployment_name", "model"}
PARAM_KEYS = _FLOAT | _INT | _PASS | MODEL_KEYS | {"stream"}


def split_llm_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split node inputs into (API parameters, template variables)."""
    params = {k: v for k, v in inputs.items() if k in PARAM_KEYS}
    variables = {k: v for k, v in inputs.items() if k not in PARAM_KEYS}
    return params, variables


def _api_params(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v is None or v == "" or k in MODEL_KEYS or k == "stream":
            continue
        if k in _FLOAT:
            out[k] = float(v)
        elif k in _INT:
            out[k] = int(v)
        elif k == "response_format" and isinstance(v, str):
            out[k] = json.loads(v) if v.strip().startswith("{") else {"type": v}
        else:
            out[k] = v
    if out.get("max_tokens") == 0:  # promptflow's "unlimited"
        del out["max_tokens"]
    return out


MEMORY_HEADER = "What you remember about the user (long-term memory):"


def with_memory_section(messages: list[dict[str, Any]], memory: list[str]) -> list[dict[str, Any]]:
    """Add recalled memory to the system message (one is added when the template has none).

    Used for templates that do not reference the ``memory`` variable themselves.
    """
    section = MEMORY_HEADER + "\n" + "\n".join(f"- {m}" for m in memory)
    out = [dict(m) for m in messages]
    for m in out:
        if m.get("role") == "system":
            m["content"] = f"{m.get('content') or ''}\n\n{section}".strip()
            return out
    return [{"role": "system", "content": section}, *out]


class PromptNode:
    node_type = "prompt"
    streaming = False

    def __init__(self, template: PromptTemplate) -> None:
        self.template = template

    def inline_ready(self) -> bool:
        return True  # rendering never awaits (``run`` renders on the loop as well)

    def run_inline(self, inputs: dict[str, Any], ctx: RunContext) -> Any:
        return self.template.render_text(inputs)

    async def run(self, inputs: dict[str, Any], rt: NodeRuntime) -> Any:
        return self.run_inline(inputs, rt.ctx)


class LLMNode:
    node_type = "llm"
    streaming = True

    def __init__(self, template: PromptTemplate, *, connection: str | None) -> None:
        self.template = template
        self.connection = connection

    async def run(self, inputs: dict[str, Any], rt: NodeRuntime) -> Any:
        raw_params, variables = split_llm_inputs(inputs)
        try:
            conn = rt.services.connections.get(self.connection)
        except LLMNotConfigured as exc:
            raise LLMError(str(exc), node=rt.node, connection=self.connection or "") from None
        model = raw_params.get("model") or raw_params.get("deployment_name") or conn.model
        if not model:
            raise LLMError(
                f"connection {conn.name!r} has no default model; set `model` (or "
                "`deployment_name`) on the node or `model` on the connection",
                node=rt.node,
                connection=conn.name,
            )
        try:
            params = _api_params(raw_params)
        except (TypeError, ValueError) as exc:
            raise LLMError(
                f"bad model parameter: {exc}", node=rt.node, connection=conn.name
            ) from exc
        memory: list[str] = rt.ctx.extra.get("memory") or []
        if "memory" in self.template.variables:
            variables.setdefault("memory", memory)
        messages = self.template.render_chat(variables)
        if memory and "memory" not in self.template.variables:
            messages = with_memory_section(messages, memory)
        rt.trace.update(model=str(model), messages=messages, params=params, connection=conn.name)
        llm = rt.services.llm
        parts: list[str] = []
        chunks = llm.stream_chat(conn, model=str(model), messages=messages, params=params)
        try:
            # aclosing: however this loop ends, the HTTP stream is closed now, not at GC
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    await self._take(chunk, str(model), parts, rt)
        except LLMCallError as exc:
            raise LLMError(
                str(exc), node=rt.node, connection=conn.name, upstream_status=exc.status
            ) from exc
        return "".join(parts)

    @staticmethod
    async def _take(chunk: ChatChunk, model: str, parts: list[str], rt: NodeRuntime) -> None:
        if chunk.delta:
            parts.append(chunk.delta)
            await rt.emit(chunk.delta)
        if chunk.input_tokens is not None or chunk.output_tokens is not None:
            rt.add_usage(
                ModelUsage(
                    model=chunk.model or model,
                    input_tokens=chunk.input_tokens or 0,
                    output_tokens=chunk.output_tokens or 0,
                )
            )
