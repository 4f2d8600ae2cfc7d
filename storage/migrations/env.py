"""Alembic's entry point for this package's migrations: runs on the connection the program hands over
(`storage.migrations` builds the configuration in code). Developers writing a revision run Alembic's
own command with storage/migrations/alembic.ini instead: it works on $LOYALTY_DATABASE_URL (README,
Upgrading)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from storage.migrations import TARGET, include_name, render_item

config = context.config


def run_migrations_online() -> None:
    """Run the migrations on the caller's connection, inside the caller's transaction."""
    connection = config.attributes.get("connection")
    if connection is None:  # Alembic's command line (a developer's `alembic revision --autogenerate`)
        from storage.db import make_engine

        with make_engine().connect() as connection:
            _run(connection)
            connection.commit()
        return
    _run(connection)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=TARGET,
        # SQLite alters most things by copying the table: new revisions use batch operations, which
        # are plain ALTERs on PostgreSQL, so one revision serves both databases.
        render_as_batch=True,
        compare_type=True,
        include_name=include_name,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run `loyalty db upgrade` on the database")
run_migrations_online()
