"""Ingest activity events: validate, evaluate under the programme in force, and write the awards.

Events from before the programme began are applied as history: they count for the profile and tier
metrics (loan volume, tenure) and earn nothing, since no rule was in force then.

Events are applied in batches, one transaction a batch: the processed-event records, the ledger
entries and their projections are written together or not at all. A batch that collides with a
concurrent writer (same event or new client inserted meanwhile) is rolled back and decided again, so
each event is applied exactly once however many processes ingest the same file. Clients that
qualify for an instant-upgrade tier move there at the end of their batch (service/instant_upgrades.py).

Every input line or item is applied or rejected alone: whatever its size or shape, reading, parsing and
validating it can only reject it (an unexpected failure there is logged and rejected as "internal error
(logged)"); only a failure while writing a batch stops the run, as it must.
"""
from __future__ import annotations

import gc
import logging
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice
from typing import Any, BinaryIO, Literal

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from engine.context import ONBOARDING_EVENT, context_at
from engine.errors import EvaluationError, EventError
from engine.evaluator import RuleOutcome, evaluate
from engine.events import Event, content_digest, matching_value, parse_envelope, shown, typed_event
from engine.json_input import MAX_JSON_DEPTH, MAX_LINE_BYTES, nesting_depth, parse_json_line
from engine.metrics import METRIC_INPUTS
from engine.programme import CompiledProgramme, ProgrammeSet
from engine.schema import Rule
from rewards.caps import CapUsage, allowed, period_bounds, usage_between
from rewards.kinds import Reason
from rewards.tiers import tier_grants
from service import telemetry
from service.answer import Answer
from service.clock import MAX_CLOCK_SKEW, Clock, utc_now
from service.instant_upgrades import apply_instant_upgrades
from service.retry import with_retry
from service.rules_watcher import RulesWatcher
from storage import clients as client_store
from storage import ledger, metric_totals
from storage.clients import ClientRecord
from storage.db import write_transaction
from storage.ledger import Provenance

APPLIED, DUPLICATE, REJECTED = "applied", "duplicate", "rejected"
INTERNAL_ERROR = "internal error (logged)"
log = logging.getLogger("loyalty.ingest")


@dataclass(frozen=True)
class Outcome:
    """What happened to one input line or item."""

    line: int
    event_id: str | None
    status: str
    error: str | None = None
    field: str | None = None  # the field at fault, when one is


class EventResult(Answer):
    """What happened to one item of a batch."""

    index: int
    id: str | None
    status: Literal["applied", "duplicate", "rejected"]
    error: str | None


class EventsAnswer(Answer):
    """Counts, and a result per item in the order sent."""

    applied: int
    duplicates: int
    rejected: int
    results: list[EventResult]


@dataclass(frozen=True)
class OversizedLine:
    """A line longer than MAX_LINE_BYTES: only its start is kept in memory, and it is rejected unread."""

    start: bytes  # the first MAX_LINE_BYTES bytes
    size: int  # its full length in bytes, without the newline


InputLine = str | bytes | OversizedLine
RejectSink = Callable[[Outcome, InputLine], None]


def bounded_lines(stream: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | OversizedLine]:
    """The lines of a binary stream, each read with at most `limit` bytes held: a longer line (even one of
    gigabytes with no newline) comes as an OversizedLine, the rest of it skipped in bounded reads."""
    while line := stream.readline(limit + 1):
        length = len(line) - line.endswith(b"\n")
        if length <= limit:
            yield line
            continue
        start, size = line[:limit], length
        while not line.endswith(b"\n") and (line := stream.readline(limit)):
            size += len(line) - line.endswith(b"\n")
        yield OversizedLine(start, size)


@dataclass
class IngestReport:
    """Counts of applied, duplicate and rejected events, with the reason for each rejection."""

    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        """Count one outcome."""
        if outcome.status == APPLIED:
            self.applied += 1
        elif outcome.status == DUPLICATE:
            self.duplicates += 1
        else:
            self.rejected += 1
            self.errors.append({"line": outcome.line, "id": outcome.event_id, "error": outcome.error})

    def as_dict(self) -> dict:
        """The `--json` form."""
        return {"applied": self.applied, "duplicates": self.duplicates, "rejected": self.rejected,
                "errors": self.errors}


