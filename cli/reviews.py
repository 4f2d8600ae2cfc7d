"""Commands of the periodic management loop: pins (`tier set`), churn flags, points expiry."""
from __future__ import annotations

import getpass
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.output import console, emit_json, fail, parse_duration, parse_moment, progress_bar
from service.errors import ConflictError, InputError, NotFoundError

# `loyalty --help` loads this module (for `churn`): each command imports the services it uses.

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def tier_set(
    ctx: typer.Context,
    client_id: Annotated[str, typer.Argument(help="The lender's client id, e.g. C-1001.")],
    tier: Annotated[str, typer.Argument(help="The tier to pin the client to, e.g. gold.")],
    until: Annotated[str, typer.Option(help="When the pin ends: a date (00:00 UTC) or an ISO 8601 moment.")],
    reason: Annotated[str, typer.Option(help="Why, for the tier history and the review reports.")],
    author: Annotated[Optional[str], typer.Option(help="Who decided. Default: your user name.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Pin a client to a tier until a date: it moves there now, and reviews leave it there until then.

    The move, its standing benefits and the pin (reason, author) are recorded in the tier history and
    the ledger; each review reports the pins it honoured. A later pin replaces an earlier one.
    Example: `loyalty tier set C-1001 diamond --until 2027-06-30 --reason "strategic account"`.
    """
    from service.pins import pin_tier

    settings = ctx.obj
    programmes = settings.programmes(as_json)
    engine = settings.engine(as_json)
    moment = parse_moment(until, as_json, "--until", allow_date=True)
    try:
        result = pin_tier(engine, programmes, client_id, tier, moment, reason, author or getpass.getuser())
    except (InputError, NotFoundError, ConflictError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    move = f"moved from {result.from_tier} to {result.tier}" if result.moved else f"already {result.tier}"
    console.print(f"{escape(client_id)} pinned to [bold]{escape(tier)}[/] until {result.until} ({move}); "
                  f"reason: {escape(result.reason)}; by {escape(result.author)}", highlight=False)


def tier_unset(
    ctx: typer.Context,
    client_id: Annotated[str, typer.Argument(help="The lender's client id, e.g. C-1001.")],
    reason: Annotated[str, typer.Option(help="Why the pin ends early, for the client's pin history.")],
    author: Annotated[Optional[str], typer.Option(help="Who decided. Default: your user name.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """End a client's pin now: it keeps its tier until the next review places it as usual.

    The pin stays in the client's history, with a record of who ended it and why.
    Example: `loyalty tier unset C-1001 --reason "relationship reviewed"`.
    """
    from service.pins import unpin_tier

    settings = ctx.obj
    engine = settings.engine(as_json)
    try:
        result = unpin_tier(engine, client_id, reason, author or getpass.getuser())
    except (InputError, NotFoundError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    console.print(f"{escape(client_id)}: pin to {escape(result.pinned_tier)} (until {result.pinned_until}) ended at "
                  f"{result.ended_at}; it stays {escape(result.tier)} until a review places it; reason: "
                  f"{escape(result.reason)}; by {escape(result.author)}", highlight=False)


def churn(
    ctx: typer.Context,
    tier: Annotated[Optional[str], typer.Option(help="Only clients of this tier.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Also flags cleared since (recovered clients).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Most clients to list.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Clients flagged at risk of leaving by the last reviews, most valuable (loan volume) first.

    Each flag lists the signals that fired (from the rule file's `churn` section) with their values.
    A client that recovers is un-flagged by the next review; `--history` shows cleared flags too.
    """
    from service.churn import churn_list

    settings = ctx.obj
    programmes = settings.programmes(as_json)
    engine = settings.engine(as_json)
    if tier is not None and tier not in programmes.current.tier_ids:
        raise fail(f"--tier {tier!r} is not a tier; expected one of: {', '.join(programmes.current.tier_ids)}",
                   as_json=as_json)
    flags = [flag.model_dump(mode="json") for flag in
             churn_list(engine, programmes.current.currency, tier=tier, history=history)]
    if as_json:
        emit_json(flags[:limit])
        return
    if not flags:
        console.print("no churn flags" + (f" in tier {escape(tier)}" if tier else ""))
        return
    table = Table("client", "name", "tier", "loan volume", "signals", "raised", "cleared", title="Churn early warning")
    for flag in flags[:limit]:
        signals = "; ".join(f"{s['id']} ({s['metric']} {s['value']})" for s in flag["signals"])
        table.add_row(escape(flag["client_id"]), escape(flag["name"] or "-"), flag["tier"], flag["loan_volume"],
                      escape(signals), flag["raised_at"][:10], (flag["cleared_at"] or "-")[:10])
    console.print(table)
    if len(flags) > limit:
        console.print(f"… and {len(flags) - limit} more (--limit N, or --json)")


def points_expiring(
    ctx: typer.Context,
    within: Annotated[str, typer.Option(help="How far ahead to look: 30d, 12w, 48h.")] = "30d",
    client_id: Annotated[Optional[str], typer.Option("--client", help="Only this client.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most lots to list.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Points that will expire within a period, soonest first: each lot with its client and expiry moment.

    Points expire `points.expire_after_months` after they were earned; redemptions and reversals take
    the oldest lots first, so only what is left of a lot expires.
    """
    from service.expiry import expiring, expiring_answer

    settings = ctx.obj
    programmes = settings.programmes(as_json)
    engine = settings.engine(as_json)
    now, span = parse_moment(None, as_json), parse_duration(within, as_json, "--within")
    if as_json:
        emit_json(expiring_answer(engine, programmes, now, span, within, client_id, limit).model_dump(mode="json"))
        return
    lots = [lot.model_dump(mode="json") for lot in expiring(engine, programmes, now, span, client_id)]
    if not lots:
        console.print(f"no points expire within {escape(within)}")
        return
    table = Table("client", "points", "of", "earned", "expires", "event", "rule", title=f"Points expiring within {within}")
    for lot in lots[:limit]:
        table.add_row(escape(lot["client_id"]), f"{lot['points']:,}", f"{lot['earned']:,}", lot["earned_at"][:10],
                      lot["expires_at"][:16], escape(lot["event_id"]), lot["rule_id"])
    console.print(table)
    clients = len({lot["client_id"] for lot in lots})
    console.print(f"{sum(lot['points'] for lot in lots):,} points in {len(lots):,} lots of {clients:,} clients"
                  + (f" (first {limit} listed)" if len(lots) > limit else ""))


def points_expire(
    ctx: typer.Context,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Expire what has expired by then. Default: now.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would expire, write nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Expire points now (the scheduler does it on the rule file's `points.expiry_schedule`).

    Writes one `expire` entry per lot for what is left of it. Running it again expires nothing more.
    """
    from service.expiry import expire_points

    settings = ctx.obj
    programmes = settings.programmes(as_json)
    engine = settings.engine(as_json)
    moment = parse_moment(as_of, as_json, "--as-of")
    try:
        with progress_bar("expiring points", "clients", enabled=not as_json) as advance:
            report = expire_points(engine, programmes, moment, dry_run=dry_run, progress=advance)
    except InputError as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(report.as_dict())
        return
    verb = "would expire" if dry_run else "expired"
    console.print(f"{verb} {report.points:,} points in {report.lots:,} lots of {len(report.clients):,} clients "
                  f"(as of {moment.isoformat()})")
