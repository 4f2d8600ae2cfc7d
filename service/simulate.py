"""What a rule change would cost, before it goes live: replay a history under two programmes and compare.

Each programme replays the history into its own scratch database (SQLite in memory, thrown away
afterwards; never the live database) the way the events would have happened: in `occurred_at`
order, in batches as `loyalty ingest` makes them (instant upgrades at the end of each batch), with
the tier review (and its points expiry) run at every moment the programme's `review.schedule` fires
within the history, up to the as-of moment. A client that one programme moves up a tier therefore
earns its later awards under that tier: the replay follows through. The two replays run in two
processes when the history is large enough to pay for starting them. Each scratch database is then
read into a summary (RunSummary), and `impact` compares the two.

Interest income forgone, per year: for each drawdown replayed, the effective rate discount (bps) the
client held on the drawdown's product at its moment, as `loyalty benefits --at` would answer then
(standing discounts stacked, at most one single-use discount, capped at the product's ceiling in the
version in force), times the amount drawn, divided by 10,000: one year's interest on the amount. Two
adjustments give a booked loan's view: a drawdown does not use the discounts it earns itself, and
the single-use discount it uses is consumed (no later drawdown uses it again). Drawdowns from before
the programme's first version are history: no discount applied to them. Sums are exact
(Decimal); each reported figure is rounded once, half to even, to the currency's minor unit, and a
difference is new minus current of the rounded figures, so the columns add up.
"""
from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import queue
import signal
import time
import traceback
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Engine, event, func, select

from engine.errors import EventError
from engine.events import minor_unit_exponent, parse_envelope
from engine.json_input import parse_json_line
from engine.loader import load_programmes
from engine.programme import ProgrammeSet
from rewards.kinds import Kind, Reason, Use
from rewards.stacking import Entitlement, rate_discount
from service.clock import Clock, utc_now
from service.ingest import INTERNAL_ERROR, IngestReport, Ingestor, bounded_lines, line_text
from service.review import run_review
from service.scheduler import cron_trigger
from storage import clients as client_store
from storage.db import init_schema, make_engine, read_snapshot
from storage.ledger import held_entitlements_of_all
from storage.models import LedgerEntry, ProcessedEvent

log = logging.getLogger("loyalty.simulate")
ENTRY = LedgerEntry.__table__
PROCESSED = ProcessedEvent.__table__

DEFAULT_BATCH = 2000  # as `loyalty ingest`: instant upgrades land where a real ingest would put them
PARALLEL_FROM = 10_000  # events: below this, starting two processes costs more than it saves
CURRENT, NEW = "current", "new"
NO_TIER = "(none)"  # a client the other programme never created (its events were all rejected there)
_NARROW_EVENTS_INDEX = "ix_processed_event_client_type"  # storage.models: (client_id, type, occurred_at)
_METRICS_INDEX = "ix_simulation_metrics"  # its wider replacement, in scratch databases only


class SimulationError(Exception):
    """A simulation that cannot run; the message says why and what to do."""


# --- the history -------------------------------------------------------------------------------------

@dataclass
class History:
    """An NDJSON history's events in time order, and the lines that could not be placed in time."""

    path: Path
    lines: int
    events: list[tuple[datetime, int, str]]  # (occurred_at in UTC, line number, line text), sorted
    rejected: list[dict] = field(default_factory=list)  # {"line", "id", "error"}, as ingest reports them

    @property
    def moments(self) -> list[datetime]:
        """The events' moments, in order (for bisecting)."""
        return [moment for moment, _, _ in self.events]


def read_history(path: Path) -> History:
    """Read an NDJSON history; each line is kept with its number, sorted by `occurred_at` (stable).

    A line that is not JSON, or whose `occurred_at` is not a moment with a zone, is rejected here
    with the reason ingest would give; every other check happens when the event is replayed.
    """
    events: list[tuple[datetime, int, str]] = []
    rejected: list[dict] = []
    number = 0
    with path.open("rb") as handle:
        for number, line in enumerate(bounded_lines(handle), start=1):
            try:
                text = line_text(line, first=number == 1)
                if text.strip():
                    events.append((_occurred_at(text), number, text))
            except EventError as exc:
                rejected.append({"line": number, "id": getattr(exc, "event_id", None), "error": str(exc)})
            except Exception:  # noqa: BLE001 - one line must never stop the replay, as in ingest
                log.exception("line %d of %s could not be read", number, path)
                rejected.append({"line": number, "id": None, "error": INTERNAL_ERROR})
    events.sort(key=lambda item: (item[0], item[1]))
    return History(path, number, events, rejected)


