"""Frozen records exchanged with the store. Datetimes are timezone-aware UTC."""

from __future__ import annotations

from dataclasses import field
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from flowhost.frozen import frozen

__all__ = [
    "ANY_USER",
    "AnyUser",
    "NewTurn",
    "SessionRecord",
    "TurnRecord",
    "TurnStatus",
    "UserScope",
]

TurnStatus = Literal["completed", "failed", "canceled"]
_STATUSES: Final = frozenset(get_args(TurnStatus))

# Column lengths, checked before the database sees a value: SQLite would not enforce them.
SESSION_ID_MAX = 255
APP_ID_MAX = 128
USER_ID_MAX = 255
TITLE_MAX = 200
RUN_ID_MAX = 64
PROTOCOL_MAX = 32


class AnyUser:
    """Type of ``ANY_USER``: a trusted caller (the console, an admin CLI) that sees every user.

    ``None`` cannot play this part: ``user_id=None`` means "the anonymous user", whose sessions
    are kept apart from every named user's.
    """

    _instance: AnyUser | None = None

    def __new__(cls) -> AnyUser:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY_USER"


ANY_USER: Final = AnyUser()
UserScope = str | None | AnyUser


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_length(what: str, value: str | None, limit: int) -> None:
    """Raise ``ValueError`` when ``value`` is empty or longer than its column allows."""
    if value is None:
        return
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")


@frozen
class SessionRecord:
    """One chat session."""

    session_id: str
    app_id: str
    user_id: str | None
    title: str | None
    created_at: datetime
    updated_at: datetime
    turn_count: int


@frozen
class TurnRecord:
    """One stored turn: a run's inputs and outputs. ``id`` orders the turns of a session."""

    id: int
    session_id: str
    run_id: str
    app_id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    status: TurnStatus
    error: dict[str, Any] | None
    protocol: str | None
    created_at: datetime
    duration_ms: int | None
    usage: dict[str, Any] | None


@frozen
class NewTurn:
    """A turn to append. ``created_at`` defaults to now."""

    session_id: str
    run_id: str
    app_id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    status: TurnStatus = "completed"
    error: dict[str, Any] | None = None
    protocol: str | None = None
    duration_ms: int | None = None
    usage: dict[str, Any] | None = None
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        check_length("session_id", self.session_id, SESSION_ID_MAX)
        check_length("run_id", self.run_id, RUN_ID_MAX)
        check_length("app_id", self.app_id, APP_ID_MAX)
        check_length("protocol", self.protocol, PROTOCOL_MAX)
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {sorted(_STATUSES)}, not {self.status!r}")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        if self.duration_ms is not None and self.duration_ms < 0:
            raise ValueError("duration_ms must not be negative")