@dataclass(frozen=True)
class _Pending:
    position: int  # index of the item in the caller's list
    event: Event
    programme: CompiledProgramme
    earns: bool  # False for history from before the programme began: it counts for metrics, earns nothing


class Ingestor:
    """Applies events to the ledger under the programme version in force at each event's time."""

    def __init__(self, engine: Engine, programmes: ProgrammeSet, clock: Clock = utc_now, batch_size: int = 2000,
                 rules: RulesWatcher | None = None):
        self.engine = engine
        self.programmes = programmes
        self.clock = clock
        self.batch_size = batch_size
        self.rules = rules  # when given, a newly activated version is picked up between batches

    def ingest_lines(self, lines: Iterable[InputLine] | BinaryIO, progress: Callable[[int], None] | None = None,
                     rejects: RejectSink | None = None) -> IngestReport:
        """Ingest NDJSON lines (text, or bytes decoded as UTF-8 line by line); blank lines are skipped.

        A binary stream is read with bounded_lines, so no line is held beyond MAX_LINE_BYTES. `progress`
        is told how many lines each batch held. `rejects` is given each rejected line, as it was read,
        with its outcome, in line order a batch at a time: once the batch is decided, or, when writing
        it fails, before the failure propagates (the lines rejected so far are never lost).
        """
        if hasattr(lines, "readline"):
            lines = bounded_lines(lines)  # type: ignore[arg-type]
        report = IngestReport()
        for chunk in chunks(enumerate(lines, start=1), self.batch_size):  # type: ignore[arg-type]
            for outcome in self.ingest_chunk(chunk, rejects):
                report.add(outcome)
            if progress:
                progress(len(chunk))
        report.errors.sort(key=lambda error: error["line"])
        return report

    def ingest_chunk(self, chunk: list[tuple[int, InputLine]], rejects: RejectSink | None = None,
                     moment: datetime | None = None, source: str = "ingest") -> list[Outcome]:
        """Apply numbered input lines as one batch; the outcome of each non-blank line, in line order.

        `moment` is when the batch's instant upgrades are measured (default: its latest valid event
        under a programme in force); a share of a larger batch applied elsewhere passes that batch's.
        `source` labels the events in the metrics (ingest: files; broker: messages).
        """
        if self.rules is not None and self.rules.refresh():
            self.programmes = self.rules.current()
        decided: list[Outcome] = []
        raw_items = []
        for number, line in chunk:
            try:
                raw = _parse_line(line, first=number == 1)
            except EventError as exc:
                decided.append(Outcome(number, None, REJECTED, str(exc), exc.field))
            except Exception:  # noqa: BLE001 - one line must never stop the others
                log.exception("line %d could not be parsed", number)
                decided.append(Outcome(number, None, REJECTED, INTERNAL_ERROR))
            else:
                if raw is not None:
                    raw_items.append((number, raw))
        outcomes, pending = self._check(raw_items)
        try:
            self._apply_checked(raw_items, outcomes, pending, moment)
        finally:
            decided.extend(outcome for outcome in outcomes if outcome is not None)
            decided.sort(key=lambda outcome: outcome.line)
            if rejects is not None:
                originals = dict(chunk)
                for outcome in decided:
                    if outcome.status == REJECTED:
                        rejects(outcome, originals[outcome.line])
        telemetry.count_events(source, decided)
        return decided

    def ingest_raw(self, items: list[tuple[int, dict]]) -> list[Outcome]:
        """Validate and apply parsed JSON objects given with their line numbers; one outcome per item, in order."""
        outcomes, pending = self._check(items)
        self._apply_checked(items, outcomes, pending)
        return outcomes  # type: ignore[return-value]  # every position was filled

    def ingest_items(self, items: list[Any]) -> EventsAnswer:
        """Apply the items of a parsed JSON batch (an HTTP body): each is applied, a duplicate or rejected alone,
        whatever its shape (an EventError stands for an item nested too deep to parse)."""
        outcomes: list[Outcome | None] = [None] * len(items)
        for index, item in enumerate(items):
            if isinstance(item, EventError):
                outcomes[index] = Outcome(index, None, REJECTED, f"item {index}: {item}")
            elif not isinstance(item, dict):
                outcomes[index] = Outcome(index, None, REJECTED, f"item {index} is not an event object")
            elif (depth := nesting_depth(item)) > MAX_JSON_DEPTH:  # an NDJSON line is refused as text for the same
                outcomes[index] = Outcome(index, None, REJECTED, f"objects and arrays nested {depth} deep in item "
                                          f"{index}; at most {MAX_JSON_DEPTH}")
        objects = [(index, item) for index, item in enumerate(items) if outcomes[index] is None]
        for (index, _), outcome in zip(objects, self.ingest_raw(objects), strict=True):
            outcomes[index] = outcome
        results = [EventResult(index=index, id=o.event_id, status=o.status, error=o.error)
                   for index, o in enumerate(outcomes) if o is not None]
        telemetry.count_events("api", results)
        counts = {status: sum(1 for r in results if r.status == status) for status in (APPLIED, DUPLICATE, REJECTED)}
        return EventsAnswer(applied=counts[APPLIED], duplicates=counts[DUPLICATE], rejected=counts[REJECTED],
                            results=results)

    def _check(self, items: list[tuple[int, dict]]) -> tuple[list[Outcome | None], list[_Pending]]:
        """Validate each item alone: an outcome for each rejected one, a _Pending for the others."""
        outcomes: list[Outcome | None] = [None] * len(items)
        pending: list[_Pending] = []
        for position, (line, raw) in enumerate(items):
            try:
                pending.append(_Pending(position, *validate(raw, self.programmes, self.clock)))
            except EventError as exc:
                outcomes[position] = Outcome(line, _given_id(raw), REJECTED, str(exc), exc.field)
            except Exception:  # noqa: BLE001 - one item must never stop the others
                log.exception("item at line or index %d could not be validated", line)
                outcomes[position] = Outcome(line, _given_id(raw), REJECTED, INTERNAL_ERROR)
        return outcomes, pending

    def _apply_checked(self, items: list[tuple[int, dict]], outcomes: list[Outcome | None],
                       pending: list[_Pending], moment: datetime | None = None) -> None:
        """Apply the valid items in batches, filling in their outcomes batch by batch."""
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start:start + self.batch_size]
            at = moment or max((item.event.occurred_at for item in batch if item.earns), default=None)
            for item, (status, error) in zip(batch, self._apply(batch, at), strict=True):
                outcomes[item.position] = Outcome(items[item.position][0], item.event.id, status, error)

    def _apply(self, batch: list[_Pending], moment: datetime | None) -> list[tuple[str, str | None]]:
        """Apply a batch in one transaction; if it fails for a reason other than the database being
        unreachable, apply its events one by one so only the event at fault is rejected."""
        try:
            return with_retry(lambda: self._apply_batch(batch, moment))
        except OperationalError:
            raise  # the database is down or locked for too long: nothing more can be stored
        except Exception as exc:  # noqa: BLE001 - whatever failed, the other events must still be applied
            if len(batch) > 1:
                return [result for item in batch for result in self._apply([item], moment)]
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return [(REJECTED, f"could not be stored ({type(exc).__name__}): {reason}")]

    def _apply_batch(self, batch: list[_Pending], moment: datetime | None) -> list[tuple[str, str | None]]:
        with write_transaction(self.engine) as conn:
            return _BatchWriter(conn, self.clock(), moment, self.programmes).apply(batch)


