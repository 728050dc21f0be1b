"""RunService: from a protocol-neutral RunRequest to a stream of run events.

It resolves the app, validates inputs, loads and extends the chat session, and starts the run.
Wire routes call ``prepare`` (which raises typed request errors before any byte is sent), then
iterate ``PreparedRun.events()``. Sinks (history writer, ...) see every event before the wire does,
so a turn is stored before its last byte leaves.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from flowhost.apps import App, AppRegistry
from flowhost.config import Settings
from flowhost.engine.context import RunContext
from flowhost.engine.events import ErrorInfo, RunEvent, RunFailed, RunFinished
from flowhost.engine.executor import execute, execute_inline
from flowhost.exceptions import FlowhostError, InvalidInput, one_line
from flowhost.flows.inputs import coerce_inputs
from flowhost.ids import uuid7

if TYPE_CHECKING:
    from flowhost.memory import MemoryService
    from flowhost.tracing.attributes import Redactor

__all__ = [
    "HistoryBackend",
    "PreparedRun",
    "RunObservation",
    "RunRequest",
    "RunService",
    "RunSink",
    "new_session_id",
]

log = logging.getLogger("flowhost.service")
# a run's last event; a tuple, not ``RunFinished | RunFailed``: that builds a union type at
# every check, and runs check each of their events
_ENDS: Final = (RunFinished, RunFailed)
SESSION_ID_RULE = re.compile(r"[A-Za-z0-9_:\-]{32,255}")  # use with fullmatch


def new_session_id() -> str:
    return secrets.token_hex(16)


@dataclass(slots=True)
class RunRequest:
    """A protocol-neutral request to run an app.

    :ivar inputs: raw flow inputs from the wire (validated by ``prepare``).
    :ivar session_id: the client's session id (``Chat-Session-Id``, ``input.session_id``); None for new.
    :ivar use_session: False when the client sends its own history (OpenAI messages) and no session id.
    :ivar history: client-supplied chat history (promptflow format) used when no session is used.
    """

    app_id: str | None
    inputs: dict[str, Any]
    protocol: str
    request_id: str = field(default_factory=uuid7)
    session_id: str | None = None
    user_id: str | None = None
    use_session: bool = True
    history: list[dict[str, Any]] | None = None
    user_defined_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    user_defined_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory_id: str | None = None
    rag_options: Any = None


class HistoryBackend(Protocol):
    """What the run service needs from the chat store (see ``flowhost.history``)."""

    async def open_session(
        self, app: App, session_id: str, user_id: str | None, title: str | None
    ) -> None: ...

    async def load_history(self, session_id: str, max_turns: int) -> list[dict[str, Any]]: ...

    async def record_turn(
        self, app: App, prepared: PreparedRun, final: RunEvent | None, protocol: str
    ) -> None: ...


class RunObservation(Protocol):
    """One run as a sink sees it (e.g. its trace). Must never raise into the run."""

    trace_id: str

    def on_event(self, event: RunEvent) -> None: ...

    def close(self, final: RunEvent | None) -> None: ...


class RunSink(Protocol):
    """Observes every run: ``open`` is called in ``prepare`` (inside the request's context, so
    an incoming ``traceparent`` is continued), then each event, then ``close``."""

    def open(self, prepared: PreparedRun) -> RunObservation | None: ...


@dataclass(slots=True)
class PreparedRun:
    """A validated run, ready to start. ``session_id`` is set when history is in use."""

    service: RunService
    app: App
    inputs: dict[str, Any]
    ctx: RunContext
    session_id: str | None
    protocol: str
    started_at: float = field(default_factory=time.time)
    observations: list[RunObservation] = field(default_factory=list)
    trace_id: str = ""  # the run's OpenTelemetry trace id (32 hex), "" when tracing is off
    # the run's events when every node runs inline (``execute_inline``), decided by ``prepare``;
    # taken by ``events`` / ``outcome``. None: the run goes to node tasks.
    inline: Iterator[RunEvent] | None = None

    @property
    def runs_inline(self) -> bool:
        """Whether the run will never wait (but to store its turn): see ``execute_inline``."""
        return self.inline is not None

    @property
    def run_id(self) -> str:
        return self.ctx.run_id

    async def events(self) -> AsyncGenerator[RunEvent, None]:
        """Run the flow. Closing this iterator cancels the run (recorded as canceled).

        A run whose nodes all run inline (``execute_inline``) is over before its first event
        is yielded: nothing could interleave with it anyway."""
        inline, self.inline = self.inline, None
        if inline is not None:
            for event in await self._run_inline(inline):
                yield event
            return
        svc = self.service
        final: RunEvent | None = None
        stream = execute(
            self.app.flow,
            self.inputs,
            self.ctx,
            self.app.services,
            node_timeout=svc.settings.node_timeout,
            trace_id=self.trace_id,
        )
        observe = [o.on_event for o in self.observations]
        try:
            async with contextlib.aclosing(stream):
                async for event in stream:
                    if isinstance(event, _ENDS):
                        final = event
                        event = await self._finish(event)
                    for on_event in observe:
                        on_event(event)
                    yield event
        finally:
            await self._close(final)

    async def outcome(self) -> RunFinished | RunFailed | None:
        """Run the flow to its end: its last event (None when it ended without one). For a
        response sent whole; cancelling the call cancels the run (recorded as canceled)."""
        inline, self.inline = self.inline, None
        if inline is not None:
            last = (await self._run_inline(inline))[-1]
            return last if isinstance(last, _ENDS) else None
        async with contextlib.aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, _ENDS):
                    return event
        return None

    async def _run_inline(self, stream: Iterator[RunEvent]) -> list[RunEvent]:
        """Every event of an inline run, each seen by the observers as ``events`` shows them;
        awaits only to store the turn."""
        observe = [o.on_event for o in self.observations]
        final: RunEvent | None = None
        events: list[RunEvent] = []
        try:
            for event in stream:
                if isinstance(event, _ENDS):
                    final = event
                    event = await self._finish(event)
                for on_event in observe:
                    on_event(event)
                events.append(event)
        finally:
            await self._close(final)
        return events

    async def _finish(self, final: RunFinished | RunFailed) -> RunEvent:
        """The run's last event: a failure logged, the turn stored (see ``_record``)."""
        svc = self.service
        if isinstance(final, RunFailed) and svc.log_failures:
            self._log_failure(final.error)
        if self.session_id is not None and svc.history is not None:
            return await self._record(svc.history, final)
        return final

    async def _close(self, final: RunEvent | None) -> None:
        svc = self.service
        for o in self.observations:
            o.close(final)
        if final is None and self.session_id is not None and svc.history is not None:
            # the client went away: record the canceled turn even while being cancelled
            with anyio.CancelScope(shield=True):
                try:
                    await svc.history.record_turn(self.app, self, None, self.protocol)
                except Exception as exc:
                    log.error("run %s: recording the canceled turn failed: %s", self.run_id, exc)

    def _log_failure(self, err: ErrorInfo) -> None:
        """A failed run, for the operator: the client's message, the server's secrets and the
        run's tokens scrubbed."""
        message = err.described
        redactor = self.service.redactor
        if redactor is not None:  # a node's message may quote a token the run was given
            message = redactor.for_tokens(self.ctx.user_defined_tokens).text(message)
        log.log(
            logging.WARNING if err.status >= 500 else logging.INFO,
            "run %s of app %s (%s, request %s) failed: %s: %s",
            self.run_id,
            self.app.app_id,
            self.protocol,
            self.ctx.request_id,
            err.code,
            one_line(message),
        )

    async def _record(self, history: HistoryBackend, final: RunFinished | RunFailed) -> RunEvent:
        """Store the turn; a run whose turn cannot be stored is reported as failed."""
        try:
            await history.record_turn(self.app, self, final, self.protocol)
        except FlowhostError as exc:
            log.error("run %s: storing the turn failed: %s", self.run_id, exc.message)
            if isinstance(final, RunFinished):
                err = ErrorInfo(
                    exc.code, f"the answer could not be saved: {exc.message}", status=exc.status
                )
                return RunFailed(final.run_id, err, final.duration, time.time(), final.usage)
        return final


