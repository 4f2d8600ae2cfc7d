"""`loyalty apikey`: the keys callers of `loyalty serve` authenticate with: create (shown once), list, revoke."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from cli import views
from cli.output import console, emit_json, fail
from service.apikeys import SCOPES, create_key, list_keys, revoke_key
from service.errors import InputError, NotFoundError

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def apikey_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Who uses the key, e.g. pricing-service.")],
    scope: Annotated[list[str], typer.Option(
        help=f"A scope to grant (repeat for several): {', '.join(f'{s} ({d})' for s, d in SCOPES.items())}.")],
    as_json: JsonFlag = False,
) -> None:
    """Create an API key and print it once: only its hash is stored, so copy it now."""
    settings = ctx.obj
    engine = settings.engine(as_json)
    try:
        key, record = create_key(engine, name, scope)
    except InputError as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json({**record, "key": key})
        return
    console.print(f"API key {record['id']} for {escape(record['name'])} (scopes: {' '.join(record['scopes'])}):")
    console.print(key, highlight=False, soft_wrap=True)
    console.print("[yellow]Copy it now: it is not stored and cannot be shown again.[/]")


def apikey_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List API keys (ids, names, scopes, revocation), never their secrets."""
    settings = ctx.obj
    keys = list_keys(settings.engine(as_json))
    if as_json:
        emit_json(keys)
        return
    views.print_api_keys(keys)


def apikey_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id, as `loyalty apikey list` shows it.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke an API key; requests with it are refused (401) from now on."""
    settings = ctx.obj
    try:
        record = revoke_key(settings.engine(as_json), key_id)
    except NotFoundError as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(record)
        return
    console.print(f"API key {record['id']} ({escape(record['name'])}) revoked at {record['revoked_at']}")
