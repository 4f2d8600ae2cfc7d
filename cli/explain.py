"""`loyalty explain CLIENT`: why a client holds each entitlement, or one entitlement and what became of it."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from cli.output import console, emit_json, fail, parse_moment
from service.errors import InputError, NotFoundError

# `loyalty --help` loads this module: the explanation service is imported when the command runs.

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def explain(
    ctx: typer.Context,
    client_id: Annotated[str, typer.Argument(help="The lender's client id, e.g. C-1001.")],
    entitlement: Annotated[Optional[int], typer.Option(
        "--entitlement", min=1, help="Explain only this entitlement (its id, as `loyalty benefits` lists it), "
                                     "whatever became of it, with its history.")] = None,
    at: Annotated[Optional[str], typer.Option(
        help="Moment to look at: ISO 8601 with a zone, or a date (00:00 UTC). Default: now.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Why a client holds each entitlement: the rule and programme version that granted it, the rule's
    conditions against the values of the event that met them, and for standing tier benefits the tier
    decision (review, instant upgrade or pin) with its metric values and thresholds.

    Also shows the client's tier, the highest tier its metrics reach and when the review policy moves it
    there, what the next tier needs, and its points balance split by rule.

    Examples:

    `loyalty explain C-1001` — everything C-1001 holds now.

    `loyalty explain C-1001 --entitlement 12` — one entitlement, even consumed, revoked, reversed or
    expired: who granted it, and what consumed (quote, loan), revoked (tier move) or reversed it.

    `loyalty explain C-1001 --at 2026-05-21T00:00:00Z --json` — what it held then, for scripts
    (`--at 2026-05-21` is the same moment: a date means 00:00 UTC).

    Exits 2 for an unknown client, an unknown entitlement, or an entitlement of another client.
    """
    from service.explain import explain_client

    programmes = ctx.obj.programmes(as_json)
    engine = ctx.obj.engine(as_json)
    try:
        answer = explain_client(engine, programmes, client_id, parse_moment(at, as_json, allow_date=True),
                                entitlement).model_dump(mode="json")
    except (NotFoundError, InputError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(answer)
        return
    print_explanation(answer)


# --- text ------------------------------------------------------------------------------------------------

def print_explanation(answer: dict) -> None:
    """The explanation for people: the client's tier and points, then one block per entitlement."""
    programme = answer["programme"]
    console.print(f"[bold]{escape(answer['client_id'])}[/] {escape(answer['name'] or '')}  as of "
                  f"{_when(answer['as_of'])} UTC  ({escape(programme['id'])} {escape(programme['version'])})",
                  highlight=False)
    tier = answer["tier"]
    decision = tier["decision"]
    if tier["current"] is None:
        console.print("not a client yet at that moment")
    else:
        console.print(f"[bold]tier {escape(tier['current'])}[/] since {_when(tier['since'])}", highlight=False)
        _print_decision(decision, "  ")
        _print_next_tier(tier)
    _print_points(answer["points"])
    entitlements = answer["entitlements"]
    if answer["entitlement_id"] is None:
        count = len(entitlements)
        console.print(f"\n{count} entitlement{'' if count == 1 else 's'} held at {_when(answer['as_of'])}"
                      + ("" if count else "; `--entitlement ID` explains one that is no longer held"))
    shown = {decision["id"]} if decision else set()
    for item in entitlements:
        console.print()
        _print_entitlement(item, shown)


def _print_decision(decision: dict | None, indent: str) -> None:
    if decision is None:
        console.print(f"{indent}no tier decision found for it")
        return
    how = {"review": f"by review {decision['review']['id']}" if decision["review"] else "by review",
           "instant_upgrade": "by instant upgrade", "pin": "by pin", "new_client": "as a new client"}[decision["how"]]
    moved = f"{decision['from_tier']} → {decision['tier']}" if decision["from_tier"] else decision["tier"]
    console.print(f"{indent}decision {decision['id']}: {escape(moved)} at {_when(decision['valid_from'])} {escape(how)}"
                  f" ({escape(decision['programme']['id'])} {escape(decision['programme']['version'])}): "
                  f"{escape(decision['reason'])}", highlight=False)
    if decision["pin"]:
        pin = decision["pin"]
        console.print(f"{indent}  pinned by {escape(pin['author'])} until {_when(pin['until'])}: "
                      f"{escape(pin['reason'])}", highlight=False)
    if decision["latest_event"]:
        event = decision["latest_event"]
        console.print(f"{indent}  measured with the client's activity up to event {escape(event['id'])} "
                      f"({escape(event['type'])} at {_when(event['occurred_at'])})", highlight=False)
    if decision["reasons_source"] == "recomputed":
        console.print(f"{indent}  the decision recorded no metrics; recomputed now from the stored events:")
    for verdict in decision["reasons"]:
        console.print(f"{indent}  {escape(verdict['tier'])}: "
                      f"{'qualifies' if verdict['qualifies'] else 'does not qualify'}", highlight=False)
        for check in verdict["checks"]:
            console.print(f"{indent}    {_mark(check['met'])} {escape(check['text'])}", highlight=False)


def _print_next_tier(tier: dict) -> None:
    if tier["outlook"]:
        console.print(f"  outlook: {escape(tier['outlook']['text'])}", highlight=False)
    upcoming = tier["next_tier"]
    if upcoming is None:
        console.print(f"  next tier: none, {escape(tier['current'])} is the highest")
        return
    # When it moves is the outlook's to say: it knows the policy and every tier the metrics reach.
    console.print(f"  next tier {escape(upcoming['tier'])}"
                  + (": qualifies" if upcoming["qualifies"] else " needs:"), highlight=False)
    _print_requirement(upcoming["requirement"], "    ")


def _print_requirement(group: dict | None, indent: str) -> None:
    if group is None:
        return
    console.print(f"{indent}{group['combine']} of:")
    for item in group["items"]:
        if "combine" in item:
            _print_requirement(item, indent + "  ")
            continue
        console.print(f"{indent}  {_mark(item['met'])} {escape(item['text'])}", highlight=False)


def _print_points(points: dict) -> None:
    parts = [f"earned {points['earned']:,}"] + [f"{label} {points[key]:,}" for key, label in
                                                 (("redeemed", "redeemed"), ("expired", "expired"),
                                                  ("reversed", "reversed"), ("adjusted", "adjusted")) if points[key]]
    console.print(f"[bold]points {points['balance']:,}[/] = {', '.join(parts)}", highlight=False)
    for row in points["earned_by_rule"]:
        console.print(f"  {escape(row['rule_id'] or '-')}: {row['points']:,} in {row['entries']} "
                      f"entr{'y' if row['entries'] == 1 else 'ies'}", highlight=False)
    for row in points["redeemed_by_reward"]:
        console.print(f"  spent on {escape(row['reward'])}: {-row['points']:,}", highlight=False)


def _print_entitlement(item: dict, shown: set[int]) -> None:
    valid = f"{_when(item['valid_from'])} → {_when(item['valid_to']) if item['valid_to'] else 'no end'}"
    since = f" since {_when(item['status_since'])}" if item["status_since"] else ""
    status = item["status"].replace("_", " ") + since
    console.print(f"[bold]entitlement {item['id']}[/]: {escape(item['what'])}", highlight=False)
    console.print(f"  valid {valid}; {escape(status)}", highlight=False)
    rule, programme = item["rule"], item["programme"]
    console.print(f"  why: {escape(rule['id'])}, programme {escape(programme['id'])} {escape(programme['version'])}"
                  + (f": {escape(rule['description'])}" if rule["description"] else ""), highlight=False)
    if rule["note"]:
        console.print(f"  [yellow]{escape(rule['note'])}[/]", highlight=False)
    for condition in rule["conditions"]:
        console.print(f"    {_mark(condition['met'])} {escape(condition['text'])}", highlight=False)
    if rule["found"] and rule["event_type"] and not rule["conditions"] and item["events"]:
        console.print(f"    every {escape(rule['event_type'])} event qualifies (no conditions)", highlight=False)
    for event in item["events"]:
        data = ", ".join(f"{key}={value}" for key, value in event["data"].items())
        reversed_ = (f" [red](reversed at {_when(event['reversed']['at'])}: {escape(event['reversed']['reason'])})[/]"
                     if event["reversed"] else "")
        console.print(f"  event {escape(event['id'])} {escape(event['type'])} at {_when(event['occurred_at'])}: "
                      f"{escape(data)}{reversed_}", highlight=False)
    redemption = item["redemption"]
    if redemption:
        cost = f"{redemption['points']:,} points (entry {redemption['entry_id']})" if redemption["points"] else "?"
        console.print(f"  redeemed {escape(redemption['reward'])} at {_when(redemption['redeemed_at'])} for {cost}",
                      highlight=False)
    decision = item["tier_decision"]
    if item["source"] == "tier":
        if decision and decision["id"] in shown:
            console.print(f"  tier decision {decision['id']}, shown above")
        else:
            _print_decision(decision, "  ")
            if decision:
                shown.add(decision["id"])
    console.print("  history:")
    for step in item["history"]:
        entry = f" (entry {step['entry_id']})" if step["entry_id"] else ""
        console.print(f"    {_when(step['at'])} {escape(step['text'])}{entry}", highlight=False)


def _when(moment: str | None) -> str:
    """An ISO moment as `2026-05-20 14:00:00` (UTC; sub-second offsets of tier moves left out)."""
    return moment[:19].replace("T", " ") if moment else "-"


def _mark(met: bool) -> str:
    return "[green]✓[/]" if met else "[red]✗[/]"
