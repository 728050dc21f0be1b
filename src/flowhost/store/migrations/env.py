"""Alembic environment for the store: online only, on a connection handed over by ``upgrade()``.

``flowhost.store.migrate`` configures Alembic in code (no ``alembic.ini``) and passes, through
``Config.attributes``:

- ``connection``: the synchronous side of the ``AsyncConnection`` that holds the migration lock;
- ``service_name``: the sanitized service name, which picks the tables and the version table.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Column, Connection, MetaData, PrimaryKeyConstraint, String, Table

from flowhost.store.names import ServiceNames


def _create_mysql_version_table(connection: Connection, name: str) -> None:
    """Create Alembic's version table with an unnamed primary key (MySQL / MariaDB).

    Alembic names that key ``<table>_pkc``; MySQL ignores a primary key's name and warns, which
    asyncmy prints ("Name '..._pkc' ignored for PRIMARY key."). Created here first, the same
    table is found by Alembic, which then leaves it alone.
    """
    table = Table(
        name,
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num"),
    )
    table.create(connection, checkfirst=True)


def run_migrations_online() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "flowhost migrations run through flowhost.store.upgrade(), not the alembic CLI"
        )
    names = ServiceNames(config.attributes["service_name"])
    if connection.dialect.name in ("mysql", "mariadb"):
        _create_mysql_version_table(connection, names.version_table)
    context.configure(
        connection=connection,
        version_table=names.version_table,
        target_metadata=None,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("flowhost migrations do not support offline (--sql) mode")
run_migrations_online()
