"""Tests against a shared database server: drop what one test's service created."""

from __future__ import annotations

from sqlalchemy import Connection, MetaData

from flowhost.store.engine import create_store_engine, normalize_url
from flowhost.store.names import service_names

__all__ = ["drop_service"]


async def drop_service(url: str, service: str) -> None:
    """Drop every ``flowhost_*_<service>`` table at ``url``: chat, knowledge, memory, traces and
    Alembic's version table, whichever migrations created them."""
    suffix = f"_{service_names(service).service}"

    def drop(conn: Connection) -> None:
        metadata = MetaData()
        metadata.reflect(
            conn, only=lambda name, _: name.startswith("flowhost_") and name.endswith(suffix)
        )
        metadata.drop_all(conn)

    engine = create_store_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            if conn.dialect.name in ("mysql", "mariadb"):
                # Fail instead of waiting a day on a metadata lock a broken test left behind.
                await conn.exec_driver_sql("SET SESSION lock_wait_timeout = 30")
            await conn.run_sync(drop)
    finally:
        await engine.dispose()
