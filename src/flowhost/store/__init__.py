"""flowhost's SQL store: chat sessions and turns (later memories, traces, kb metadata).

One ``Store`` per process, on ``sqlite+aiosqlite`` (default, a file in the data dir),
``mysql+asyncmy`` or ``postgresql+asyncpg``. Tables carry the service name
(``flowhost_chat_session_<service>``, ``flowhost_chat_history_<service>``) so several services
can share one database; ``upgrade()`` creates and migrates them with the packaged Alembic
migrations, safely when several processes start at once.
"""

from __future__ import annotations

from flowhost.store.chats import ChatRepository as ChatRepository
from flowhost.store.chats import Message as Message
from flowhost.store.errors import InvalidServiceName as InvalidServiceName
from flowhost.store.errors import InvalidStoreURL as InvalidStoreURL
from flowhost.store.errors import SessionAccessDenied as SessionAccessDenied
from flowhost.store.errors import SessionNotFound as SessionNotFound
from flowhost.store.errors import SessionOfAnotherApp as SessionOfAnotherApp
from flowhost.store.errors import StoreError as StoreError
from flowhost.store.errors import StoreUnavailable as StoreUnavailable
from flowhost.store.errors import TurnNotFound as TurnNotFound
from flowhost.store.migrate import upgrade as upgrade
from flowhost.store.names import sanitize_service as sanitize_service
from flowhost.store.records import ANY_USER as ANY_USER
from flowhost.store.records import AnyUser as AnyUser
from flowhost.store.records import NewTurn as NewTurn
from flowhost.store.records import SessionRecord as SessionRecord
from flowhost.store.records import TurnRecord as TurnRecord
from flowhost.store.records import TurnStatus as TurnStatus
from flowhost.store.records import UserScope as UserScope
from flowhost.store.store import Store as Store

__all__ = [
    "ANY_USER",
    "AnyUser",
    "ChatRepository",
    "InvalidServiceName",
    "InvalidStoreURL",
    "Message",
    "NewTurn",
    "SessionAccessDenied",
    "SessionNotFound",
    "SessionOfAnotherApp",
    "SessionRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TurnNotFound",
    "TurnRecord",
    "TurnStatus",
    "UserScope",
    "sanitize_service",
    "upgrade",
]
