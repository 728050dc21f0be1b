"""Fixtures for the store conformance suite: every test runs on SQLite, MariaDB and PostgreSQL.

MariaDB/MySQL and PostgreSQL come from ``FLOWHOST_TEST_MYSQL_URL`` and
``FLOWHOST_TEST_POSTGRES_URL``; a backend whose variable is unset is skipped, except under
``CI=true``, where an unset variable or an unreachable server fails the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from flowhost.store import Store, StoreError
from flowhost.testing.databases import drop_service

ENV_URLS = {"mysql": "FLOWHOST_TEST_MYSQL_URL", "postgres": "FLOWHOST_TEST_POSTGRES_URL"}
_reachable: dict[str, str | None] = {}

OpenStore = Callable[..., Awaitable[Store]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


async def _check_reachable(backend: str, url: str) -> None:
    if backend not in _reachable:
        try:
            store = await Store.open(url, data_dir=Path("."), service="probe", migrate=False)
        except StoreError as e:
            _reachable[backend] = e.message
        else:
            await store.close()
            _reachable[backend] = None
    problem = _reachable[backend]
    if problem is not None:
        pytest.fail(f"{ENV_URLS[backend]}={url} is not reachable: {problem}")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL per backend; a file in ``tmp_path`` for SQLite."""
    backend: str = request.param
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store' / 'flowhost.db'}"
    url = os.environ.get(ENV_URLS[backend], "")
    if not url:
        if _in_ci():
            pytest.fail(f"CI=true but {ENV_URLS[backend]} is not set")
        pytest.skip(f"{ENV_URLS[backend]} is not set")
    await _check_reachable(backend, url)
    return url


@pytest.fixture
def drop_tables() -> Callable[[str, str], Awaitable[None]]:
    """``await drop_tables(url, service)`` drops a service's tables."""
    return drop_service


@pytest.fixture
async def service(store_url: str) -> AsyncIterator[str]:
    """A service name of its own for this test; its tables are dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    yield name
    await drop_service(store_url, name)


@pytest.fixture
async def open_store(store_url: str, service: str, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """``await open_store()`` opens a Store on this test's database and service (closed after)."""
    opened: list[Store] = []

    async def _open(**kwargs: object) -> Store:
        options: dict[str, object] = {"data_dir": tmp_path, "service": service, **kwargs}
        store = await Store.open(store_url, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    return await open_store()
