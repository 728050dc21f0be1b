"""Jinja2 templates with promptflow's chat role markers (``# system:``, ``# user:``, ...).

Values substituted into a template cannot inject role markers: a marker inside a value is
defused at render time (a private-use character is inserted) and restored after splitting.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

__all__ = ["ChatMessage", "PromptTemplate", "TemplateSyntaxError", "parse_chat"]

ChatMessage = dict[str, Any]

_ROLES = "system|user|assistant|function|tool|developer"
_MARKER = re.compile(rf"^[ \t]*#?[ \t]*({_ROLES})[ \t]*:[ \t]*$", re.IGNORECASE | re.MULTILINE)
_VALUE_MARKER = re.compile(rf"(?im)^([ \t]*#?[ \t]*)({_ROLES})([ \t]*:[ \t]*)$")
_GUARD = "\ue000"


def _finalize(value: Any) -> Any:
    if isinstance(value, str) and ":" in value:
        return _VALUE_MARKER.sub(lambda m: m.group(1) + _GUARD + m.group(2) + m.group(3), value)
    return value


class TemplateSyntaxError(ValueError):
    """A prompt that Jinja2 cannot compile; ``lineno`` is its line (1-based)."""

    def __init__(self, message: str, lineno: int) -> None:
        super().__init__(f"line {lineno}: {message}")
        self.message, self.lineno = message, lineno


@functools.cache
def _environment() -> jinja2.Environment:
    # Imported with the first template: a flow without prompts (and the server's start) does
    # not pay for Jinja2 (~20 ms of imports).
    import jinja2

    return jinja2.Environment(  # noqa: S701 - prompts are plain text, not HTML
        keep_trailing_newline=True, finalize=_finalize, undefined=jinja2.Undefined
    )


class PromptTemplate:
    """A compiled Jinja2 prompt. ``source`` names the file for error messages.

    Raises ``TemplateSyntaxError`` for a template Jinja2 cannot compile."""

    def __init__(self, text: str, *, source: str = "<template>") -> None:
        import jinja2

        self.source = source
        env = _environment()
        try:
            self.template = env.from_string(text)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateSyntaxError(exc.message or "invalid template", exc.lineno) from exc
        # A plain dict, not Jinja's ChainMap over the environment's globals (which never change
        # here): every render copies the globals into its context, and iterating the ChainMap
        # was half the cost of rendering a chat prompt.
        self.template.globals = dict(self.template.globals)
        self.variables = frozenset(_undeclared(text))

    @classmethod
    def from_file(cls, path: Path) -> PromptTemplate:
        return cls(path.read_text(encoding="utf-8"), source=str(path))

    def render(self, values: dict[str, Any]) -> str:
        return self.template.render(**values)

    def render_text(self, values: dict[str, Any]) -> str:
        return self.render(values).replace(_GUARD, "")

    def render_chat(self, values: dict[str, Any]) -> list[ChatMessage]:
        return parse_chat(self.render(values))


def _undeclared(text: str) -> set[str]:
    from jinja2 import meta

    return set(meta.find_undeclared_variables(_environment().parse(text)))


def parse_chat(text: str) -> list[ChatMessage]:
    """Split rendered text at role markers into chat messages.

    Text before the first marker (if not blank) is a user message, as is a prompt with no marker.
    """
    parts = _MARKER.split(text)
    messages: list[ChatMessage] = []
    head = parts[0].strip()
    if head:
        messages.append({"role": "user", "content": head.replace(_GUARD, "")})
    for i in range(1, len(parts), 2):
        role = parts[i].lower()
        content = parts[i + 1].strip().replace(_GUARD, "")
        messages.append({"role": role, "content": content})
    return messages
