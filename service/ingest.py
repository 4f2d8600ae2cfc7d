"""Ingest activity events: validate, evaluate under the programme in force, and write the awards.

Events are applied in batches, one transaction a batch: the processed-event records, the ledger
entries and their projections are written together or not at all. A batch that collides with a
concurrent writer (same event or new client inserted meanwhile) is rolled back and decided again, so
each event is applied exactly once however many processes ingest the same file.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice

from sqlalchemy import Connection, Engine

from engine.context import context_at
from engine.errors import EvaluationError, EventError
from engine.evaluator import RuleOutcome, evaluate
from engine.events import Event, parse_envelope, parse_json_line, typed_event
from engine.programme import CompiledProgramme, ProgrammeSet
from engine.schema import Rule
from rewards.caps import CapUsage, allowed, period_bounds, usage_between
from rewards.kinds import Reason
from rewards.tiers import tier_grants
from service.clock import Clock, utc_now
from service.retry import with_retry
from storage import clients as client_store
from storage import ledger
from storage.clients import ClientRecord
from storage.db import write_transaction
from storage.ledger import Provenance

APPLIED, DUPLICATE, REJECTED = "applied", "duplicate", "rejected"


@dataclass(frozen=True)
class Outcome:
    """What happened to one input line or item."""

    line: int
    event_id: str | None
    status: str
    error: str | None = None


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


class Ingestor:
    """Applies events to the ledger under the programme version in force at each event's time."""

    def __init__(self, engine: Engine, programmes: ProgrammeSet, clock: Clock = utc_now, batch_size: int = 500):
        self.engine = engine
        self.programmes = programmes
        self.clock = clock
        self.batch_size = batch_size

    def ingest_lines(self, lines: Iterable[str], progress: Callable[[int], None] | None = None) -> IngestReport:
        """Ingest NDJSON lines; blank lines are skipped; `progress` is told how many lines each batch held."""
        report = IngestReport()
        numbered = enumerate(lines, start=1)
        for chunk in _chunks(numbered, self.batch_size):
            raw_items = []
            for number, text in chunk:
                if not text.strip():
                    continue
                try:
                    raw_items.append((number, parse_json_line(text)))
                except EventError as exc:
                    report.add(Outcome(number, None, REJECTED, str(exc)))
            for outcome in self.ingest_raw(raw_items):
                report.add(outcome)
            if progress:
                progress(len(chunk))
        report.errors.sort(key=lambda error: error["line"])
        return report

    def ingest_raw(self, items: list[tuple[int, dict]]) -> list[Outcome]:
        """Validate and apply parsed JSON objects; one outcome per item, in order."""
        outcomes: dict[int, Outcome] = {}
        pending: list[_Pending] = []
        for position, (line, raw) in enumerate(items):
            event_id = raw.get("id") if isinstance(raw.get("id"), str) else None
            try:
                envelope = parse_envelope(raw)
                programme = self.programmes.at(envelope.occurred_at)
                if programme is None:
                    first = self.programmes.versions[0]
                    raise EventError(f"no programme version is in force at {envelope.occurred_at.isoformat()}; "
                                     f"{first.id} starts {first.effective_from.isoformat()}", "occurred_at")
                pending.append(_Pending(position, typed_event(envelope, programme.model.event_types,
                                                              programme.currency), programme))
            except EventError as exc:
                outcomes[position] = Outcome(line, event_id, REJECTED, str(exc))
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start:start + self.batch_size]
            for item, outcome in zip(batch, with_retry(lambda b=batch: self._apply_batch(b)), strict=True):
                outcomes[item.position] = replace(outcome, line=items[item.position][0])
        return [outcomes[position] for position in range(len(items))]

    def _apply_batch(self, batch: list[_Pending]) -> list[Outcome]:
        with write_transaction(self.engine) as conn:
            return _BatchWriter(conn, self.clock()).apply(batch)


