"""`loyalty db`: upgrade the database's schema to this release's head, and show where it stands."""
from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from sqlalchemy.exc import OperationalError
from rich.markup import escape
from rich.table import Table

from cli.output import console, emit_json, fail
from service.database import SchemaBusyError, SchemaMissingError, revision_history, schema_status, upgrade

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def db_upgrade(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Upgrade the schema to this release's head revision (an empty database gets the whole schema).

    Safe to run again, and on several replicas at once: one upgrades, the others wait for it (PostgreSQL:
    an advisory lock; SQLite: the write lock) and find the database at head. Back up first: a migration
    may rewrite large tables. Exit 2 if the database is newer than this release.

    Example: `LOYALTY_DATABASE_URL=postgresql://loyalty@db:5432/loyalty loyalty db upgrade`
    """
    engine = ctx.obj.engine(as_json, need_schema=False)
    try:
        result = upgrade(engine)
    except (SchemaMissingError, SchemaBusyError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    finally:
        engine.dispose()
    changed = result.from_revision != result.to_revision
    if as_json:
        emit_json({**asdict(result), "upgraded": changed})
    elif changed:
        console.print(f"upgraded {escape(result.database)} from {result.from_revision or 'an empty database'} to "
                      f"{result.to_revision} in {result.seconds:.2f} s", highlight=False)
    else:
        console.print(f"{escape(result.database)} is already at {result.to_revision}: nothing to do", highlight=False)


def db_current(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show the database's schema revision against this release's head; creates nothing.

    Exit 0 at head, 1 when it is empty, behind (run `loyalty db upgrade`) or ahead (a newer release
    upgraded it). Example: `loyalty db current || loyalty db upgrade`
    """
    try:
        status = schema_status(ctx.obj.db_url)
    except SchemaMissingError as exc:  # a pre-release schema: no revision to show
        raise fail(str(exc), as_json=as_json) from None
    except OperationalError as exc:
        raise fail(ctx.obj.cannot_open(exc), as_json=as_json) from None
    if as_json:
        emit_json(asdict(status))
    else:
        advice = {"at head": "", "empty": ": run `loyalty init`", "behind": ": run `loyalty db upgrade`",
                  "ahead": ": a newer release upgraded it; run that release"}[status.status]
        console.print(f"{escape(status.database)}: revision {status.revision or 'none'} ({status.status}, this "
                      f"release's head is {status.head}){advice}", highlight=False)
    raise typer.Exit(0 if status.status == "at head" else 1)


def db_history(as_json: JsonFlag = False) -> None:
    """List the schema migrations this release ships, oldest first (the last is head).

    Example: `loyalty db history --json`
    """
    revisions = revision_history()
    if as_json:
        emit_json([asdict(r) for r in revisions])
        return
    table = Table("revision", "after", "what it changes")
    for r in revisions:
        table.add_row(r.revision + (" (head)" if r.head else ""), r.down_revision or "-", escape(r.message))
    console.print(table)
