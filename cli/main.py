"""`loyalty`: run a loyalty programme from the command line.

Exit status: 0 success; 1 the command ran and found problems (rejected events, invalid rules,
ledger mismatches); 2 it could not run (bad arguments, no database schema, unloadable rules).
"""
from __future__ import annotations

import atexit
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer
from rich.markup import escape
from typer.core import TyperGroup

from cli import consume, explain, reviews, serve, simulate, views
from cli.lazy import lazy_group
from cli.options import BATCH_SIZE
from cli.webhooks import dispatch_command
from cli.output import console, emit_json, fail, parse_moment, progress_bar
from engine.errors import RuleFileError
from service.errors import ConflictError, InputError, NotFoundError, ReviewInterruptedError, SettingError

# Every command imports the services it uses in its body, and groups load their commands when they are
# used (cli/lazy.py): `loyalty --help` imports no database layer, and each command only what it needs.
if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.exc import OperationalError

    from engine.programme import ProgrammeSet
    from service.ingest import Ingestor, IngestReport
    from service.rejects import RejectsFile
    from service.rules_watcher import RulesWatcher


class _DatabaseErrorsExit2(TyperGroup):
    """Any command: a database that stops answering or refuses the work mid-way, or a LOYALTY_* setting
    out of range (read wherever an engine is made), ends the command with exit 2 and one line naming the
    database or the variable and what to do, never a traceback."""

    def invoke(self, ctx: typer.Context):  # noqa: ANN201 - whatever the command returns
        words = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except SettingError as exc:
            raise fail(f"{exc}; correct or unset it", as_json="--json" in words) from None
        except Exception as exc:
            if not isinstance(exc, _database_errors()):
                raise
            from sqlalchemy.engine import make_url

            settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings(None, None)
            where = make_url(settings.db_url).render_as_string(hide_password=True)
            lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            reason = lines[0] if lines else type(exc).__name__
            raise fail(f"the database {where} failed: {reason}. Check that it is running, reachable and not locked "
                       "by a stuck process, then run the command again (committed work is kept; re-running "
                       "ingest counts applied events as duplicates)", as_json="--json" in words) from None


def _database_errors() -> tuple[type[Exception], ...]:
    """The database layer's failures; none when the command never loaded it (then none can have happened)."""
    if "sqlalchemy" not in sys.modules:
        return ()
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    return DBAPIError, PoolTimeoutError


