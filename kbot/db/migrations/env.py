"""Alembic environment: kbot passes an open connection in ``config.attributes``."""

from alembic import context

from kbot.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through kbot (`kbot db upgrade`), which supplies the connection.")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
