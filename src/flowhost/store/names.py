"""Per-service identifiers: table, index, constraint, version-table and lock names.

Several flowhost services may share one database, as LangStudio's deployed flows do: every table
carries the service name. The service name is the only source of identifiers in the store and it
is sanitized here, once, to ``[a-z0-9_]`` (at most 30 characters), so no user input ever reaches
SQL text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from flowhost.store.errors import InvalidServiceName

__all__ = ["MAX_SERVICE_LEN", "ServiceNames", "sanitize_service", "service_names"]

MAX_SERVICE_LEN = 30
_INVALID = re.compile(r"[^a-z0-9_]+")
_UNDERSCORES = re.compile(r"_{2,}")


def sanitize_service(service: str) -> str:
    """Lower-case ``service``, map other characters to ``_`` and bound it to 30 characters.

    A name longer than 30 characters keeps its first 21 and gets ``_`` plus 8 hex digits of its
    hash, so two long names that share a prefix still get different tables.

    Raises:
        InvalidServiceName: nothing of ``[a-z0-9]`` is left.
    """
    name = _INVALID.sub("_", service.strip().lower())
    name = _UNDERSCORES.sub("_", name).strip("_")
    if not name:
        raise InvalidServiceName(
            f"service name {service!r} has no letters or digits; use [a-z0-9_] characters"
        )
    if len(name) > MAX_SERVICE_LEN:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_SERVICE_LEN - 9].rstrip('_')}_{digest}"
    return name


@dataclass(frozen=True, slots=True)
class ServiceNames:
    """Every database identifier belonging to one service (all at most 63 characters).

    Primary keys stay unnamed: MySQL ignores (and warns about) a primary key's name, and
    PostgreSQL's default ``<table>_pkey`` fits in 63 characters.
    """

    service: str

    @property
    def session_table(self) -> str:
        return f"flowhost_chat_session_{self.service}"

    @property
    def history_table(self) -> str:
        return f"flowhost_chat_history_{self.service}"

    @property
    def version_table(self) -> str:
        return f"flowhost_alembic_{self.service}"

    @property
    def session_user_index(self) -> str:
        return f"ix_fh_sess_{self.service}_user"

    @property
    def session_app_index(self) -> str:
        return f"ix_fh_sess_{self.service}_app"

    @property
    def history_session_fk(self) -> str:
        return f"fk_fh_hist_{self.service}_sess"

    @property
    def history_status_check(self) -> str:
        return f"ck_fh_hist_{self.service}_status"

    @property
    def history_session_index(self) -> str:
        return f"ix_fh_hist_{self.service}_sess"

    @property
    def mysql_lock(self) -> str:
        """Name for MySQL ``GET_LOCK`` (at most 64 characters)."""
        return f"flowhost_migrate_{self.service}"

    @property
    def advisory_key(self) -> int:
        """Signed 64-bit key for PostgreSQL ``pg_advisory_lock``, stable across processes."""
        digest = hashlib.sha256(f"flowhost_migrate:{self.service}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


def service_names(service: str) -> ServiceNames:
    """Sanitize ``service`` and return its identifiers."""
    return ServiceNames(sanitize_service(service))
