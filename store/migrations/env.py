"""Alembic's environment: runs on the connection ``store.db.upgrade`` hands over."""

from alembic import context
from sqlmodel import SQLModel

import store.schema  # noqa: F401  (the models fill SQLModel.metadata)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
