"""Alembic's entry point for this package's migrations: runs on the connection the caller hands over
(`storage.migrations` builds the configuration in code; no alembic.ini)."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from storage import models  # noqa: F401  (registers the tables the models describe)
from storage.types import UTCDateTime

config = context.config
TARGET = SQLModel.metadata


def include_name(name: str | None, type_: str, _parent_names: dict) -> bool:
    """Compare only our own tables: the scheduler's job store (apscheduler_jobs) lives beside them."""
    return type_ != "table" or name in TARGET.tables


def render_item(type_: str, obj: object, _autogen_context: object) -> str | bool:
    """Write our column types as plain SQLAlchemy ones, so a revision never imports today's code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, AutoString):
        return repr(sa.String(length=obj.length)).replace("String(", "sa.String(")
    return False


def run_migrations_online() -> None:
    """Run the migrations on the caller's connection, inside the caller's transaction."""
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=TARGET,
        # SQLite alters most things by copying the table: autogenerate writes batch operations for it.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run `loyalty db upgrade` on the database")
run_migrations_online()
