"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Tables are per service: read the sanitized service name with ``service_names()`` below and name
every table, index and constraint through it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
from flowhost.store.names import ServiceNames

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}


def service_names() -> ServiceNames:
    config = op.get_context().config
    if config is None:
        raise RuntimeError("the migration needs the Alembic Config with a service_name")
    return ServiceNames(config.attributes["service_name"])


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
