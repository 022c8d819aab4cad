"""Alembic environment: host/server/db.py runs the migrations over its own connection."""

from __future__ import annotations

from alembic import context

from host.server.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
