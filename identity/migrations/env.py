"""Alembic environment: runs on the connection that identity.db hands over."""

from alembic import context

from identity.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - congvu always passes one
    raise RuntimeError("run migrations with `congvu db upgrade`")

context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