def _occurred_at(text: str) -> datetime:
    """The line's moment in UTC, read cheaply; the full check (and its message) only when that fails.

    Raises EventError, carrying the event's id (when it has one) as `event_id`.
    """
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict):
        raw = parse_json_line(text)  # raises, with the message ingest gives
    stamp = raw.get("occurred_at")
    if isinstance(stamp, str):
        try:
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if moment.tzinfo is not None:
                return moment.astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    try:
        return parse_envelope(raw).occurred_at.astimezone(UTC)
    except EventError as exc:
        exc.event_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        raise


def count_lines(path: Path) -> int:
    """Non-blank lines of a file (for a progress bar's total)."""
    with path.open("rb") as handle:
        return sum(1 for line in bounded_lines(handle) if not isinstance(line, bytes) or line.strip())


# --- review moments ----------------------------------------------------------------------------------

def review_moments(programmes: ProgrammeSet, start: datetime, end: datetime) -> list[datetime]:
    """Every moment after `start` and up to `end` at which the `review.schedule` of the version then in
    force fires, in UTC, oldest first (none before the programme's first version)."""
    moments: list[datetime] = []
    versions = programmes.versions
    for index, version in enumerate(versions):
        schedule = version.model.review.schedule
        if schedule is None:
            continue
        following = versions[index + 1].effective_from if index + 1 < len(versions) else None
        trigger = cron_trigger(schedule)
        moment = trigger.get_next_fire_time(None, max(start, version.effective_from))
        while moment is not None and moment <= end and (following is None or moment < following):
            if moment > start:
                moments.append(moment.astimezone(UTC))
            moment = trigger.get_next_fire_time(moment, moment + timedelta(seconds=1))
    return moments


# --- replaying into a scratch database ---------------------------------------------------------------

def scratch_engine() -> Engine:
    """An empty SQLite database in memory, with the schema, tuned for a throwaway run."""
    # "sqlite://" is pooled one connection per thread, so every transaction of the replay sees the
    # same in-memory database; it vanishes with the engine. In memory there is no file to sync and
    # the rollback journal is in memory too (journal_mode=MEMORY): rollbacks still work, which the
    # ingest needs to retry a failed batch event by event.
    engine = make_engine("sqlite://")

    @event.listens_for(engine, "connect")
    def _sort_in_memory(dbapi_connection, _record) -> None:  # noqa: ANN001 - a DB-API connection
        dbapi_connection.execute("PRAGMA temp_store=MEMORY")  # GROUP BY and ORDER BY scratch space

    init_schema(engine)
    with engine.begin() as conn:
        # Each batch's instant-upgrade check measures its clients' metrics over their whole history.
        # The schema's (client, type, time) index, widened with every column those queries read,
        # lets them answer from the index without visiting the wide event rows: about a third off
        # the metrics queries, a tenth of the replay (bench/simulate.py). Scratch databases only.
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {_NARROW_EVENTS_INDEX}")
        conn.exec_driver_sql(f"CREATE INDEX {_METRICS_INDEX} ON processed_event "
                             "(client_id, type, occurred_at, amount_minor, number, label, event_id)")
    return engine


class ClientFigures(NamedTuple):
    """What one client ends up with under one programme."""

    tier: str | None
    points: int  # issued (earned)
    interest: Decimal  # forgone per year, exact
    discounts: tuple  # every rate-discount grant it received: (rule, products, bps, use, from, to)


