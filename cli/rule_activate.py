"""`loyalty rules activate`: check, test and install a new programme version."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import OperationalError

from cli.output import console, emit_json, fail, parse_duration
from engine.errors import RuleFileError
from rules import shipped_rules_dir
from service import activation
from service.clock import utc_now
from service.database import SchemaMissingError, open_database
from service.errors import ConflictError, InputError
from service.rule_tests import only_version, run_rule_tests

T = TypeVar("T")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def rules_versions(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the installed versions of the programme, oldest first, and which one is in force now.

    Every version stays installed: ledger entries name the version that produced them, and an event
    is evaluated under the version in force when it occurred (late events included).
    """
    answer = activation.installed_versions(ctx.obj.programmes(as_json), utc_now())
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    table = Table("version", "effective from", "state", "rules", "file")
    for row in answer.versions:
        table.add_row(escape(row.version), row.effective_from, row.state, str(row.rules), escape(row.file))
    console.print(table)


def rules_activate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The new version's rule file.", exists=True, dir_okay=False)],
    lead: Annotated[str, typer.Option(
        help="How far ahead the version must start, at least: the clock-skew allowance for events (15 min) "
             "plus the time services take to notice the file. Shorten it only where no service is running.")]
        = f"{int(activation.DEFAULT_LEAD.total_seconds()) // 60}m",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Run every check and the rule tests; install nothing.")]
        = False,
    as_json: JsonFlag = False,
) -> None:
    """Install a new programme version: validate it, run the rule tests, then put it in the rules directory.

    Refused (exit 1, nothing installed) when the file has errors, contradicts the installed versions
    (another programme, a version label or start used twice, a tier dropped), starts before events
    already applied or sooner than `--lead`, or fails a case in the rules directory's tests/ folder
    (run under the new version alone). One activation of a directory runs at a time; the file is
    installed with the exact content that was checked, readable by services running as other users,
    and an existing version file is never replaced. A running `loyalty serve` picks the version up
    within seconds, without a restart; events are evaluated under the version in force at their time.

    Example: `loyalty rules activate corporate_lending-2027.1.yaml`
    """
    rules_dir: Path = ctx.obj.rules
    if not dry_run and rules_dir.resolve() == shipped_rules_dir().resolve():
        # The shipped programme is package data: the next `pip install` of the package would replace it.
        _refuse(f"the rules in force are the programme shipped with the package ({rules_dir}), which an upgrade "
                "of the package replaces; copy that directory to one of the bank's own, point --rules or "
                "LOYALTY_RULES at it, and activate there", [], as_json, code="shipped-rules")
    minimum_lead = parse_duration(lead, as_json, "--lead")

    def checks() -> tuple[activation.Candidate, datetime | None, bool]:
        candidate = activation.check_candidate(rules_dir, file)
        activation.check_agreement(candidate)
        latest, checked_against = _latest_event(ctx.obj.db_url, as_json)
        activation.check_start(candidate, utc_now(), latest, minimum_lead)
        return candidate, latest, checked_against

    candidate, _, _ = _refusing(checks, as_json, file)
    tests = _rule_tests(rules_dir, candidate)
    if tests["failed"]:
        _refuse(f"{tests['failed']} rule test case(s) fail under the new version (run `loyalty rules test "
                f"--programme {file}` for the differences)", tests["failures"], as_json, code="rule-tests-fail")
    with activation.activation_lock(rules_dir):
        # Again, under the lock and with the clock read now: another activation or a slow test run may
        # have changed the directory or the time left before the version starts.
        checked, latest, checked_against = _refusing(checks, as_json, file)
        if checked.content != candidate.content:
            _refuse(f"{file} changed while its rule tests ran; activate it again", [], as_json, code="file-changed")
        candidate = checked  # the same content; whether it is installed may have changed meanwhile
        if not dry_run:
            _refusing(lambda: activation.install(candidate), as_json, file)
            if checked_against and not candidate.installed:
                _announce(ctx.obj.db_url, candidate, as_json)
    programme = candidate.programme
    result = {"activated": not dry_run and not candidate.installed, "already_installed": candidate.installed,
              "programme": programme.id, "version": programme.version,
              "effective_from": programme.effective_from.isoformat(), "file": str(candidate.target),
              "tests": {"passed": tests["passed"], "failed": 0, "cases": tests["cases"]}, "checked_against_events_until":
              latest.isoformat() if latest else None, "database_checked": checked_against}
    if as_json:
        emit_json(result)
        return
    what = ("already installed: nothing to do" if candidate.installed else
            "checks passed (dry run: nothing installed)" if dry_run else f"installed as {candidate.target}")
    console.print(f"[green]ok[/] {escape(programme.id)} {escape(programme.version)} from "
                  f"{programme.effective_from.isoformat()}: {escape(what)}", highlight=False)
    if tests["cases"]:
        console.print(f"rule tests: {tests['passed']} passed", highlight=False)
    else:
        console.print(f"[yellow]note[/]: no rule tests in {escape(str(rules_dir / 'tests'))}: nothing showed the "
                      "version does what was meant (see `loyalty rules test --help`)", highlight=False)
    if not checked_against:
        console.print("[yellow]note[/]: no database with applied events here, so the start was checked "
                      "against the clock only", highlight=False)


