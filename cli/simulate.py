"""`loyalty simulate`: what a rule change would cost, replayed on a history before it goes live."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from cli.options import BATCH_SIZE
from cli.output import console, emit_json, fail, parse_moment, progress_bar
from engine.errors import RuleFileError

# `loyalty --help` loads this module: the simulation and its report are imported when the command runs.
if TYPE_CHECKING:
    from service.simulate import Candidate

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


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
                                "as in `loyalty ingest`.")] = BATCH_SIZE,
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
    from cli.simulate_view import print_simulation
    from service.simulate import CURRENT, NEW, Candidate, SimulationError, count_lines, impact, simulate

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
    from service.rule_trial import load_tried_programmes
    from service.simulate import NEW, Candidate

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