@dataclass
class RunSummary:
    """One programme's replay, read back from its scratch database."""

    label: str
    programme: dict  # id, versions, source
    currency: str
    tiers: list[str]  # the latest version's tier ids, lowest first
    products: list[str]  # the latest version's loan products
    rules: list[str]  # the latest version's rule ids, in file order
    as_of: datetime
    first_event: datetime
    events: dict  # lines, replayed, applied, duplicates, rejected, after_as_of, errors
    reviews: list[dict]  # per review moment: as_of, upgrades, downgrades, points_expired
    points_by_rule: dict[str, int]
    points_expired: int
    grants_by_product: dict[str, int]  # rate-discount grants covering each product
    grants_by_rule: dict[str, int]  # rate-discount grants per rule (tier:<id> for standing tier benefits)
    interest_by_product: dict[str, Decimal]  # forgone per year, exact
    volume_by_product: dict[str, Decimal]  # drawdowns that had a discount
    clients: dict[str, ClientFigures]
    seconds: float = 0.0


def replay(label: str, programmes: ProgrammeSet, history: History, as_of: datetime | None = None,
           batch_size: int = DEFAULT_BATCH, clock: Clock = utc_now,
           progress: Callable[[int], None] | None = None) -> RunSummary:
    """Replay `history` under `programmes` into a scratch database, with the scheduled reviews, and summarise it."""
    began = time.perf_counter()
    now = clock()
    as_of = _as_of(history, as_of, now)
    moments = history.moments
    last = bisect_right(moments, as_of)
    engine = scratch_engine()
    try:
        ingestor = Ingestor(engine, programmes, clock=lambda: now, batch_size=batch_size)
        report = IngestReport(rejected=len(history.rejected), errors=list(history.rejected))
        reviews, position = [], 0
        for moment in [*review_moments(programmes, moments[0], as_of), None]:
            upto = bisect_right(moments, moment, hi=last) if moment is not None else last
            _ingest(ingestor, history.events[position:upto], batch_size, report, progress)
            position = upto
            if moment is not None:
                done = run_review(engine, programmes, moment, clock=lambda: now, trigger="simulation").as_dict()
                reviews.append({"as_of": done["as_of"], "upgrades": done["upgrades"],
                                "downgrades": done["downgrades"], "points_expired": done["points_expired"]["points"]})
        report.errors.sort(key=lambda error: error["line"])
        events = {"lines": history.lines, "replayed": last, "applied": report.applied,
                  "duplicates": report.duplicates, "rejected": report.rejected,
                  "after_as_of": len(moments) - last,
                  "before_programme": bisect_left(moments, programmes.versions[0].effective_from, hi=last),
                  "errors": report.errors}
        summary = summarise(engine, programmes, label, as_of, moments[0], events, reviews)
    finally:
        engine.dispose()
    summary.seconds = time.perf_counter() - began
    return summary


def _as_of(history: History, as_of: datetime | None, now: datetime) -> datetime:
    if not history.events:
        problem = f" (first: line {history.rejected[0]['line']}: {history.rejected[0]['error']})" \
            if history.rejected else ""
        raise SimulationError(f"{history.path} has no event to replay: {len(history.rejected)} line(s) "
                              f"rejected{problem}")
    if as_of is None:
        # Events later than now would be refused by ingest: the default stops at now.
        return min(history.events[-1][0], now)
    if as_of.tzinfo is None:
        raise SimulationError("the as-of moment has no time zone; give UTC, e.g. 2026-06-30T00:00:00Z")
    as_of = as_of.astimezone(UTC)
    if as_of > now:
        raise SimulationError(f"--as-of {as_of.isoformat()} is in the future: a simulation replays what happened")
    if as_of < history.events[0][0]:
        raise SimulationError(f"--as-of {as_of.isoformat()} is before the history's first event "
                              f"({history.events[0][0].isoformat()}): nothing to replay")
    return as_of


def _ingest(ingestor: Ingestor, events: list[tuple[datetime, int, str]], batch_size: int, report: IngestReport,
            progress: Callable[[int], None] | None) -> None:
    """Apply events in batches as `loyalty ingest` would, each outcome under its original line number."""
    for start in range(0, len(events), batch_size):
        chunk = events[start:start + batch_size]
        items = []
        for _, number, text in chunk:
            try:
                items.append((number, parse_json_line(text)))
            except EventError as exc:  # read_history parsed it already: only a parser difference lands here
                report.rejected += 1
                report.errors.append({"line": number, "id": None, "error": str(exc)})
        for outcome in ingestor.ingest_raw(items):
            report.add(outcome)
        if progress:
            progress(len(chunk))


# --- reading a scratch database back -----------------------------------------------------------------