def _refusing(step: Callable[[], T], as_json: bool, file: Path) -> T:
    """Run a check (or the install) and turn its refusal into the command's answer."""
    try:
        return step()
    except RuleFileError as exc:
        _refuse("the version does not load or contradicts the installed versions",
                [str(problem) for problem in exc.problems], as_json)
    except ConflictError as exc:
        _refuse(str(exc), [], as_json, code=exc.code)
    except InputError as exc:
        raise fail(str(exc), as_json=as_json) from None
    except typer.Exit:
        raise  # an answer already given (e.g. the database does not answer)
    except Exception as exc:  # noqa: BLE001 - a file the loader did not foresee (e.g. a recursive YAML alias)
        _refuse("the version cannot be loaded", [str(activation.unexpected_problem(str(file), exc))], as_json)
    raise AssertionError("unreachable: every refusal exits")


def _announce(db_url: str, candidate: activation.Candidate, as_json: bool) -> None:
    """Tell webhook receivers (the rule_version.activated notice); the version is installed whatever happens here."""
    engine = open_database(db_url)
    try:
        activation.announce(engine, candidate, utc_now())
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise fail(f"the version was installed, but its notice could not be recorded: {reason}; "
                   "receivers of rule_version.activated were not told", as_json=as_json) from None
    finally:
        engine.dispose()


def _latest_event(db_url: str, as_json: bool) -> tuple[datetime | None, bool]:
    """The latest applied event's moment, and whether a database was there to ask (none yet is fine;
    one that does not answer is not: the check would be skipped silently)."""
    try:
        engine = open_database(db_url)  # creates nothing: no database file yet is fine
    except SchemaMissingError:
        return None, False
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise fail(f"cannot ask the database which events were already applied: {reason}", as_json=as_json) from None
    try:
        return activation.latest_event_moment(engine), True
    finally:
        engine.dispose()


def _rule_tests(rules_dir: Path, candidate: activation.Candidate) -> dict:
    """Run the rules directory's test cases under the candidate version alone: passed, failed, why."""
    cases = sorted((rules_dir / "tests").glob("*.yaml"))
    try:
        report = run_rule_tests(only_version(candidate.programme), cases)
    except RuleFileError as exc:  # a case that no longer fits the programme (a rule or tier it names is gone)
        return {"passed": 0, "failed": len(exc.problems), "cases": None,
                "failures": [str(problem) for problem in exc.problems]}
    except Exception as exc:  # noqa: BLE001 - a case file the loader did not foresee must refuse, not crash
        return {"passed": 0, "failed": 1, "cases": None,
                "failures": [f"the rule tests could not run ({type(exc).__name__}: {exc})"]}
    failures = [f"{result.file}:{result.line}: {result.name}: " + (result.error or "; ".join(
        f"{d.field} expected {d.expected!r}, got {d.actual!r}" for d in result.differences))
        for result in report.cases if not result.passed]
    return {"passed": report.passed, "failed": report.failed, "cases": len(report.cases), "failures": failures}


def _refuse(reason: str, details: list[str], as_json: bool, code: str = "invalid-version") -> None:
    if as_json:
        emit_json({"activated": False, "code": code, "reason": reason, "details": details})
    else:
        console.print(f"[red]refused[/]: {escape(reason)}", highlight=False)
        for line in details:
            console.print(f"  {escape(line)}", highlight=False)
    raise typer.Exit(1)
