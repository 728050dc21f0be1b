"""Service names and URLs: validated before any SQL is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowhost.store import InvalidServiceName, InvalidStoreURL, Store, StoreUnavailable
from flowhost.store.engine import dialect_of, normalize_url
from flowhost.store.names import MAX_SERVICE_LEN, sanitize_service, service_names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("chat", "chat"),
        ("My-Chat App", "my_chat_app"),
        ("  a..b__c  ", "a_b_c"),
        ("客服 bot 2", "bot_2"),
        ("x" * MAX_SERVICE_LEN, "x" * MAX_SERVICE_LEN),
    ],
)
def test_sanitize_service(given: str, expected: str) -> None:
    assert sanitize_service(given) == expected


def test_long_names_keep_a_hash_and_stay_apart() -> None:
    a = sanitize_service("a_very_long_service_name_for_the_shop_one")
    b = sanitize_service("a_very_long_service_name_for_the_shop_two")
    assert a != b
    assert len(a) <= MAX_SERVICE_LEN
    assert len(b) <= MAX_SERVICE_LEN
    assert a.startswith("a_very_long_service_n")


@pytest.mark.parametrize("given", ["", "   ", "---", "客服", "'; --"])
def test_empty_service_is_rejected(given: str) -> None:
    with pytest.raises(InvalidServiceName, match="no letters or digits"):
        sanitize_service(given)


def test_identifiers_fit_every_backend() -> None:
    names = service_names("z" * 200)
    identifiers = [
        names.session_table,
        names.history_table,
        names.version_table,
        names.session_user_index,
        names.session_app_index,
        names.history_session_fk,
        names.history_status_check,
        names.history_session_index,
        names.mysql_lock,
        f"{names.history_table}_id_seq",
        f"{names.history_table}_pkey",
    ]
    assert max(len(i) for i in identifiers) <= 63
    assert -(2**63) <= names.advisory_key < 2**63


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("mysql://root@h/db", "mysql+asyncmy"),
        ("mariadb://root@h/db", "mariadb+asyncmy"),
        ("postgres://u@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite"),
    ],
)
def test_urls_get_their_async_driver(given: str, expected: str) -> None:
    assert normalize_url(given).drivername == expected


def test_dialect_names() -> None:
    assert dialect_of(normalize_url("mariadb://h/db")) == "mysql"
    assert dialect_of(normalize_url("postgres://h/db")) == "postgresql"


@pytest.mark.parametrize(
    "given",
    ["oracle://h/db", "mysql+pymysql://h/db", "postgresql+psycopg2://h/db", "not a url"],
)
def test_unsupported_urls_are_rejected(given: str) -> None:
    with pytest.raises(InvalidStoreURL):
        normalize_url(given)


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
async def test_in_memory_sqlite_is_rejected(url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidStoreURL, match="in-memory"):
        await Store.open(url, data_dir=tmp_path, service="svc")


@pytest.mark.anyio
async def test_default_url_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "nested"
    store = await Store.open(None, data_dir=data_dir, service="svc")
    try:
        assert store.dialect == "sqlite"
        assert (data_dir / "flowhost.db").is_file()
        assert (data_dir / "flowhost.db.migrate.lock").is_file()
    finally:
        await store.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    ["mysql+asyncmy://root@127.0.0.1:1/test", "postgresql+asyncpg://postgres@127.0.0.1:1/test"],
)
@pytest.mark.parametrize("migrate", [True, False])
async def test_unreachable_server_is_store_unavailable(
    url: str, migrate: bool, tmp_path: Path
) -> None:
    with pytest.raises(StoreUnavailable, match="database unavailable"):
        await Store.open(url, data_dir=tmp_path, service="svc", migrate=migrate)
