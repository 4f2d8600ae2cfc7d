"""What a rule change would cost, before it goes live: replay a history under two programmes and compare.

Each programme replays the history into its own scratch database (a SQLite file in a temporary
directory, deleted afterwards; never the live database) the way the events would have happened: in
`occurred_at` order, in batches as `loyalty ingest` makes them (instant upgrades at the end of each
batch), with the tier review (and its points expiry) run at every moment the programme's
`review.schedule` fires within the history, up to the as-of moment. A client that one programme
moves up a tier therefore earns its later awards under that tier: the replay follows through. The
history is read once, for where each event is in time; its lines are read again from the file as
they are applied, so memory does not grow with the history. The two replays run in two processes
when the history is large enough to pay for starting them. Each scratch database is then read into
a summary (RunSummary), and `impact` compares the two.

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
import tempfile
import time
import traceback
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import islice, pairwise
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError

from engine.errors import EventError
from engine.events import minor_unit_exponent, parse_envelope
from engine.json_input import parse_json_line
from engine.loader import load_programmes
from engine.programme import ProgrammeSet
from rewards.kinds import Kind, Reason, Use
from rewards.stacking import Entitlement, rate_discount
from service.clock import Clock, utc_now
from service.ingest import INTERNAL_ERROR, IngestReport, Ingestor, bounded_lines, decode_line, line_text
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
PARALLEL_FROM_BYTES = 2 << 20  # about 10,000 events: below this, starting two processes costs more than it saves
# SQLite's page cache per replay; the rest of its database (about 1.2 KiB an event with the journal)
# waits in the system's page cache. From 2 MiB to 256 MiB the CPU time of a replay of 150k events
# moved within the noise.
SCRATCH_CACHE_KIB = 64 * 1024
CURRENT, NEW = "current", "new"
NO_TIER = "(none)"  # a client the other programme never created (its events were all rejected there)
_NARROW_EVENTS_INDEX = "ix_processed_event_client_type"  # storage.models: (client_id, type, occurred_at)
_METRICS_INDEX = "ix_simulation_metrics"  # its wider replacement, in scratch databases only


class SimulationError(Exception):
    """A simulation that cannot run; the message says why and what to do."""


# --- the history -------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass
class History:
    """Where an NDJSON history's events are in its file, in time order, and the lines that could not be placed in time.

    Only the places are held (four numbers an event), not the lines: a replay reads each line again
    when it applies it, so half a million events cost a few MiB here instead of a few hundred.
    """

    path: Path
    lines: int
    moments: array  # each event's occurred_at in UTC, microseconds since 1970, ascending
    numbers: array  # its line number (ties in time keep the file's order)
    offsets: array  # where its line starts in the file, in bytes
    sizes: array  # its length in bytes
    rejected: list[dict] = field(default_factory=list)  # {"line", "id", "error"}, as ingest reports them

    def __len__(self) -> int:
        return len(self.moments)

    def moment(self, index: int) -> datetime:
        """The moment of the event at `index` in time order."""
        return _EPOCH + self.moments[index] * _MICROSECOND

    def count_upto(self, moment: datetime, start: int = 0, stop: int | None = None) -> int:
        """How many events (from the start) happened at or before `moment`, looking between `start` and `stop`."""
        return bisect_right(self.moments, _micros(moment), start, len(self) if stop is None else stop)

    def count_before(self, moment: datetime, stop: int | None = None) -> int:
        """How many events happened before `moment`."""
        return bisect_left(self.moments, _micros(moment), 0, len(self) if stop is None else stop)

    def read(self, start: int, stop: int) -> Iterator[tuple[int, str]]:
        """(line number, text) of the events from `start` to `stop` in time order, read from the file."""
        with self.path.open("rb", buffering=_READ_BUFFER) as handle:
            # In a history already in time order the seeks stay within the buffer: a sequential read.
            for index in range(start, stop):
                handle.seek(self.offsets[index])
                number = self.numbers[index]
                yield number, decode_line(handle.read(self.sizes[index]), first=number == 1)


_READ_BUFFER = 1 << 20


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def read_history(path: Path) -> History:
    """Find the events of an NDJSON history and sort them by `occurred_at` (stable: ties keep the file's order).

    A line that is not JSON, or whose `occurred_at` is not a moment with a zone, is rejected here
    with the reason ingest would give; every other check happens when the event is replayed.
    """
    moments, numbers, offsets, sizes = (array("q") for _ in range(4))
    rejected: list[dict] = []
    number = offset = 0
    with path.open("rb") as handle:
        for number, line in enumerate(bounded_lines(handle), start=1):
            start = offset
            offset = offset + len(line) if isinstance(line, bytes) else handle.tell()
            try:
                text = line_text(line, first=number == 1)
                if text.strip():
                    moments.append(_micros(_occurred_at(text)))
                    numbers.append(number)
                    offsets.append(start)
                    sizes.append(offset - start)
            except EventError as exc:
                rejected.append({"line": number, "id": getattr(exc, "event_id", None), "error": str(exc)})
            except Exception:  # noqa: BLE001 - one line must never stop the replay, as in ingest
                log.exception("line %d of %s could not be read", number, path)
                rejected.append({"line": number, "id": None, "error": INTERNAL_ERROR})
    columns = (moments, numbers, offsets, sizes)
    if any(later < earlier for earlier, later in pairwise(moments)):  # most histories are in time order already
        order = sorted(range(len(moments)), key=moments.__getitem__)
        columns = tuple(array("q", (column[i] for i in order)) for column in columns)
    return History(path, number, *columns, rejected=rejected)


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

@contextmanager
def scratch_engine(folder: Path | None = None) -> Iterator[Engine]:
    """An empty SQLite database with the schema, in a new file in a temporary directory (in `folder`, or
    the system's), tuned for a throwaway run; the directory is deleted when the block ends, however it ends."""
    with tempfile.TemporaryDirectory(prefix="loyalty-simulate-", dir=folder) as directory:
        # A file, not memory: the database of a large history outgrows the memory a replay may use,
        # and a file's pages beyond SQLite's bounded cache wait in the system's page cache instead.
        engine = make_engine(f"sqlite:///{Path(directory) / 'replay.db'}")

        @event.listens_for(engine, "connect")
        def _throwaway(dbapi_connection, _record) -> None:  # noqa: ANN001 - a DB-API connection
            # Nothing here must survive a crash: nothing is synced. The rollback journal stays (ingest
            # rolls a failed batch back to retry it event by event) but in a file that is kept between
            # transactions, as are sorts too large for the cache: a batch's journal held in memory cost
            # 10 MiB and more. make_engine chose WAL for concurrent writers; a replay has one.
            for pragma in ("journal_mode=PERSIST", "synchronous=OFF", f"cache_size=-{SCRATCH_CACHE_KIB}",
                           "temp_store=FILE"):
                dbapi_connection.execute(f"PRAGMA {pragma}")

        try:
            init_schema(engine)
            with engine.begin() as conn:
                # Each batch's instant-upgrade check measures its clients' metrics over their whole history.
                # The schema's (client, type, time) index, widened with every column those queries read,
                # lets them answer from the index without visiting the wide event rows: about a third off
                # the metrics queries, a tenth of the replay (bench/simulate.py). Scratch databases only.
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {_NARROW_EVENTS_INDEX}")
                conn.exec_driver_sql(f"CREATE INDEX {_METRICS_INDEX} ON processed_event "
                                     "(client_id, type, occurred_at, amount_minor, number, label, event_id)")
            yield engine
        except OperationalError as exc:
            if "full" in str(exc):
                raise SimulationError(f"the scratch database of a replay filled the disk of {directory}; set TMPDIR "
                                      "to a folder with more room (a replay needs about 1.5 KiB per event)") from None
            raise
        finally:
            engine.dispose()


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
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent ingesting, in reviews, summarising


def replay(label: str, programmes: ProgrammeSet, history: History, as_of: datetime | None = None,
           batch_size: int = DEFAULT_BATCH, clock: Clock = utc_now,
           progress: Callable[[int], None] | None = None, scratch: Path | None = None) -> RunSummary:
    """Replay `history` under `programmes` into a scratch database (in a temporary directory in `scratch`,
    or the system's), with the scheduled reviews, and summarise it."""
    began = time.perf_counter()
    now = clock()
    as_of = resolve_as_of(history, as_of, now)
    first_event = history.moment(0)
    last = history.count_upto(as_of)
    phases: dict[str, float] = {}
    with scratch_engine(scratch) as engine:
        ingestor = Ingestor(engine, programmes, clock=lambda: now, batch_size=batch_size)
        report = IngestReport(rejected=len(history.rejected), errors=list(history.rejected))
        reviews, position = [], 0
        for moment in [*review_moments(programmes, first_event, as_of), None]:
            upto = history.count_upto(moment, position, last) if moment is not None else last
            with _timed(phases, "ingest"):
                _ingest(ingestor, history.read(position, upto), batch_size, report, progress)
            position = upto
            if moment is not None:
                with _timed(phases, "reviews"):
                    done = run_review(engine, programmes, moment, clock=lambda: now, trigger="simulation").as_dict()
                reviews.append({"as_of": done["as_of"], "upgrades": done["upgrades"],
                                "downgrades": done["downgrades"], "points_expired": done["points_expired"]["points"]})
        report.errors.sort(key=lambda error: error["line"])
        events = {"lines": history.lines, "replayed": last, "applied": report.applied,
                  "duplicates": report.duplicates, "rejected": report.rejected,
                  "after_as_of": len(history) - last,
                  "before_programme": history.count_before(programmes.versions[0].effective_from, last),
                  "errors": report.errors}
        with _timed(phases, "summary"):
            summary = summarise(engine, programmes, label, as_of, first_event, events, reviews)
    summary.seconds, summary.phases = time.perf_counter() - began, phases
    return summary


@contextmanager
def _timed(phases: dict[str, float], phase: str) -> Iterator[None]:
    """Add the block's wall time to `phases[phase]`."""
    began = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - began


def resolve_as_of(history: History, as_of: datetime | None, now: datetime) -> datetime:
    """The moment a replay stops at: `as_of` in UTC, by default the last event (at most now); SimulationError
    when the history has no event or `as_of` has no zone, is in the future or precedes every event."""
    if not len(history):
        problem = f" (first: line {history.rejected[0]['line']}: {history.rejected[0]['error']})" \
            if history.rejected else ""
        raise SimulationError(f"{history.path} has no event to replay: {len(history.rejected)} line(s) "
                              f"rejected{problem}")
    if as_of is None:
        # Events later than now would be refused by ingest: the default stops at now.
        return min(history.moment(len(history) - 1), now)
    if as_of.tzinfo is None:
        raise SimulationError("the as-of moment has no time zone; give UTC, e.g. 2026-06-30T00:00:00Z")
    as_of = as_of.astimezone(UTC)
    if as_of > now:
        raise SimulationError(f"--as-of {as_of.isoformat()} is in the future: a simulation replays what happened")
    if as_of < history.moment(0):
        raise SimulationError(f"--as-of {as_of.isoformat()} is before the history's first event "
                              f"({history.moment(0).isoformat()}): nothing to replay")
    return as_of


def _ingest(ingestor: Ingestor, lines: Iterator[tuple[int, str]], batch_size: int, report: IngestReport,
            progress: Callable[[int], None] | None) -> None:
    """Apply events in batches as `loyalty ingest` would, each outcome under its original line number."""
    while chunk := list(islice(lines, batch_size)):
        items = []
        for number, text in chunk:
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
    default when the history has PARALLEL_FROM_BYTES or more and the machine two cores; each process
    loads its candidate's rules from `rules` again, as they cannot be sent across).

    `progress` is told how many events each replayed batch held (both replays count).
    """
    began = time.perf_counter()
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2 and events_path.stat().st_size >= PARALLEL_FROM_BYTES
    now = clock()
    if parallel:
        summaries = _replay_in_processes([current, new], events_path, as_of, batch_size, now, progress)
    else:
        history = read_history(events_path)
        as_of = resolve_as_of(history, as_of, now)
        summaries = {c.label: replay(c.label, c.programmes, history, as_of, batch_size, lambda: now, progress)
                     for c in (current, new)}
    return Simulation(summaries[current.label], summaries[new.label], parallel, time.perf_counter() - began)


def _replay_in_processes(candidates: list[Candidate], events_path: Path, as_of: datetime | None, batch_size: int,
                         now: datetime, progress: Callable[[int], None] | None) -> dict[str, RunSummary]:
    # spawn, not fork: the parent may run threads (a progress bar) and holds a compiled matching
    # core; each child loads the rules itself, while this process finds the history's events and
    # then hands their places over (reading it once, in the time the children take to start).
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    with tempfile.TemporaryDirectory(prefix="loyalty-simulate-") as scratch:  # removed after the children end
        workers, receivers, senders = {}, {}, {}
        for candidate in candidates:
            label = candidate.label
            receivers[label], senders[label] = context.Pipe(duplex=False)
            workers[label] = context.Process(target=_child, name=f"simulate-{label}", daemon=True, args=(
                label, str(candidate.rules), receivers[label], batch_size, now, scratch, messages))
        try:
            for label, worker in workers.items():
                worker.start()
                receivers[label].close()  # the child's end: closed here too, a child that died breaks the pipe
            history = read_history(events_path)
            as_of = resolve_as_of(history, as_of, now)
            for sender in senders.values():
                with suppress(BrokenPipeError):  # that replay process has ended: _results says how
                    sender.send((history, as_of))
            return _results(workers, messages, progress)
        finally:
            for worker in workers.values():
                if worker.is_alive():
                    worker.terminate()
                worker.join()


def _results(workers: dict, messages, progress: Callable[[int], None] | None) -> dict[str, RunSummary]:  # noqa: ANN001
    """Each replay's summary, passing its progress on; SimulationError when one fails or stops without a result."""
    results: dict[str, RunSummary] = {}
    silent: Counter[str] = Counter()  # half-second waits since a replay process ended without its result
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
    return results


def _child(label: str, rules: str, inbox, batch_size: int, now: datetime, scratch: str,  # noqa: ANN001
           messages) -> None:  # noqa: ANN001 - multiprocessing's pipe end and queue
    """A replay process: load the rules, receive the history, replay, send the summary (or the error) back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends both replays
    try:
        programmes = load_programmes(Path(rules))
        history, as_of = inbox.recv()
        # The compiled rules live as long as the process: out of the collector's sight, its full
        # collections stop walking them.
        gc.collect()
        gc.freeze()
        summary = replay(label, programmes, history, as_of, batch_size, lambda: now,
                         lambda n: messages.put(("progress", label, n)), Path(scratch))
        messages.put(("done", label, summary))
    except EOFError:
        return  # the parent stopped before sending the history: it reports why
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
                CURRENT: round(current.seconds, 2), NEW: round(new.seconds, 2),
                "phases": {summary.label: {phase: round(seconds, 2) for phase, seconds in summary.phases.items()}
                           for summary in (current, new)}},
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
