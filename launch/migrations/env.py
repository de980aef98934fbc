"""Alembic environment: runs migrations on the connection handed over by ``launch.db``."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable when alembic is run by hand
    raise RuntimeError("run migrations with `chartcite db upgrade`, not the alembic command")
context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