app = typer.Typer(
    cls=_DatabaseErrorsExit2,
    help="Loyalty-programme rules engine for corporate lenders: rule files in, entitlements out.\n\n"
         "Typical session: `loyalty init`, `loyalty ingest events.jsonl`, `loyalty benefits C-1001 "
         "--product working_capital`, `loyalty ledger C-1001`.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="markdown", pretty_exceptions_show_locals=False)
app.command("churn")(reviews.churn)
app.command("simulate")(simulate.simulate_command)
app.command("explain")(explain.explain)
app.command()(serve.serve)
app.command("scheduler")(serve.run_scheduler)
app.command("consume")(consume.consume_command)
app.command("dispatch")(dispatch_command)
# Groups, after the commands (`loyalty --help` lists them so); each command is "module:function".
app.add_typer(lazy_group(
    "Author rule files safely: check, test, diff, schema, then activate a new version.",
    check="cli.rule_check:rules_check", schema="cli.rule_schema:rules_schema", diff="cli.rule_diff:rules_diff",
    test="cli.rule_tests:rules_test", activate="cli.rule_activate:rules_activate",
    versions="cli.rule_activate:rules_versions"), name="rules")
app.add_typer(lazy_group(
    "API keys for `loyalty serve`: create (shown once), list, revoke.",
    create="cli.apikeys:apikey_create", list="cli.apikeys:apikey_list", revoke="cli.apikeys:apikey_revoke"),
    name="apikey")
app.add_typer(lazy_group(
    "The database's schema: upgrade it to this release (`loyalty db upgrade`), see its revision (`current`) and "
    "the migrations this release ships (`history`). After installing a new release: `loyalty db current || "
    "loyalty db upgrade`.",
    upgrade="cli.db:db_upgrade", current="cli.db:db_current", history="cli.db:db_history"), name="db")
app.add_typer(lazy_group("Manual tier overrides: pin a client to a tier until a date, or end a pin early.",
                         set="cli.reviews:tier_set", unset="cli.reviews:tier_unset"), name="tier")
app.add_typer(lazy_group("Points lots: what will expire, and expiry now.",
                         expiring="cli.reviews:points_expiring", expire="cli.reviews:points_expire"), name="points")
app.add_typer(lazy_group(
    "Webhooks: subscribe URLs to notices (signed, retried, logged), the delivery log, replay, the notice types. "
    "`loyalty dispatch` sends them.",
    add="cli.webhooks:webhooks_add", list="cli.webhooks:webhooks_list", remove="cli.webhooks:webhooks_remove",
    enable="cli.webhooks:webhooks_enable", deliveries="cli.webhooks:webhooks_deliveries",
    replay="cli.webhooks:webhooks_replay", types="cli.webhooks:webhooks_types"), name="webhooks")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ClientArg = Annotated[str, typer.Argument(help="The lender's client id, e.g. C-1001.")]
AtOption = Annotated[Optional[str], typer.Option(help="Moment to look at (ISO 8601 with zone). Default: now.")]


class Settings:
    """Where the database and the rules are, from options or the environment."""

    def __init__(self, db: str | None, rules: Path | None, log_format: str = "text"):
        from rules import shipped_rules_dir

        self._db = db
        self.rules = rules or shipped_rules_dir()
        self.log_format = log_format
        self._engines: list[Engine] = []

    @property
    def db_url(self) -> str:
        """The database URL; an unsupported one raises SettingError (exit 2), only in commands that use it."""
        from service.database import database_url

        return database_url(self._db)

    def engine(self, as_json: bool, need_schema: bool = True, role: str | None = None) -> Engine:
        """The database engine for `role` (API or BATCH, the default); exits with a clear message when the
        schema is missing or not at this release's revision (nothing is created: a missing SQLite file stays
        missing)."""
        from sqlalchemy.exc import OperationalError

        from service.database import BATCH, SchemaMissingError, open_database

        try:
            engine = open_database(self.db_url, role or BATCH, need_schema)
        except SchemaMissingError as exc:
            raise fail(str(exc), as_json=as_json) from None
        except OperationalError as exc:
            raise fail(self.cannot_open(exc, role), as_json=as_json) from None
        self._engines.append(engine)
        return engine

    def close(self) -> None:
        """Close the database connections of every engine handed out (SQLite then checkpoints its WAL file)."""
        for engine in self._engines:
            engine.dispose()
        self._engines.clear()

    def cannot_open(self, exc: OperationalError, role: str | None = None) -> str:
        """What to tell a person whose database (for `role`, BATCH by default) did not answer."""
        from sqlalchemy.engine import make_url

        from service.database import BATCH, timeouts

        where = make_url(self.db_url).render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return (f"cannot open the database {where}: {reason}; check that it is running and reachable "
                f"(connect timeout {timeouts(role or BATCH).connect:g} s, LOYALTY_DB_CONNECT_TIMEOUT)")

    def initialised_engine(self, as_json: bool) -> Engine:
        """The database engine, creating the schema on an empty database (one at another revision is refused)."""
        from service.database import SchemaBusyError, SchemaMissingError, create_schema

        engine = self.engine(as_json, need_schema=False)
        try:
            create_schema(engine)
        except (SchemaMissingError, SchemaBusyError) as exc:
            raise fail(str(exc), as_json=as_json) from None
        return engine

    def programmes(self, as_json: bool) -> ProgrammeSet:
        """The active programme versions; exits listing every problem if they do not load."""
        return self.rules_watcher(as_json).current()

    def rules_watcher(self, as_json: bool, interval: float = 1.0) -> RulesWatcher:
        """The active rules, reloaded when a rule file changes; exits listing every problem if they do not load."""
        from service.rules_watcher import RulesWatcher

        if not self.rules.exists():
            raise fail(f"no rules at {self.rules}; point --rules or LOYALTY_RULES at the bank's rules directory "
                       "(or one rule file)", as_json=as_json)
        try:
            return RulesWatcher(self.rules, interval)
        except RuleFileError as exc:
            problems = "\n  ".join(str(p) for p in exc.problems)
            raise fail(f"the rules at {self.rules} do not load:\n  {problems}", as_json=as_json) from None


def _print_version(value: bool) -> None:
    if value:
        from service.version import DISTRIBUTION, package_version

        print(f"{DISTRIBUTION} {package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    db: Annotated[Optional[str], typer.Option(
        "--db", envvar="LOYALTY_DATABASE_URL", show_envvar=True,
        help="Database URL, e.g. sqlite:///loyalty.db or postgresql+psycopg://postgres@127.0.0.1:5432/test. "
             "Default: loyalty.db in the working directory.")] = None,
    rules: Annotated[Optional[Path], typer.Option(
        "--rules", envvar="LOYALTY_RULES", show_envvar=True,
        help="Rule file or directory of rule files (versions of one programme); production sets LOYALTY_RULES to "
             "the bank's rules directory. Default: the programme shipped with the package.")] = None,
    log_format: Annotated[Literal["text", "json"], typer.Option(
        "--log-format", envvar="LOYALTY_LOG_FORMAT", show_envvar=True,
        help="Logs as text for people, or json: one object per line for log pipelines, e.g. "
             "`loyalty --log-format json serve`.")] = "text",
    show_version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False,
) -> None:
    """Options shared by every command."""
    ctx.obj = settings = Settings(db, rules, log_format)
    ctx.call_on_close(settings.close)
    if ctx.invoked_subcommand not in ("serve", "scheduler"):  # those two log for operators, as services do
        from cli.logs import log_for_people

        log_for_people(log_format)
        # The process ends with the command, so skip the collector's passes over every object at exit (about
        # 0.15 s of CPU once the services are loaded): the OS takes the memory back. What must be closed is
        # closed before: connections by settings.close, files by their `with` blocks, logs by logging's own
        # exit hook. (serve and scheduler keep engines of their own, which only the passes would close.)
        atexit.unregister(gc.freeze)  # once, however many commands one process runs (tests run many)
        atexit.register(gc.freeze)


