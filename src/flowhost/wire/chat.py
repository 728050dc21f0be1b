"""Turning chat-style messages (OpenAI, DashScope ``input.messages``) into flow inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowhost.exceptions import InvalidInput

__all__ = ["message_text", "output_text", "split_messages"]


def message_text(content: Any) -> str:
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
        "message content must be a string or a list of content parts", field="messages"
    )


def split_messages(
    messages: Sequence[Any], *, chat_input: str, chat_output: str | None
) -> tuple[str, list[dict[str, Any]]]:
    """(last user message, earlier turns in promptflow's chat-history format).

    System messages are dropped (the flow owns its system prompt); each user message followed by
    an assistant message becomes one ``{"inputs": ..., "outputs": ...}`` turn.
    """
    msgs = [m if isinstance(m, dict) else dict(m) for m in messages]
    if not msgs or msgs[-1].get("role") != "user":
        raise InvalidInput("the last message must have role 'user'", field="messages")
    prompt = message_text(msgs[-1].get("content"))
    history: list[dict[str, Any]] = []
    pending: str | None = None
    out_key = chat_output or "answer"
    for m in msgs[:-1]:
        role = m.get("role")
        if role == "user":
            if pending is not None:
                history.append({"inputs": {chat_input: pending}, "outputs": {out_key: ""}})
            pending = message_text(m.get("content"))
        elif role == "assistant":
            history.append(
                {
                    "inputs": {chat_input: pending or ""},
                    "outputs": {out_key: message_text(m.get("content"))},
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