def summarise(engine: Engine, programmes: ProgrammeSet, label: str, as_of: datetime, first_event: datetime,
              events: dict, reviews: list[dict]) -> RunSummary:
    """Read points, discounts, interest forgone and tiers out of a replayed database."""
    latest = programmes.current
    with read_snapshot(engine) as conn:
        earned = ((ENTRY.c.kind == Kind.POINTS) & (ENTRY.c.reason == Reason.EARN))
        by_rule = dict(conn.execute(select(ENTRY.c.rule_id, func.sum(ENTRY.c.points)).where(earned)
                                    .group_by(ENTRY.c.rule_id)).all())
        by_client = dict(conn.execute(select(ENTRY.c.client_id, func.sum(ENTRY.c.points)).where(earned)
                                      .group_by(ENTRY.c.client_id)).all())
        expired = conn.execute(select(func.coalesce(func.sum(ENTRY.c.points), 0)).where(
            ENTRY.c.kind == Kind.POINTS, ENTRY.c.reason == Reason.EXPIRE)).scalar_one()
        # Drawdowns from before the programme began were history: no discount of it applied to them.
        drawdowns = conn.execute(
            select(PROCESSED.c.event_id, PROCESSED.c.client_id, PROCESSED.c.label, PROCESSED.c.amount_minor,
                   PROCESSED.c.occurred_at).where(PROCESSED.c.type == "loan.drawn",
                                                  PROCESSED.c.occurred_at >= programmes.versions[0].effective_from)
            .order_by(PROCESSED.c.client_id, PROCESSED.c.occurred_at, PROCESSED.c.event_id)).all()
        tiers = {client_id: state.tier for client_id, state in client_store.tiers_as_of(conn, as_of).items()}
        held = held_entitlements_of_all(conn)  # the replay consumes and reverses nothing: every grant is here
    discounts = {client_id: [e for e in entitlements if e.kind == Kind.RATE_DISCOUNT]
                 for client_id, entitlements in held.items()}
    scale = Decimal(1).scaleb(-minor_unit_exponent(latest.currency))
    forgone = interest_forgone(
        [Drawdown(event_id, client_id, product, Decimal(minor) * scale, at)
         for event_id, client_id, product, minor, at in drawdowns],
        discounts, lambda product, at: programmes.for_moment(at).ceiling_bps(product))
    interest_by_client: dict[str, Decimal] = defaultdict(Decimal)
    interest_by_product: dict[str, Decimal] = defaultdict(Decimal)
    volume_by_product: dict[str, Decimal] = defaultdict(Decimal)
    for drawdown, _bps, interest in forgone:
        interest_by_client[drawdown.client_id] += interest
        if interest:
            interest_by_product[drawdown.product] += interest
            volume_by_product[drawdown.product] += drawdown.amount
    grants = [e for entitlements in discounts.values() for e in entitlements]
    clients = {client_id: ClientFigures(tier, int(by_client.get(client_id) or 0), interest_by_client[client_id],
                                        _fingerprint(discounts.get(client_id, [])))
               for client_id, tier in tiers.items()}
    return RunSummary(
        label=label,
        programme={"id": latest.id, "versions": [v.version for v in programmes.versions],
                   "effective_from": programmes.versions[0].effective_from.isoformat(),
                   "source": sorted({v.source for v in programmes.versions})},
        currency=latest.currency, tiers=latest.tier_ids, products=list(latest.model.loan_products),
        rules=[compiled.rule.id for compiled in latest.rules], as_of=as_of, first_event=first_event, events=events,
        reviews=reviews, points_by_rule={rule: int(points or 0) for rule, points in by_rule.items()},
        points_expired=-int(expired), grants_by_product=dict(Counter(p for e in grants for p in e.products)),
        grants_by_rule=dict(Counter(e.rule_id for e in grants)), interest_by_product=dict(interest_by_product),
        volume_by_product=dict(volume_by_product), clients=clients)


def _fingerprint(discounts: list[Entitlement]) -> tuple:
    return tuple(sorted((e.rule_id, e.products, e.bps, str(e.use), e.valid_from.isoformat(),
                         e.valid_to.isoformat() if e.valid_to else "") for e in discounts))