@app.command()
def init(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Create the database schema (tables, indexes, append-only guards): `loyalty db upgrade` on an empty
    database. Safe to run again; a database at an older revision is left to `loyalty db upgrade`.

    Example: `loyalty --db postgresql://loyalty@db:5432/loyalty init`
    """
    settings: Settings = ctx.obj
    engine = settings.initialised_engine(as_json)
    where = engine.url.render_as_string(hide_password=True)
    if as_json:
        emit_json({"database": where, "status": "ready"})
    else:
        console.print(f"Database ready: {escape(where)}")


@app.command()
def ingest(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="NDJSON file of events, or - for standard input.")],
    as_json: JsonFlag = False,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Events per transaction.")] = BATCH_SIZE,
    rejects: Annotated[Optional[Path], typer.Option(
        "--rejects", metavar="FILE", dir_okay=False,
        help="Also write every rejected line, unchanged, with its line number, field and reason, to FILE "
             "(NDJSON, replaced if it exists), to correct and ingest again.")] = None,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Processes applying the file, the events shared out by client (PostgreSQL only; "
                            "the outcome is the same as with one).")] = 1,
) -> None:
    """Apply client activity events (one JSON object per line).

    Each line: {"id", "client_id", "type", "occurred_at" (UTC, with zone), "data": {...}}. Bad lines
    are rejected with their line number and reason; every good line is still applied. Re-running the
    same file is safe: already-applied events are counted as duplicates. Exits 1 if any line was rejected.

    Example: `loyalty ingest events.jsonl --rejects rejects.jsonl`, then correct the lines and feed them
    again with `jq -r .input rejects.jsonl > fixed.jsonl && loyalty ingest fixed.jsonl`. Each line of
    FILE is {"line", "id", "field", "error", "input"} (`input_base64` for a line that is not UTF-8; a line
    over 64 KiB keeps its first 64 KiB, with "truncated": true). FILE is written as the run goes: if the
    database fails, it holds every line rejected until then.

    On PostgreSQL, `--workers 4` applies a large file with four processes (each client's events in one of
    them, in order); rejected lines reach FILE a process's batch at a time.
    """
    from sqlalchemy.exc import OperationalError

    from service.ingest import Ingestor, collect_less
    from service.parallel_ingest import SharedIngestError
    from service.rejects import RejectsFile

    settings: Settings = ctx.obj
    watcher = settings.rules_watcher(as_json)
    engine = settings.engine(as_json)
    ingestor = Ingestor(engine, watcher.current(), batch_size=batch_size, rules=watcher)
    collect_less()
    if source != "-" and not Path(source).is_file():
        raise fail(f"no such file: {source}", as_json=as_json)
    if workers > 1 and engine.dialect.name == "sqlite":
        raise fail("--workers needs PostgreSQL: SQLite lets one process write at a time", as_json=as_json)
    if rejects is not None and source != "-" and rejects.exists() and rejects.samefile(source):
        raise fail(f"--rejects {rejects} is the input file; name another file", as_json=as_json)
    try:
        sink = RejectsFile(rejects) if rejects is not None else None
    except OSError as exc:
        raise fail(f"cannot write the rejects file {rejects}: {exc.strerror or exc}", as_json=as_json) from None
    try:
        if workers > 1:
            report = _ingest_shared(settings, source, workers, batch_size, show_progress=not as_json, rejects=sink)
        elif source == "-":
            report = ingestor.ingest_lines(sys.stdin.buffer, rejects=sink)
        else:
            report = _ingest_file(ingestor, Path(source), show_progress=not as_json, rejects=sink)
    except SharedIngestError as exc:
        kept = f" The {sink.count} lines rejected so far are in {rejects}." if sink is not None else ""
        raise fail(f"{exc}.{kept}", as_json=as_json) from None
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        kept = f" The {sink.count} lines rejected so far are in {rejects}." if sink is not None else ""
        raise fail(f"the database stopped answering: {reason}. Batches before the failure were applied;{kept} "
                   "running the same command again is safe (applied events count as duplicates).",
                   as_json=as_json) from None
    except OSError as exc:  # the rejects file could not be written (disk full): say so rather than lose lines
        raise fail(f"cannot write the rejects file {rejects}: {exc.strerror or exc}. Batches before this one were "
                   "applied; running the same command again is safe.", as_json=as_json) from None
    finally:
        if sink is not None:
            sink.close()
    if as_json:
        emit_json(report.as_dict())
    else:
        console.print(f"applied {report.applied}, duplicates {report.duplicates}, rejected {report.rejected}")
        for error in report.errors[:50]:
            console.print(f"  line {error['line']} ({escape(error['id'] or 'no id')}): {escape(error['error'])}",
                          highlight=False)
        if len(report.errors) > 50:
            console.print(f"  … and {len(report.errors) - 50} more (use --json for all)")
        if rejects is not None and report.rejected:
            console.print(f"  rejected lines written to {escape(str(rejects))}", highlight=False)
    raise typer.Exit(1 if report.rejected else 0)


def _ingest_shared(settings: Settings, source: str, workers: int, batch_size: int, show_progress: bool,
                   rejects: RejectsFile | None) -> IngestReport:
    from service.parallel_ingest import ingest_in_processes

    if source == "-":
        return ingest_in_processes(settings.db_url, settings.rules, sys.stdin.buffer, workers, batch_size,
                                   rejects=rejects)
    with Path(source).open("rb") as handle, progress_bar("ingesting", "lines", None, enabled=show_progress) as advance:
        return ingest_in_processes(settings.db_url, settings.rules, handle, workers, batch_size, advance, rejects)


def _ingest_file(ingestor: Ingestor, path: Path, show_progress: bool, rejects: RejectsFile | None) -> IngestReport:
    with path.open("rb") as handle:
        # Count lines in fixed-size blocks: a line of gigabytes must not be held to be counted.
        total = (sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
                 if show_progress and sys.stderr.isatty() else None)
        handle.seek(0)
        with progress_bar("ingesting", "lines", total, enabled=show_progress) as advance:
            return ingestor.ingest_lines(handle, progress=advance, rejects=rejects)


@app.command()
def benefits(
    ctx: typer.Context,
    client_id: ClientArg,
    product: Annotated[Optional[str], typer.Option(help="Loan product to price, e.g. working_capital.")] = None,
    amount: Annotated[Optional[str], typer.Option(
        help="Loan amount (needs --product), e.g. 30000000; adds the interest saved a year.")] = None,
    at: AtOption = None,
    as_json: JsonFlag = False,
) -> None:
    """What a client holds: tier, points, effective rate discount (after stacking and the ceiling), fast track.

    Single-use entitlements reserved by a live quote are listed but not counted: they are spoken for.
    """
    from service.benefits import client_benefits

    settings: Settings = ctx.obj
    programmes = settings.programmes(as_json)
    engine = settings.engine(as_json)
    try:
        answer = client_benefits(engine, programmes, client_id, parse_moment(at, as_json), product,
                                 amount).model_dump(mode="json")
    except (NotFoundError, InputError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(answer)
        return
    views.print_benefits(answer)


@app.command()
def review(
    ctx: typer.Context,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Moment of the review (ISO 8601 with zone). "
                                                                 "Default: now.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and print, write nothing.")] = False,
    report_dir: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write the report to this folder: CSV files and report.html with charts.")] = None,
    review_id: Annotated[Optional[str], typer.Option(
        "--id", help="Name the review. Run again under its id (see `loyalty review` output) to finish an "
                     "interrupted review at the moment it was started with; in other processes while it runs, "
                     "to share its work.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Tier review: place every client under the review policy, flag churn risk, expire points, report.

    Each client goes to the highest tier it qualifies for over the review window, as the policy in
    the rule file allows (instant upgrades, at most N steps down, grace period, minimum time in a
    tier, new-client protection, pins set with `loyalty tier set`). Each move is recorded with its
    reasons and moves standing benefits through the ledger. Running the same review again changes
    nothing; an interrupted one is finished with `--id`. The same `loyalty review --id R` started in
    several processes (several machines on one PostgreSQL) shares the review: each writes pages of
    clients, and each prints the whole report. `--dry-run` writes nothing and shows what would change.
    `--report DIR` saves the report as CSV files and a self-contained HTML page.
    """
    from cli.review_view import print_review
    from service.review import run_review

    settings: Settings = ctx.obj
    programmes = settings.programmes(as_json)
    engine = settings.engine(as_json)
    # No --as-of: now, or for a review resumed with --id, the moment it was started with.
    moment = parse_moment(as_of, as_json, "--as-of") if as_of is not None else None
    try:
        with progress_bar("reviewing clients", "clients", enabled=not as_json) as advance:
            report = run_review(engine, programmes, moment, dry_run=dry_run, progress=advance, review_id=review_id,
                                share=True)
    except (InputError, ConflictError, ReviewInterruptedError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    result = report.as_dict()
    written: list[Path] = []
    if report_dir:
        from service.review_files import write_report  # matplotlib takes most of a second to import: only here

        written = write_report(result, report_dir)
    if as_json:
        emit_json({**result, "report_files": [str(path) for path in written]} if report_dir else result)
        return
    print_review(result, console)
    if written:
        console.print(f"report written to {escape(str(report_dir))}: {', '.join(path.name for path in written)}")


@app.command()
def client(
    ctx: typer.Context,
    client_id: ClientArg,
    at: AtOption = None,
    as_json: JsonFlag = False,
) -> None:
    """A client's profile: current tier, tier history with reasons, and the metric values a review would see."""
    from service.profile import client_profile

    settings: Settings = ctx.obj
    programmes = settings.programmes(as_json)
    engine = settings.engine(as_json)
    try:
        profile = client_profile(engine, programmes, client_id, parse_moment(at, as_json)).model_dump(mode="json")
    except (NotFoundError, InputError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(profile)
        return
    views.print_profile(profile)


@app.command()
def generate(
    clients: Annotated[int, typer.Option(min=1, max=20_000, help="Number of clients (about 110 events each "
                                                                 "over 18 months, held in memory).")] = 300,
    months: Annotated[int, typer.Option(min=1, max=120, help="Months of activity, ending at --end.")] = 18,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same events.")] = 7,
    end: Annotated[Optional[str], typer.Option(help="Last moment of the activity (ISO 8601 with zone). "
                                                    "Default: 2026-10-31T18:00:00Z.")] = None,
) -> None:
    """Write a synthetic portfolio's events as NDJSON on stdout, e.g. `loyalty generate > events.jsonl`."""
    from demo.generator import DEFAULT_END
    from demo.generator import generate as generate_portfolio

    moment = parse_moment(end, False, "--end") if end else DEFAULT_END
    for event in generate_portfolio(clients, months, seed, moment):
        sys.stdout.write(json.dumps(event) + "\n")


@app.command()
def demo(
    ctx: typer.Context,
    clients: Annotated[int, typer.Option(min=1, max=5_000, help="Number of clients.")] = 300,
    months: Annotated[int, typer.Option(min=1, max=120, help="Months of activity.")] = 18,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same portfolio.")] = 7,
    as_json: JsonFlag = False,
) -> None:
    """Generate a synthetic portfolio, ingest it quarter by quarter with a tier review at each quarter end,
    and summarise the programme.

    Uses the configured database (loyalty.db here by default), creating the schema if needed.
    Running it again is safe: the same events are duplicates and the review changes nothing.
    """
    from demo.run import run_demo

    settings: Settings = ctx.obj
    programmes = settings.programmes(as_json)
    engine = settings.initialised_engine(as_json)
    with progress_bar("ingesting and reviewing", "events", enabled=not as_json) as advance:
        result = run_demo(engine, programmes, clients, months, seed, progress=advance)
    report = result.ingest
    if as_json:
        emit_json({"ingest": report.as_dict(), "reviews": [r.as_dict() for r in result.reviews],
                   "summary": result.summary})
        raise typer.Exit(1 if report.rejected else 0)
    views.print_demo(result, clients, months)
    raise typer.Exit(1 if report.rejected else 0)


@app.command("ledger")
def ledger_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(
        help="A client id to list its entries (newest first), or `verify` to check the whole ledger.")],
    limit: Annotated[int, typer.Option(min=1, help="Most entries to list.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List a client's ledger entries, or `ledger verify`: recompute balances, entitlements and points lots.

    `verify` exits 1 on any mismatch and lists each one.
    """
    from service.ledger_audit import ledger_entries, verify_ledger

    settings: Settings = ctx.obj
    engine = settings.engine(as_json)
    if target == "verify":
        problems = verify_ledger(engine)
        if as_json:
            emit_json({"ok": not problems, "problems": problems})
        else:
            for problem in problems:
                console.print(f"[red]mismatch[/]: {escape(problem)}", highlight=False)
            console.print("ledger consistent" if not problems else f"[bold red]{len(problems)} mismatch(es)[/]")
        raise typer.Exit(1 if problems else 0)
    entries = ledger_entries(engine, target, limit)
    if as_json:
        emit_json(entries)
        return
    if not entries:
        console.print(f"no ledger entries for {escape(target)}")
        return
    views.print_entries(entries, limit)


@app.command()
def reverse(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(help="Id of the event whose effects to reverse.")],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Reverse an event: write compensating entries for everything it produced. Reversing twice changes nothing."""
    from service.reversal import reverse_event

    settings: Settings = ctx.obj
    engine = settings.engine(as_json)
    try:
        result = reverse_event(engine, event_id, reason).model_dump(mode="json")
    except NotFoundError as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(result)
        return
    if result["status"] == "already_reversed":
        console.print(f"{escape(event_id)} was already reversed; nothing written")
        return
    count = len(result["entries"])
    console.print(f"reversed {escape(event_id)}: {count} compensating {'entry' if count == 1 else 'entries'} {result['entries']}")
    for item in result["skipped"]:
        console.print(f"  entitlement {item['entitlement_id']} not reversed: it is already {item['status']}")
    if result["points_written_off"]:
        console.print(f"  {result['points_written_off']:,} points were already spent or expired: written off, "
                      "so the balance stops at zero")
