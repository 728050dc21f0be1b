"""Errors raised by ``flowhost.store``.

The tree::

    StoreError                 any failure of the SQL store
    ├── StoreUnavailable       the database cannot be reached or refused the operation
    ├── InvalidStoreURL        the URL names no supported backend (sqlite, mysql, postgresql)
    ├── InvalidServiceName     a service name is empty once sanitized to ``[a-z0-9_]``
    ├── SessionNotFound        no chat session with that id
    ├── SessionAccessDenied    the session belongs to another user
    ├── SessionOfAnotherApp    the session holds another app's conversation
    └── TurnNotFound           no turn with that id in that session

Driver exceptions (SQLAlchemy ``OperationalError``, ``OSError`` from a refused socket, ...) are
translated once, at the store boundary, into ``StoreUnavailable``; the original is chained as
``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "InvalidServiceName",
    "InvalidStoreURL",
    "SessionAccessDenied",
    "SessionNotFound",
    "SessionOfAnotherApp",
    "StoreError",
    "StoreUnavailable",
    "TurnNotFound",
]


class StoreError(Exception):
    """Base class of every store error; ``message`` says what failed, in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreUnavailable(StoreError):
    """The database could not be reached, timed out, or failed the statement."""


class InvalidStoreURL(StoreError, ValueError):
    """The database URL is malformed or names an unsupported backend or driver."""


class InvalidServiceName(StoreError, ValueError):
    """The service name has no ``[a-z0-9_]`` character left once sanitized."""


class SessionNotFound(StoreError):
    """No chat session has this id."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} not found")
        self.session_id = session_id


class SessionAccessDenied(StoreError):
    """The session exists but belongs to a different user (or to no user)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} belongs to another user")
        self.session_id = session_id


class SessionOfAnotherApp(StoreError):
    """The session exists but holds another app's conversation."""

    def __init__(self, session_id: str, app_id: str) -> None:
        super().__init__(f"session {session_id!r} belongs to app {app_id!r}")
        self.session_id, self.app_id = session_id, app_id


class TurnNotFound(StoreError):
    """The session has no turn with this id."""

    def __init__(self, session_id: str, turn_id: int) -> None:
        super().__init__(f"turn {turn_id} not found in session {session_id!r}")
        self.session_id = session_id
        self.turn_id = turn_id