class _BatchWriter:
    """Decides and writes one batch inside one transaction."""

    def __init__(self, conn: Connection, now: datetime):
        self.conn = conn
        self.now = now
        self.entries: list[dict] = []
        self.processed: list[dict] = []
        self.tier_rows: list[dict] = []
        self.new_clients: dict[str, ClientRecord] = {}
        self.changed_profiles: dict[str, ClientRecord] = {}
        self.cap_cache: dict[tuple, CapUsage] = {}

    def apply(self, batch: list[_Pending]) -> list[Outcome]:
        client_ids = sorted({item.event.client_id for item in batch})
        known_hashes = client_store.processed_hashes(self.conn, [item.event.id for item in batch])
        self.clients = client_store.load_clients(self.conn, client_ids, lock=True)
        self.histories = client_store.tier_histories(self.conn, client_ids)
        self._load_cap_history(batch, client_ids)
        outcomes = []
        for item in batch:
            event = item.event
            digest = event.content_hash()
            prior = known_hashes.get(event.id)
            if prior is not None:
                outcomes.append(_repeat(item, prior == digest))
                continue
            try:
                self._apply_event(item, digest)
            except EvaluationError as exc:
                outcomes.append(Outcome(item.position, event.id, REJECTED, str(exc)))
                continue
            known_hashes[event.id] = digest
            outcomes.append(Outcome(item.position, event.id, APPLIED))
        self._write()
        return outcomes

    def _apply_event(self, item: _Pending, digest: str) -> None:
        event, programme = item.event, item.programme
        existing = self.clients.get(event.client_id) or self.new_clients.get(event.client_id)
        record = existing or ClientRecord(event.client_id, first_seen_at=event.occurred_at)
        if event.type == "client.onboarded":
            record = _onboard(record, event)
        context = context_at(event.client_id, event.occurred_at, self.histories.get(event.client_id, []),
                             programme.lowest_tier.id, record.segment, record.onboarded_at, record.first_seen_at)
        outcomes = evaluate(programme, event, context)  # may raise: nothing has been recorded yet
        if existing is None:
            self._create_client(record, programme, event)
        elif record is not existing:
            self._store_profile(record)
        source = Provenance(programme.id, programme.version, event.id)
        for outcome in outcomes:
            self._record_awards(event, outcome, source)
        self.processed.append({
            "event_id": event.id, "client_id": event.client_id, "type": event.type,
            "occurred_at": event.occurred_at, "content_hash": digest,
            "payload": json.dumps(event.canonical(), sort_keys=True), "programme_id": programme.id,
            "programme_version": programme.version, "processed_at": self.now})

    def _create_client(self, record: ClientRecord, programme: CompiledProgramme, event: Event) -> None:
        self.new_clients[record.client_id] = record
        lowest = programme.lowest_tier
        start = record.first_seen_at
        self.tier_rows.append({"client_id": record.client_id, "tier": lowest.id, "valid_from": start,
                               "reason": "new client: starts in the lowest tier", "programme_id": programme.id,
                               "programme_version": programme.version, "created_at": self.now})
        self.histories[record.client_id] = [(start, lowest.id)]
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
        starts = [period_bounds(rule.rule.cap.per, item.event.occurred_at)[0]
                  for item in batch for rule in item.programme.rules if rule.rule.cap]
        self.cap_history: dict[tuple[str, str], list] = defaultdict(list)
        if not starts:
            return
        since = None if None in starts else min(starts)  # type: ignore[type-var]
        capped = sorted({rule.rule.id for item in batch for rule in item.programme.rules if rule.rule.cap})
        for client_id, rule_id, at, points, event_id in client_store.cap_history(self.conn, client_ids, capped, since):
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
        ledger.append(self.conn, self.entries)


def _repeat(item: _Pending, same_content: bool) -> Outcome:
    if same_content:
        return Outcome(item.position, item.event.id, DUPLICATE)
    return Outcome(item.position, item.event.id, REJECTED,
                   f"conflict: event id {item.event.id!r} was already processed with different content; "
                   "a corrected event needs a new id (reverse the original with `loyalty reverse`)")


def _onboard(record: ClientRecord, event: Event) -> ClientRecord:
    if record.onboarded_at is not None and record.onboarded_at > event.occurred_at:
        return record  # an older onboarding arriving late does not overwrite a newer profile
    data = event.data
    return replace(record, name=data.get("name"), segment=data.get("segment"), industry=data.get("industry"),
                   onboarded_at=event.occurred_at)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk
