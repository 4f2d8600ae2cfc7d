"""`loyalty simulate`: what a rule change would cost, replayed on a history before it goes live."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.output import console, emit_json, fail, parse_moment, progress_bar
from engine.errors import RuleFileError
from service.rule_trial import load_tried_programmes
from service.simulate import CURRENT, DEFAULT_BATCH, NEW, Candidate, SimulationError, count_lines, impact, simulate

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SHOW_ERRORS = 20  # rejected lines listed in the text output (--json has them all)


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("simulate")(simulate_command)


def simulate_command(
    ctx: typer.Context,
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The proposed rules: a rule file, or a folder of versions.")],
    events: Annotated[Path, typer.Option(
        "--events", help="The history to replay: an NDJSON file of events, as `loyalty ingest` takes.")],
    against: Annotated[Optional[Path], typer.Option(
        "--against", help="The rules to compare with (file or folder). Default: the active rules (--rules).")] = None,
    as_of: Annotated[Optional[str], typer.Option(
        "--as-of", help="Replay up to this moment (ISO 8601 with zone, or a date). Default: the last event.")] = None,
    top: Annotated[int, typer.Option(min=1, max=1000, help="Most affected clients to list.")] = 10,
    report_dir: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write CSV files and report.html (with charts) to this folder.")] = None,
    batch_size: Annotated[int, typer.Option(
        min=1, max=10_000, help="Events per replayed batch; instant upgrades happen at the end of each batch, "
                                "as in `loyalty ingest`.")] = DEFAULT_BATCH,
    as_json: JsonFlag = False,
) -> None:
    """Replay a history under the proposed rules and the current ones, and show what the change costs.

    Example: `loyalty simulate proposed.yaml --events history.jsonl --report impact/`

    Each programme replays the events in time order into a temporary database file (the --db
    database is never opened), with a tier review at each moment its `review.schedule` fires, so a
    client moved up a tier earns its later awards at that tier. Compared: points issued (by rule),
    rate-discount grants (by product and rule), interest income forgone a year (each drawdown times
    the discount the client held on it), tiers at the end and the migration between them, and the
    clients affected, most affected first. Exits 1 when lines of the history were rejected (they are
    counted and listed, as by `loyalty ingest`), 2 when the rules do not load or the history cannot
    be read.
    """
    proposed = _candidate(NEW, new, as_json)
    current = _candidate(CURRENT, against, as_json) if against else \
        Candidate(CURRENT, ctx.obj.rules, ctx.obj.programmes(as_json))
    if not events.is_file():
        raise fail(f"no such file: {events} (--events names the NDJSON history to replay)", as_json=as_json)
    moment = parse_moment(as_of, as_json, "--as-of", allow_date=True) if as_of else None
    total = 2 * count_lines(events) if not as_json else None
    try:
        with progress_bar("replaying under current and new", "events", total, enabled=not as_json) as advance:
            result = impact(simulate(current, proposed, events, moment, batch_size, progress=advance), top)
    except SimulationError as exc:
        raise fail(str(exc), as_json=as_json) from None
    written: list[Path] = []
    if report_dir:
        from service.simulate_report import write_report  # matplotlib takes most of a second to import: only here

        written = write_report(result, report_dir)
    rejected = any(result["events"][side]["rejected"] for side in (CURRENT, NEW))
    if as_json:
        emit_json({**result, "report_files": [str(path) for path in written]} if report_dir else result)
        raise typer.Exit(1 if rejected else 0)
    print_simulation(result)
    if written:
        console.print(f"report written to {escape(str(report_dir))}: {', '.join(path.name for path in written)}",
                      highlight=False)
    raise typer.Exit(1 if rejected else 0)


def _candidate(label: str, location: Path, as_json: bool) -> Candidate:
    """Load rules named on the command line; exits 2 listing every problem if they do not load."""
    option = "NEW" if label == NEW else "--against"
    if not location.exists():
        raise fail(f"{option}: no rule file or folder at {location}", as_json=as_json)
    try:
        programmes = load_tried_programmes(location)  # each file tried in a child process first
    except RuleFileError as exc:
        problems = "\n  ".join(str(p) for p in exc.problems)
        raise fail(f"{option}: the rules at {location} do not load ({len(exc.problems)} problem(s)); "
                   f"run `loyalty rules check {location}`:\n  {problems}", as_json=as_json) from None
    return Candidate(label, location, programmes)


# --- the text report -----------------------------------------------------------------------------------

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