class Drawdown(NamedTuple):
    """A replayed drawdown: what interest forgone is computed on."""

    event_id: str
    client_id: str
    product: str
    amount: Decimal
    at: datetime


def interest_forgone(drawdowns: Iterable[Drawdown], discounts: dict[str, list[Entitlement]],
                     ceiling: Callable[[str, datetime], int]) -> list[tuple[Drawdown, int, Decimal]]:
    """(drawdown, effective bps, interest a year) for each drawdown, in the order given (per client, by time).

    The bps are what the client held at the drawdown's moment on its product after stacking and the
    ceiling, leaving out the discounts the drawdown itself earned and single-use discounts an earlier
    drawdown used (a booked loan consumes the one it uses). Interest is exact: amount × bps / 10,000.
    """
    used: set[int] = set()
    result = []
    for drawdown in drawdowns:
        usable = [e for e in discounts.get(drawdown.client_id, ())
                  if e.event_id != drawdown.event_id and e.id not in used]
        decision = rate_discount(usable, drawdown.product, drawdown.at, ceiling(drawdown.product, drawdown.at))
        single = {e.id for e in usable if e.use == Use.SINGLE}
        used.update(entitlement_id for entitlement_id in decision.applied if entitlement_id in single)
        result.append((drawdown, decision.bps, drawdown.amount * decision.bps / 10_000))
    return result


# --- running both programmes -------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A programme to replay: a label (current or new), where its rules are, and the rules loaded."""

    label: str
    rules: Path
    programmes: ProgrammeSet


@dataclass
class Simulation:
    """Both replays, and how they ran."""

    current: RunSummary
    new: RunSummary
    parallel: bool
    seconds: float


def simulate(current: Candidate, new: Candidate, events_path: Path, as_of: datetime | None = None,
             batch_size: int = DEFAULT_BATCH, progress: Callable[[int], None] | None = None,
             parallel: bool | None = None, clock: Clock = utc_now) -> Simulation:
    """Replay the history at `events_path` under both candidates (in two processes if `parallel`, by
    default when the history has PARALLEL_FROM events or more and the machine two cores; each process
    loads its candidate's rules from `rules` again, as they cannot be sent across).

    `progress` is told how many events each replayed batch held (both replays count).
    """
    began = time.perf_counter()
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2 and count_lines(events_path) >= PARALLEL_FROM
    now = clock()
    if parallel:
        summaries = _replay_in_processes([current, new], events_path, as_of, batch_size, now, progress)
    else:
        history = read_history(events_path)
        summaries = {c.label: replay(c.label, c.programmes, history, as_of, batch_size, lambda: now, progress)
                     for c in (current, new)}
    return Simulation(summaries[current.label], summaries[new.label], parallel, time.perf_counter() - began)


def _replay_in_processes(candidates: list[Candidate], events_path: Path, as_of: datetime | None, batch_size: int,
                         now: datetime, progress: Callable[[int], None] | None) -> dict[str, RunSummary]:
    # spawn, not fork: the parent may run threads (a progress bar) and holds a compiled matching
    # core; each child loads the rules and reads the history itself.
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    workers = {c.label: context.Process(target=_child, name=f"simulate-{c.label}", daemon=True,
                                        args=(c.label, str(c.rules), str(events_path), as_of, batch_size, now,
                                              messages))
               for c in candidates}
    for worker in workers.values():
        worker.start()
    results: dict[str, RunSummary] = {}
    silent: Counter[str] = Counter()  # half-second waits since a replay process ended without its result
    try:
        while len(results) < len(workers):
            try:
                kind, label, payload = messages.get(timeout=0.5)
            except queue.Empty:
                for name, worker in workers.items():
                    # A replay's last message may still be in the pipe when it exits: give it 2 s.
                    if name not in results and not worker.is_alive():
                        silent[name] += 1
                        if silent[name] > 4:
                            raise SimulationError(f"the replay under the {name} programme stopped (exit code "
                                                  f"{worker.exitcode}) without a result") from None
                continue
            if kind == "progress":
                if progress:
                    progress(payload)
            elif kind == "done":
                results[label] = payload
            else:
                raise SimulationError(payload)
    finally:
        for worker in workers.values():
            if worker.is_alive():
                worker.terminate()
            worker.join()
    return results


