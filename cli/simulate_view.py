"""`loyalty simulate`'s comparison for a person in a terminal: the header, one table of figures, the tier
migration and the most affected clients (`--json` and the report files hold everything)."""
from __future__ import annotations

from decimal import Decimal

from rich.markup import escape
from rich.table import Table

from cli.output import console
from service.simulate import CURRENT, NEW

SHOW_ERRORS = 20  # rejected lines listed in the text output (--json has them all)


def print_simulation(result: dict) -> None:
    """The comparison for a person: the header, one table of figures, migration, most affected clients."""
    console.print(_header(result), highlight=False)
    console.print(_figures(result))
    clients = result["clients"]
    by, total = clients["affected_by"], max(clients["total"]["current"], clients["total"]["new"])
    console.print(f"clients affected: {clients['affected']:,} of {total:,} (points {by['points']:,}, tier "
                  f"{by['tier']:,}, discounts {by['discounts']:,})", highlight=False)
    console.print(_migration(result))
    for key, title in (("top_by_points", "Most affected clients: points"),
                       ("top_by_interest", "Most affected clients: interest forgone a year")):
        if clients[key]:
            console.print(_top(clients[key], title))
    for warning in result["warnings"]:
        console.print(f"[yellow]note[/]: {escape(warning)}", highlight=False)
    _print_rejections(result)


def _header(result: dict) -> str:
    programmes, events = result["programmes"], result["events"]

    def name(side: str) -> str:
        programme = programmes[side]
        return escape(f"{programme['id']} {', '.join(programme['versions'])} ({', '.join(programme['source'])})")

    reviews = result["review_moments"]
    return (f"[bold]Simulation[/]: new {name(NEW)}\n  against current {name(CURRENT)}\n"
            f"  {events[NEW]['replayed']:,} events from {escape(result['first_event'])} to {escape(result['as_of'])}, "
            f"tier reviews: {len(reviews[CURRENT])} (current) / {len(reviews[NEW])} (new); rejected lines: "
            f"{events[CURRENT]['rejected']:,} (current) / {events[NEW]['rejected']:,} (new)")


def _figures(result: dict) -> Table:
    table = Table("", "current", "new", "difference", title="Impact", show_edge=False)
    _right_align(table)
    points, discounts = result["points"], result["discounts"]
    interest = result["interest_forgone_per_year"]
    _line(table, "[bold]points issued[/]", points["issued"])
    for row in points["by_rule"]:
        _line(table, f"  {escape(row['rule_id'])}", row)
    _line(table, "points expired", points["expired"])
    _line(table, "[bold]rate-discount grants[/]", discounts["grants"], section=True)
    for row in discounts["by_product"]:
        _line(table, f"  {escape(row['product'])}", row)
    _line(table, f"[bold]interest forgone a year ({escape(result['currency'])})[/]", interest["total"], section=True)
    for row in interest["by_product"]:
        _line(table, f"  {escape(row['product'])}", row)
    _line(table, "[bold]clients per tier[/]", result["clients"]["total"], section=True)
    for row in result["tiers"]["distribution"]:
        _line(table, f"  {escape(row['tier'])}", row)
    return table


def _right_align(table: Table, first: int = 1) -> None:
    """Numbers right-aligned: every column from `first` on."""
    for column in table.columns[first:]:
        column.justify = "right"


def _line(table: Table, label: str, figures: dict, section: bool = False) -> None:
    if section:
        table.add_section()
    table.add_row(label, _number(figures["current"]), _number(figures["new"]),
                  _number(figures["difference"], signed=True))


def _number(value: object, signed: bool = False) -> str:
    """Grouped digits, money keeping its decimals; a non-zero difference carries its sign."""
    amount = Decimal(str(value))
    return f"{amount:+,}" if signed and amount else f"{amount:,}"


def _migration(result: dict) -> Table:
    tiers = result["tiers"]["order"]
    migration = result["tiers"]["migration"]
    table = Table("current \\ new", *(escape(t) for t in tiers), title="Tier at the end: current \u2192 new")
    _right_align(table)
    for source in tiers:
        row = migration.get(source, {})
        table.add_row(escape(source), *(f"{row[target]:,}" if row.get(target) else "" for target in tiers))
    return table


def _top(rows: list[dict], title: str) -> Table:
    table = Table("client", "tier current \u2192 new", "points current", "points new", "difference",
                  "interest current", "interest new", "difference", title=title)
    _right_align(table, first=2)
    for row in rows:
        points, interest = row["points"], row["interest_forgone"]
        move = row["tier_current"] if row["tier_current"] == row["tier_new"] else \
            f"{row['tier_current'] or '-'} \u2192 {row['tier_new'] or '-'}"
        table.add_row(escape(row["client_id"]), escape(move or "-"), _number(points["current"]),
                      _number(points["new"]), _number(points["difference"], signed=True),
                      _number(interest["current"]), _number(interest["new"]),
                      _number(interest["difference"], signed=True))
    return table


def _print_rejections(result: dict) -> None:
    for side in (CURRENT, NEW):
        errors = result["events"][side]["errors"]
        if not errors:
            continue
        if side == NEW and errors == result["events"][CURRENT]["errors"]:
            console.print("  (the same lines are rejected under the new programme)")
            continue
        console.print(f"rejected under the {side} programme: {len(errors):,} line(s)", highlight=False)
        for error in errors[:SHOW_ERRORS]:
            console.print(f"  line {error['line']} ({escape(error['id'] or 'no id')}): {escape(error['error'])}",
                          highlight=False)
        if len(errors) > SHOW_ERRORS:
            console.print(f"  \u2026 and {len(errors) - SHOW_ERRORS:,} more (use --json for all)", highlight=False)
