"""What the two chat protocols (OpenAI, DashScope) share: turning chat-style messages (OpenAI
``messages``, DashScope ``input.messages``) into flow inputs, and documenting their request models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from flowhost.exceptions import InvalidInput

__all__ = ["aclose", "message_text", "openapi_schema", "output_text", "split_messages"]


def message_text(content: Any, *, field: str = "messages") -> str:
    """A message's text: a string, or the text parts of a content-part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type", "text") == "text"
        )
    raise InvalidInput(
        f"{field}: message content must be a string or a list of content parts", field=field
    )


def split_messages(
    messages: Sequence[Any],
    *,
    chat_input: str,
    chat_output: str | None,
    field: str = "messages",
) -> tuple[str, list[dict[str, Any]]]:
    """(last user message, earlier turns in promptflow's chat-history format).

    System messages are dropped (the flow owns its system prompt); each user message followed by
    an assistant message becomes one ``{"inputs": ..., "outputs": ...}`` turn. ``field`` names
    the messages in error messages (``messages``, ``input.messages``).
    """
    msgs = [m if isinstance(m, dict) else dict(m) for m in messages]
    if not msgs or msgs[-1].get("role") != "user":
        raise InvalidInput(f"{field}: the last message must have role 'user'", field=field)
    prompt = message_text(msgs[-1].get("content"), field=field)
    history: list[dict[str, Any]] = []
    pending: str | None = None
    out_key = chat_output or "answer"
    for m in msgs[:-1]:
        role = m.get("role")
        if role == "user":
            if pending is not None:
                history.append({"inputs": {chat_input: pending}, "outputs": {out_key: ""}})
            pending = message_text(m.get("content"), field=field)
        elif role == "assistant":
            history.append(
                {
                    "inputs": {chat_input: pending or ""},
                    "outputs": {out_key: message_text(m.get("content"), field=field)},
                }
            )
            pending = None
    if pending is not None:
        history.append({"inputs": {chat_input: pending}, "outputs": {out_key: ""}})
    return prompt, history


def output_text(value: Any) -> str:
    """A flow output as answer text (non-strings as JSON)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    from flowhost.wire.sse import dumps

    return dumps(value)


def openapi_schema(
    model: type[BaseModel], *, mode: JsonSchemaMode = "validation"
) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models inlined, for a route's ``openapi_extra``.

    FastAPI does not lift the ``$defs`` of a hand-written schema into ``components``, so a
    ``$ref: "#/$defs/..."`` left in it would not resolve anywhere in /openapi.json.
    """
    schema = model.model_json_schema(mode=mode)
    defs: dict[str, Any] = schema.pop("$defs", {})

    def inline(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(v, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"{model.__name__}: recursive model {name} cannot be inlined")
            rest = {k: inline(v, seen) for k, v in node.items() if k != "$ref"}
            return {**inline(defs[name], (*seen, name)), **rest}
        return {k: inline(v, seen) for k, v in node.items()}

    out: dict[str, Any] = inline(schema, ())
    return out


async def aclose(events: AsyncIterator[Any]) -> None:
    """Close a run's event stream now (an adapter that returns early, at the final event, would
    otherwise leave it to the garbage collector to finish the run's bookkeeping)."""
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