def _child(label: str, rules: str, events_path: str, as_of: datetime | None, batch_size: int, now: datetime,
           messages) -> None:  # noqa: ANN001 - a multiprocessing queue
    """A replay process: load the rules, replay, send the summary (or the error) back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends both replays
    try:
        programmes = load_programmes(Path(rules))
        history = read_history(Path(events_path))
        # The history and the compiled rules live as long as the process: out of the collector's
        # sight, its full collections stop walking half a million lines (a few % of the replay).
        gc.collect()
        gc.freeze()
        summary = replay(label, programmes, history, as_of, batch_size, lambda: now,
                         lambda n: messages.put(("progress", label, n)))
        messages.put(("done", label, summary))
    except SimulationError as exc:
        messages.put(("error", label, str(exc)))
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the parent must hear of it
        where = traceback.format_exc(limit=-3)
        messages.put(("error", label, f"the replay under the {label} programme failed: "
                                      f"{type(exc).__name__}: {exc}\n{where}"))


# --- the impact --------------------------------------------------------------------------------------

def impact(simulation: Simulation, top: int = 10) -> dict:
    """The difference the new programme makes, as JSON-ready data (money as decimal text)."""
    current, new = simulation.current, simulation.new
    unit = Decimal(1).scaleb(-minor_unit_exponent(new.currency))
    products = _union(current.products, new.products)
    rules = _union(current.rules, new.rules)
    interest = [sum(summary.interest_by_product.values(), Decimal(0)) for summary in (current, new)]
    return {
        "as_of": current.as_of.isoformat(),
        "first_event": current.first_event.isoformat(),
        "currency": new.currency,
        "programmes": {CURRENT: current.programme, NEW: new.programme},
        "events": {CURRENT: _events_view(current), NEW: _events_view(new)},
        "review_moments": {CURRENT: [r["as_of"] for r in current.reviews], NEW: [r["as_of"] for r in new.reviews]},
        "reviews": {CURRENT: current.reviews, NEW: new.reviews},
        "points": {"issued": _triple(sum(current.points_by_rule.values()), sum(new.points_by_rule.values()), unit),
                   "by_rule": _rows("rule_id", current.points_by_rule, new.points_by_rule, rules, unit),
                   "expired": _triple(current.points_expired, new.points_expired, unit)},
        "discounts": {"grants": _triple(sum(current.grants_by_rule.values()), sum(new.grants_by_rule.values()), unit),
                      "by_product": _rows("product", current.grants_by_product, new.grants_by_product, products, unit),
                      "by_rule": _rows("rule_id", current.grants_by_rule, new.grants_by_rule, rules, unit)},
        "interest_forgone_per_year": {
            "total": _triple(*interest, unit),
            "by_product": _rows("product", current.interest_by_product, new.interest_by_product, products, unit,
                                Decimal(0)),
            "discounted_volume": _rows("product", current.volume_by_product, new.volume_by_product, products, unit,
                                       Decimal(0))},
        "tiers": _tier_impact(current, new, unit),
        "clients": _client_impact(current, new, top, unit),
        "warnings": warnings(simulation),
        "run": {"parallel": simulation.parallel, "seconds": round(simulation.seconds, 2),
                CURRENT: round(current.seconds, 2), NEW: round(new.seconds, 2)},
    }


def _money(amount: Decimal, unit: Decimal) -> Decimal:
    return amount.quantize(unit, rounding=ROUND_HALF_EVEN)


def _triple(before: object, after: object, unit: Decimal) -> dict:
    """current, new and the difference; money rounded once each, the difference from the rounded figures."""
    if isinstance(before, Decimal) or isinstance(after, Decimal):
        before, after = _money(Decimal(before), unit), _money(Decimal(after), unit)  # type: ignore[arg-type]
        return {"current": str(before), "new": str(after), "difference": str(after - before)}
    return {"current": before, "new": after, "difference": after - before}  # type: ignore[operator]


def _rows(key: str, before: dict, after: dict, order: list[str], unit: Decimal, zero: object = 0) -> list[dict]:
    """One triple per name either side has, in `order` first, then alphabetically."""
    names = _union(order, sorted(set(before) | set(after)))
    return [{key: name, **_triple(before.get(name, zero), after.get(name, zero), unit)}
            for name in names if name in before or name in after]


def _tier_impact(current: RunSummary, new: RunSummary, unit: Decimal) -> dict:
    """Clients per tier at the end, each side, and the migration matrix current tier → new tier."""
    pairs = _pairs(current, new)
    migration: dict[str, dict[str, int]] = {}
    for before, after in pairs.values():
        row = migration.setdefault(before.tier or NO_TIER, {})
        row[after.tier or NO_TIER] = row.get(after.tier or NO_TIER, 0) + 1
    order = _union(current.tiers, new.tiers)
    if NO_TIER in migration or any(NO_TIER in row for row in migration.values()):
        order.append(NO_TIER)
    counts = [Counter(figures.tier or NO_TIER for figures in summary.clients.values()) for summary in (current, new)]
    return {"order": order, "migration": migration,
            "distribution": [{"tier": tier, **_triple(counts[0][tier], counts[1][tier], unit)} for tier in order]}


def _client_impact(current: RunSummary, new: RunSummary, top: int, unit: Decimal) -> dict:
    """How many clients the change affects, in what, and the most affected by points and by interest."""
    pairs = _pairs(current, new)
    points = {cid: after.points - before.points for cid, (before, after) in pairs.items()}
    interest = {cid: _money(after.interest, unit) - _money(before.interest, unit)
                for cid, (before, after) in pairs.items()}
    differs = {"points": {cid for cid, change in points.items() if change},
               "tier": {cid for cid, (before, after) in pairs.items() if before.tier != after.tier},
               # A lower ceiling changes what the same grants are worth: that is a discount difference too.
               "discounts": {cid for cid, (before, after) in pairs.items()
                             if before.discounts != after.discounts or interest[cid]}}

    def row(cid: str) -> dict:
        before, after = pairs[cid]
        return {"client_id": cid, "tier_current": before.tier, "tier_new": after.tier,
                "points": _triple(before.points, after.points, unit),
                "interest_forgone": _triple(before.interest, after.interest, unit)}

    by_points = sorted((cid for cid in points if points[cid]), key=lambda cid: (-abs(points[cid]), cid))
    by_interest = sorted((cid for cid in interest if interest[cid]), key=lambda cid: (-abs(interest[cid]), cid))
    return {"total": _triple(len(current.clients), len(new.clients), unit),
            "affected": len(set().union(*differs.values())),
            "affected_by": {reason: len(ids) for reason, ids in differs.items()}, "top": top,
            "top_by_points": [row(cid) for cid in by_points[:top]],
            "top_by_interest": [row(cid) for cid in by_interest[:top]]}


def _pairs(current: RunSummary, new: RunSummary) -> dict[str, tuple[ClientFigures, ClientFigures]]:
    """Each client's figures under both programmes (empty ones where a programme never created it)."""
    empty = ClientFigures(None, 0, Decimal(0), ())
    return {cid: (current.clients.get(cid, empty), new.clients.get(cid, empty))
            for cid in sorted(set(current.clients) | set(new.clients))}


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """Names of both, in first-seen order."""
    return list(dict.fromkeys([*first, *second]))


def _events_view(summary: RunSummary) -> dict:
    return {key: summary.events[key] for key in ("lines", "replayed", "applied", "duplicates", "rejected",
                                                 "after_as_of", "errors")}


def warnings(simulation: Simulation) -> list[str]:
    """What a reader must know to trust the comparison."""
    current, new = simulation.current, simulation.new
    found = [f"{summary.events['rejected']:,} line(s) rejected under the {summary.label} programme are left out "
             "of its figures" for summary in (current, new) if summary.events["rejected"]]
    if current.events["before_programme"] != new.events["before_programme"]:
        later = max((current, new), key=lambda summary: summary.events["before_programme"])
        found.append(f"{later.events['before_programme']:,} event(s) come before the {later.label} programme's first "
                     f"version ({later.programme['effective_from']}): they count for tier metrics but earn nothing "
                     "under it; to compare a change from a date, give a folder with the earlier versions and the "
                     "new one")
    if current.events["after_as_of"]:
        found.append(f"{current.events['after_as_of']:,} event(s) after the as-of moment were not replayed")
    return found
