"""The database itself: open it for a command or the server, check that its schema is at the revision
this program needs, upgrade it to head, and show where it stands."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

# The roles, settings and errors of the database, for callers that do not reach into storage.
from storage.db import (API, BATCH, URL_ENV, SchemaBusyError, SchemaMissingError, SchemaUpgrade,  # noqa: F401
                        database_revision, database_url, init_schema, make_engine, require_schema, timeouts, where)
from storage.models import SCHEMA_REVISIONS, SCHEMA_VERSION


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this program: `at head`, `behind`, `ahead` or `empty`."""

    database: str
    revision: str | None
    head: str
    status: str


@dataclass(frozen=True)
class RevisionInfo:
    """One migration, as `loyalty db history` lists it."""

    revision: str
    down_revision: str | None
    message: str
    head: bool


def open_database(url: str | None, role: str = BATCH, need_schema: bool = True) -> Engine:
    """An engine on the database; with `need_schema`, SchemaMissingError unless it is at head (nothing is
    created: a missing SQLite file stays missing), else one connection is opened to show it answers."""
    engine = make_engine(url, role)
    try:
        if need_schema:
            require_schema(engine)
        else:
            engine.connect().close()
    except BaseException:
        engine.dispose()
        raise
    return engine


def upgrade(engine: Engine) -> SchemaUpgrade:
    """Upgrade the schema to head (create it on an empty database); one upgrader at a time, safe to repeat."""
    return init_schema(engine)


def create_schema(engine: Engine) -> SchemaUpgrade:
    """Create the schema on an empty database (`loyalty init`); one at head is left as it is, one at another
    revision refused with SchemaMissingError: upgrading a live database is a deliberate `loyalty db upgrade`."""
    if database_revision(engine).revision is not None:
        require_schema(engine)
    return init_schema(engine)


def schema_status(url: str | None) -> SchemaStatus:
    """The database's revision against this program's head, without creating anything."""
    engine = make_engine(url)
    try:
        revision = database_revision(engine).revision
    finally:
        engine.dispose()
    status = ("empty" if revision is None else "at head" if revision == SCHEMA_VERSION
              else "behind" if revision in SCHEMA_REVISIONS else "ahead")
    return SchemaStatus(where(engine), revision, SCHEMA_VERSION, status)


def revision_history() -> list[RevisionInfo]:
    """Every migration this program ships, oldest first."""
    # Imported here: Alembic reads every revision file, which no other command needs.
    from storage import migrations

    return [RevisionInfo(r.revision, r.down_revision, r.message, r.revision == SCHEMA_VERSION)
            for r in migrations.history()]