class RunService:
    """Prepares runs: app, inputs, session, memory; see the module docstring."""

    def __init__(
        self,
        apps: AppRegistry,
        settings: Settings,
        history: HistoryBackend | None = None,
        sinks: list[RunSink] | None = None,
        log_failures: bool = False,
        redactor: Redactor | None = None,
    ) -> None:
        """``log_failures``: log each failed run (a server; ``flowhost run`` prints its own
        error); ``redactor`` scrubs the server's secrets out of that line."""
        self.apps = apps
        self.settings = settings
        self.history = history
        self.sinks: list[RunSink] = sinks or []
        self.log_failures = log_failures
        self.redactor = redactor
        self.memory: MemoryService | None = None

    def uses_history(self, app: App) -> bool:
        return self.settings.history and self.history is not None and app.flow.is_chat

    async def prepare(self, req: RunRequest) -> PreparedRun:
        """Validate ``req`` and load its session. Raises NotFound / InvalidInput / Forbidden."""
        app = self.apps.get(req.app_id)
        flow = app.flow
        given = dict(req.inputs)
        if req.history is not None and flow.chat_history is not None:
            given[flow.chat_history] = req.history
        coerced = coerce_inputs(flow.spec.inputs, given)
        session_id: str | None = None
        history = self.history
        if history is not None and self.uses_history(app) and (req.use_session or req.session_id):
            if req.session_id is not None and not SESSION_ID_RULE.fullmatch(req.session_id):
                raise InvalidInput(
                    "Chat-Session-Id must be 32-255 characters of letters, digits, '_', '-' and ':'",
                    field="session_id",
                )
            session_id = req.session_id or new_session_id()
            title = coerced.get(flow.chat_input or "")
            await history.open_session(
                app, session_id, req.user_id, str(title)[:200] if title is not None else None
            )
            # a known session's stored turns win over history the client sent along
            if flow.chat_history is not None and (req.history is None or req.session_id):
                coerced[flow.chat_history] = await history.load_history(
                    session_id, self.settings.history_turns
                )
        extra: dict[str, Any] = {}
        message = coerced.get(flow.chat_input) if flow.chat_input else None
        if req.memory_id is not None:
            extra["memory"] = await self._recall(req.memory_id, message)
        if req.rag_options is not None:
            extra["rag_options"] = req.rag_options
        ctx = RunContext(
            run_id=uuid7(),
            request_id=req.request_id,
            app_id=app.app_id,
            session_id=session_id,
            user_id=req.user_id,
            protocol=req.protocol,
            user_defined_params=req.user_defined_params,
            user_defined_tokens=req.user_defined_tokens,
            extra=extra,
        )
        if req.memory_id is not None and self.memory is not None and isinstance(message, str):
            self.memory.extract_later(req.memory_id, message, ctx.run_id)
        prepared = PreparedRun(self, app, coerced, ctx, session_id, req.protocol)
        for sink in self.sinks:
            observation = sink.open(prepared)
            if observation is not None:
                prepared.observations.append(observation)
                prepared.trace_id = prepared.trace_id or observation.trace_id
        prepared.inline = execute_inline(
            flow, coerced, ctx, app.services, trace_id=prepared.trace_id
        )
        return prepared

    async def _recall(self, memory_id: str, message: Any) -> list[str]:
        if self.memory is None:
            raise InvalidInput(
                "memory_id: long-term memory is not enabled on this server", field="memory_id"
            )
        if not isinstance(message, str):
            raise InvalidInput(
                "memory_id needs a chat flow (an is_chat_input input)", field="memory_id"
            )
        return [n.content for n in await self.memory.recall(memory_id, message)]
