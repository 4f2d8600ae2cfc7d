"""The schema's migrations (Alembic), run in code on a connection the caller holds: no alembic.ini.

`env.py` and `versions/` travel as package data; `storage.db.init_schema` takes the lock and calls
`upgrade`. Imported only where the schema changes or its history is shown: Alembic is not needed
to check a database's revision (see `storage.db.require_schema`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from storage import models  # noqa: F401  (registers the tables the models describe)
from storage.types import UTCDateTime

LOCATION = Path(__file__).resolve().parent
TARGET = SQLModel.metadata


@dataclass(frozen=True)
class Revision:
    """One revision of the schema, as `loyalty db history` shows it."""

    revision: str
    down_revision: str | None
    message: str


def include_name(name: str | None, type_: str, _parent_names: dict) -> bool:
    """Compare only our own tables: the scheduler's job store (apscheduler_jobs) lives beside them."""
    return type_ != "table" or name in TARGET.tables


def render_item(type_: str, obj: object, _autogen_context: object) -> str | bool:
    """Write our column types as plain SQLAlchemy ones in new revisions, which never import today's code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, AutoString):
        return repr(sa.String(length=obj.length)).replace("String(", "sa.String(")
    return False


def drift(connection: Connection) -> list:
    """What differs between the models and the database's schema (none: they agree), as Alembic sees it."""
    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
    return compare_metadata(context, TARGET)


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(LOCATION))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, stamp_first: str | None = None, target: str = "head") -> None:
    """Run every revision after the database's own up to `target`, in the connection's transaction; with
    `stamp_first`, record that revision as already there first (a database created before migrations)."""
    config = _config(connection)
    if stamp_first is not None:
        command.stamp(config, stamp_first)
    command.upgrade(config, target)


def downgrade(connection: Connection, target: str) -> None:
    """Undo the revisions after `target`, in the connection's transaction (tests make old databases this way)."""
    command.downgrade(_config(connection), target)


def history() -> list[Revision]:
    """Every revision, oldest first."""
    scripts = ScriptDirectory.from_config(_config())
    return [Revision(s.revision, s.down_revision, (s.doc or "").strip().splitlines()[0] if s.doc else "")
            for s in reversed(list(scripts.walk_revisions()))]
