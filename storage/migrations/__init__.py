"""The schema's migrations (Alembic), run in code on a connection the caller holds: no alembic.ini.

`env.py` and `versions/` travel as package data; `storage.db.init_schema` takes the lock and calls
`upgrade`. Imported only where the schema changes or its history is shown: Alembic is not needed
to check a database's revision (see `storage.db.require_schema`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

LOCATION = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Revision:
    """One revision of the schema, as `loyalty db history` shows it."""

    revision: str
    down_revision: str | None
    message: str


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(LOCATION))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, stamp_first: str | None = None) -> None:
    """Run every revision after the database's own, to head, in the connection's transaction; with
    `stamp_first`, record that revision as already there first (a database created before migrations)."""
    config = _config(connection)
    if stamp_first is not None:
        command.stamp(config, stamp_first)
    command.upgrade(config, "head")


def history() -> list[Revision]:
    """Every revision, oldest first."""
    scripts = ScriptDirectory.from_config(_config())
    return [Revision(s.revision, s.down_revision, (s.doc or "").strip().splitlines()[0] if s.doc else "")
            for s in reversed(list(scripts.walk_revisions()))]