class _BatchWriter:
    """Decides and writes one batch inside one transaction."""

    def __init__(self, conn: Connection, now: datetime, moment: datetime | None, programmes: ProgrammeSet):
        self.conn = conn
        self.now = now
        self.moment = moment  # when the batch's instant upgrades are measured
        self.programmes = programmes
        self.entries: list[dict] = []
        self.processed: list[dict] = []
        self.tier_rows: list[dict] = []
        self.new_clients: dict[str, ClientRecord] = {}
        self.changed_profiles: dict[str, ClientRecord] = {}
        self.cap_cache: dict[tuple, CapUsage] = {}
        self.earning: list[_Pending] = []  # applied events under a programme in force: they may upgrade at once

    def apply(self, batch: list[_Pending]) -> list[tuple[str, str | None]]:
        """(status, error) for each event of the batch, in order; the writes happen at the end."""
        client_ids = sorted({item.event.client_id for item in batch})
        # Lock first: a concurrent writer of the same clients has committed before we read anything.
        self.clients = client_store.lock_clients(self.conn, client_ids)
        known_hashes = client_store.processed_hashes(self.conn, [item.event.id for item in batch])
        self.tiers = client_store.tier_histories(self.conn, client_ids)
        self.onboardings = client_store.onboarding_histories(self.conn, client_ids)
        self._load_cap_history(batch, client_ids)
        results: list[tuple[str, str | None]] = []
        for item in batch:
            event = item.event
            payload = event.canonical_json()
            digest = content_digest(payload)
            prior = known_hashes.get(event.id)
            if prior is not None:
                results.append(_repeat(event.id, prior == digest))
                continue
            try:
                self._apply_event(item, payload, digest)
            except EvaluationError as exc:
                results.append((REJECTED, str(exc)))
                continue
            known_hashes[event.id] = digest
            results.append((APPLIED, None))
        self._write()
        return results

    def _apply_event(self, item: _Pending, payload: str, digest: str) -> None:
        event, programme = item.event, item.programme
        existing = self.clients.get(event.client_id) or self.new_clients.get(event.client_id)
        record = existing or ClientRecord(event.client_id, first_seen_at=event.occurred_at)
        if event.occurred_at < record.first_seen_at:
            record = replace(record, first_seen_at=event.occurred_at)
        onboardings = self.onboardings[event.client_id]
        if event.type == ONBOARDING_EVENT:
            record = _onboard(record, event)
            onboardings = sorted([*onboardings, (event.occurred_at, event.data.get("segment"))],
                                 key=lambda pair: pair[0])
        context = context_at(event.client_id, event.occurred_at, self.tiers.get(event.client_id, []),
                             programme.lowest_tier.id, onboardings, record.first_seen_at)
        # May raise: nothing has been recorded for this event yet.
        try:
            outcomes = evaluate(programme, event, context) if item.earns else []
        except EvaluationError:
            raise
        except Exception:  # noqa: BLE001 - a failure of the pure evaluation rejects this event, not its batch
            log.exception("event %s could not be evaluated", shown(event.id))
            raise EvaluationError(INTERNAL_ERROR) from None
        self.onboardings[event.client_id] = onboardings
        if item.earns:
            self.earning.append(item)
        if existing is None:
            self._create_client(record, programme)
        elif record is not existing:
            self._store_profile(record)
        source = Provenance(programme.id, programme.version, event.id)
        for outcome in outcomes:
            self._record_awards(event, outcome, source)
        amount, number, label = METRIC_INPUTS.get(event.type, (None, None, None))
        self.processed.append({
            "event_id": event.id, "client_id": event.client_id, "type": event.type,
            "occurred_at": event.occurred_at, "content_hash": digest, "payload": payload,
            "amount_minor": matching_value("money", event.data[amount], programme.currency)
            if amount in event.data else None,
            "number": event.data.get(number) if number else None,
            "label": event.data.get(label) if label else None,
            "programme_id": programme.id, "programme_version": programme.version, "processed_at": self.now})

    def _create_client(self, record: ClientRecord, programme: CompiledProgramme) -> None:
        self.new_clients[record.client_id] = record
        lowest = programme.lowest_tier
        start = record.first_seen_at
        self.tier_rows.append({"client_id": record.client_id, "tier": lowest.id, "valid_from": start,
                               "reason": "new client: starts in the lowest tier", "programme_id": programme.id,
                               "programme_version": programme.version, "created_at": self.now})
        self.tiers[record.client_id] = [(start, lowest.id)]
        tier_source = Provenance(programme.id, programme.version, None)
        self.entries.extend(ledger.grant_entry(record.client_id, grant, tier_source, self.now)
                            for grant in tier_grants(lowest, start))

    def _store_profile(self, record: ClientRecord) -> None:
        if record.client_id in self.new_clients:
            self.new_clients[record.client_id] = record
        else:
            self.clients[record.client_id] = record
            self.changed_profiles[record.client_id] = record

    def _record_awards(self, event: Event, outcome: RuleOutcome, source: Provenance) -> None:
        rule = outcome.rule.rule
        earned = outcome.points.points if outcome.points else 0
        usage = self._cap_usage(event, rule) if rule.cap else CapUsage()
        may_fire, points = allowed(rule.cap, usage, earned)
        if not may_fire:
            return
        gave = False
        if outcome.points and points > 0:
            # How the figure was reached, when it is not simply the expression's value.
            detail: dict | None = None
            if outcome.points.multiplier != 1 or points < earned:
                detail = {"base_points": outcome.points.base_points, "multiplier": str(outcome.points.multiplier)}
                if points < earned:
                    detail["capped_from"] = earned
            self.entries.append(ledger.points_entry(event.client_id, rule.id, points, Reason.EARN,
                                                    event.occurred_at, source, self.now, detail))
            gave = True
        for grant in outcome.grants:
            self.entries.append(ledger.grant_entry(event.client_id, grant, source, self.now))
            gave = True
        if gave:
            usage.points += points
            usage.times += 1

    def _load_cap_history(self, batch: list[_Pending], client_ids: list[str]) -> None:
        """One query for everything the batch's capped rules have already given its clients."""
        earliest = min(item.event.occurred_at for item in batch)
        since_by_rule: dict[str, datetime | None] = {}
        for programme in {id(item.programme): item.programme for item in batch}.values():
            for compiled in programme.rules:
                if compiled.rule.cap:  # period starts only move forward in time: the earliest event decides
                    start = period_bounds(compiled.rule.cap.per, earliest)[0]
                    known = since_by_rule.get(compiled.rule.id, start)
                    since_by_rule[compiled.rule.id] = None if start is None or known is None else min(start, known)
        self.cap_history: dict[tuple[str, str], list] = defaultdict(list)
        for client_id, rule_id, at, points, event_id in client_store.cap_history(self.conn, client_ids, since_by_rule):
            self.cap_history[(client_id, rule_id)].append((at, points, event_id))

    def _cap_usage(self, event: Event, rule: Rule) -> CapUsage:
        start, end = period_bounds(rule.cap.per, event.occurred_at)
        key = (event.client_id, rule.id, start)
        if key not in self.cap_cache:
            self.cap_cache[key] = usage_between(self.cap_history[(event.client_id, rule.id)], start, end)
        return self.cap_cache[key]

    def _write(self) -> None:
        client_store.insert_clients(self.conn, list(self.new_clients.values()), self.now)
        client_store.update_profiles(self.conn, list(self.changed_profiles.values()))
        client_store.insert_tier_assignments(self.conn, self.tier_rows)
        client_store.insert_processed(self.conn, self.processed)
        metric_totals.record(self.conn, [metric_totals.fact(row) for row in self.processed])
        ledger.append(self.conn, self.entries)
        if self.earning and self.moment is not None:
            apply_instant_upgrades(self.conn, self.programmes.for_moment(self.moment),
                                   sorted({i.event.client_id for i in self.earning}), self.moment, self.now)


