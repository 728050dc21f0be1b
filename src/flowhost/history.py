"""Chat history: the run service's HistoryBackend on top of the SQL store.

A turn is written when its run ends, before the protocol sends its last byte, so a response the
client saw complete is never lost. Failed and canceled runs are recorded with their status and
never fed back as history.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from flowhost.apps import App
from flowhost.engine.events import RunEvent, RunFailed, RunFinished
from flowhost.exceptions import Forbidden, InvalidInput, NotFound, ServiceUnavailable
from flowhost.service import PreparedRun
from flowhost.store import (
    Message,
    NewTurn,
    SessionAccessDenied,
    SessionNotFound,
    SessionOfAnotherApp,
    Store,
    StoreError,
    StoreUnavailable,
    TurnNotFound,
)

__all__ = ["StoreHistory", "translate_store_errors"]


@contextlib.asynccontextmanager
async def translate_store_errors() -> AsyncIterator[None]:
    """Store errors -> flowhost's error tree (403 / 404 / 503)."""
    try:
        yield
    except SessionAccessDenied:
        raise Forbidden("this session belongs to another user (Chat-User-Id)") from None
    except SessionOfAnotherApp as exc:
        raise InvalidInput(
            f"this session belongs to app {exc.app_id!r}: continue it there, or start a new one",
            field="session_id",
        ) from None
    except (SessionNotFound, TurnNotFound) as exc:
        raise NotFound(exc.message) from None
    except StoreUnavailable as exc:
        raise ServiceUnavailable(f"the history database is unavailable: {exc.message}") from None
    except ValueError as exc:  # a value longer than its column
        raise InvalidInput(str(exc)) from None
    except StoreError as exc:
        raise ServiceUnavailable(exc.message) from None


# open_session -> load_history of one request: the history read along with the session.
_prefetched: ContextVar[tuple[str, int, list[dict[str, Any]]] | None] = ContextVar(
    "flowhost_history_prefetched", default=None
)


def _as_history(messages: list[Message]) -> list[dict[str, Any]]:
    return [{"inputs": inputs, "outputs": outputs or {}} for inputs, outputs in messages]


class StoreHistory:
    """The run service's ``HistoryBackend`` on the SQL store.

    ``RunService.prepare`` calls ``open_session`` and then, for a flow with a chat-history
    input, ``load_history``: one database read serves both. ``open_session`` reads the history
    along with the session (``history_turns`` of them: the setting when given, else the number
    the last ``load_history`` asked for) and keeps it in a context variable of the request's
    task; ``load_history`` takes it when session and number match, and reads otherwise.
    """

    def __init__(self, store: Store, *, history_turns: int | None = None) -> None:
        self.store = store
        self._turns = history_turns

    async def open_session(
        self, app: App, session_id: str, user_id: str | None, title: str | None
    ) -> None:
        turns = self._turns if app.flow.chat_history is not None else None
        async with translate_store_errors():
            _, messages = await self.store.chats.open_session(
                session_id,
                app_id=app.app_id,
                user_id=user_id,
                title=title,
                history_turns=turns or 0,
            )
        _prefetched.set(None if turns is None else (session_id, turns, _as_history(messages)))

    async def load_history(self, session_id: str, max_turns: int) -> list[dict[str, Any]]:
        self._turns = max_turns
        ahead = _prefetched.get()
        if ahead is not None:
            _prefetched.set(None)
            if ahead[0] == session_id and ahead[1] == max_turns:
                return ahead[2]
        async with translate_store_errors():
            messages = await self.store.chats.history_messages(session_id, max_turns)
        return _as_history(messages)

    async def record_turn(
        self, app: App, prepared: PreparedRun, final: RunEvent | None, protocol: str
    ) -> None:
        assert prepared.session_id is not None
        hist_key = app.flow.chat_history
        inputs = {k: v for k, v in prepared.inputs.items() if k != hist_key}
        outputs: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        usage: dict[str, Any] | None = None
        if isinstance(final, RunFinished):
            status, outputs, duration = "completed", final.outputs, final.duration
            usage = {
                u.model: {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}
                for u in final.usage
            }
        elif isinstance(final, RunFailed):
            status, error, duration = "failed", final.error.to_dict(), final.duration
        else:
            status, error, duration = (
                "canceled",
                {"code": "RunCanceled", "message": "the client disconnected"},
                None,
            )
        turn = NewTurn(
            session_id=prepared.session_id,
            run_id=prepared.run_id,
            app_id=app.app_id,
            inputs=inputs,
            outputs=outputs,
            status=status,  # type: ignore[arg-type]
            error=error,
            protocol=protocol,
            duration_ms=round(duration * 1000) if duration is not None else None,
            usage=usage or None,
        )
        async with translate_store_errors():
            await self.store.chats.append_turn(turn)
