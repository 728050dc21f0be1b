"""The typed run context a node can read: ids, session, and the caller's plugin parameters.

Python nodes get it with ``flowhost.run_context()`` (a contextvar set for the duration of the node),
or by declaring a parameter annotated ``RunContext``. ``user_defined_params`` and
``user_defined_tokens`` come from Bailian's ``biz_params`` and are keyed by plugin/tool code; they
are never logged or traced (``__repr__`` hides the tokens).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunContext", "run_context"]


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a run knows about its caller.

    :ivar run_id: this run's id.
    :ivar request_id: the HTTP request id (``x-request-id`` / DashScope ``request_id``).
    :ivar app_id: the served app.
    :ivar session_id: the chat session, when history is on.
    :ivar user_id: ``Chat-User-Id``, when given.
    :ivar user_defined_params: per plugin/tool code, parameters from ``biz_params``.
    :ivar user_defined_tokens: per plugin/tool code, user tokens from ``biz_params`` (secret).
    """

    run_id: str
    request_id: str = ""
    app_id: str = ""
    session_id: str | None = None
    user_id: str | None = None
    protocol: str = ""
    user_defined_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    user_defined_tokens: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def params_for(self, tool: str) -> dict[str, Any]:
        """The ``user_defined_params`` of one plugin/tool code (empty when absent)."""
        return dict(self.user_defined_params.get(tool, {}))

    def token_for(self, tool: str) -> dict[str, Any]:
        """The ``user_defined_tokens`` of one plugin/tool code (empty when absent)."""
        return dict(self.user_defined_tokens.get(tool, {}))


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "flowhost_run_context", default=None
)


def run_context() -> RunContext:
    """The context of the run the calling node belongs to. Raises outside a run."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("flowhost.run_context() called outside a flow run")
    return ctx


def set_run_context(ctx: RunContext) -> contextvars.Token[RunContext | None]:
    return _current.set(ctx)