def collect_less() -> None:
    """For a process whose work is ingesting: let the cyclic garbage collector skip what is loaded by now
    (modules, the compiled programmes: they live as long as the process) and run less often while events
    are applied (it cost 6-8% of ingest and found little). Never in a server: it is process-wide."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def route(chunk: list[tuple[int, InputLine]], programmes: ProgrammeSet, shares: int,
          clock: Clock = utc_now) -> tuple[list[list[tuple[int, InputLine]]], datetime | None]:
    """A chunk of numbered lines shared out by client among `shares` ingest processes (so each client's
    events stay in order in one process), with the moment ingest_chunk would measure the whole chunk's
    instant upgrades at: its latest valid event under a programme in force. A line without a client id
    goes anywhere: it is rejected where it lands."""
    parts: list[list[tuple[int, InputLine]]] = [[] for _ in range(shares)]
    moments = []
    for number, line in chunk:
        part = number % shares
        try:
            raw = _parse_line(line, first=number == 1)
            if isinstance(raw, dict) and isinstance(raw.get("client_id"), str):
                part = zlib.crc32(raw["client_id"].encode("utf-8", "surrogatepass")) % shares
                event, _, earns = validate(raw, programmes, clock)
                if earns:
                    moments.append(event.occurred_at)
        except Exception:  # noqa: BLE001, S110 - a line that does not validate has no moment; its process says why
            pass
        parts[part].append((number, line))
    return parts, max(moments, default=None)


def validate(raw: dict, programmes: ProgrammeSet, clock: Clock) -> tuple[Event, CompiledProgramme, bool]:
    """The typed event of a parsed item, the programme version in force at its moment, and whether it
    earns (False for history from before the programme began); EventError when it is not valid."""
    envelope = parse_envelope(raw)
    if envelope.occurred_at > clock() + MAX_CLOCK_SKEW:
        raise EventError(f"{envelope.occurred_at.isoformat()} is in the future; an event reports what "
                         "already happened", "occurred_at")
    programme = programmes.for_moment(envelope.occurred_at)
    earns = envelope.occurred_at >= programme.effective_from
    return typed_event(envelope, programme.model.event_types, programme.currency), programme, earns


def _repeat(event_id: str, same_content: bool) -> tuple[str, str | None]:
    if same_content:
        return DUPLICATE, None
    return REJECTED, (f"conflict: event id {event_id!r} was already processed with different content; "
                      "a corrected event needs a new id (reverse the original with `loyalty reverse`)")


def _onboard(record: ClientRecord, event: Event) -> ClientRecord:
    if record.onboarded_at is not None and record.onboarded_at > event.occurred_at:
        return record  # an older onboarding arriving late does not overwrite a newer profile
    data = event.data
    return replace(record, name=data.get("name"), segment=data.get("segment"), industry=data.get("industry"),
                   onboarded_at=event.occurred_at)


def _parse_line(line: InputLine, first: bool) -> dict | None:
    """The JSON object of one input line, None for a blank line, or EventError; the length is checked first."""
    text = line_text(line, first)
    return parse_json_line(text) if text.strip() else None


def line_text(line: InputLine, first: bool) -> str:
    """One input line as text, or EventError when it is over MAX_LINE_BYTES or not UTF-8."""
    if isinstance(line, OversizedLine):
        raise EventError(f"the line is {line.size:,} bytes; an event is at most {MAX_LINE_BYTES:,} bytes")
    if isinstance(line, bytes) and len(line) > MAX_LINE_BYTES:
        size = len(line.rstrip(b"\r\n"))
        if size > MAX_LINE_BYTES:
            raise EventError(f"the line is {size:,} bytes; an event is at most {MAX_LINE_BYTES:,} bytes")
    return decode_line(line, first)


def _given_id(raw: dict) -> str | None:
    """The event id a rejected item carried, when it is a plausible one (it is shown and printed)."""
    value = raw.get("id")
    return value if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable() else None


def decode_line(line: str | bytes, first: bool) -> str:
    """One input line as text: bytes decoded as UTF-8 (a BOM allowed on the first line), or a clear EventError."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(f"not UTF-8 text (byte {exc.start + 1} of the line)") from None
    return line.removeprefix("\ufeff") if first else line  # a byte-order mark some editors write


def chunks(items: Iterator, size: int) -> Iterator[list]:
    """Lists of `size` items (the last may be shorter), read as they are needed."""
    while chunk := list(islice(items, size)):
        yield chunk
