"""The tier review: measure every client over the window, place it in the highest tier it qualifies
for, and move it there through the ledger (revoke the old tier's standing benefits, grant the new).

A move takes effect at the review moment, or, for a client whose later activity was already
applied, just after that activity: no applied event is ever left evaluated under a tier the client
did not have then. Running the same review again changes nothing: a client already in the tier its
metrics earn is left alone, one already decided at that moment is skipped with the reason, and one
assignment per client and moment is a unique key. `dry_run` decides and writes nothing.
"""
from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select, update

from engine.metrics import METRICS, Placement, place
from engine.programme import CompiledProgramme, ProgrammeSet
from rewards.caps import months_before
from rewards.tiers import TIER_RULE_PREFIX, tier_grants
from service.clock import MAX_CLOCK_SKEW, Clock, utc_now
from service.errors import InputError
from service.retry import with_retry
from storage import clients as client_store
from storage import ledger
from storage.db import read_snapshot, write_transaction
from storage.clients import TierInForce
from storage.ledger import Provenance
from storage.metrics import client_metrics
from storage.models import TierReview

WRITE_CHUNK = 500
INSTANT = timedelta(microseconds=1)
REVIEWS = TierReview.__table__


@dataclass(frozen=True)
class TierChange:
    """A client moving between tiers, with the checks that decided it."""

    client_id: str
    from_tier: str
    to_tier: str
    direction: str  # upgrade or downgrade
    reasons: list[dict]
    effective_from: datetime

    def as_dict(self) -> dict:
        """JSON form."""
        return {"client_id": self.client_id, "from": self.from_tier, "to": self.to_tier,
                "direction": self.direction, "effective_from": self.effective_from.isoformat(),
                "reasons": self.reasons}


@dataclass
class ReviewReport:
    """What a review found and did."""

    review_id: str | None
    as_of: datetime
    programme_version: str
    dry_run: bool
    clients: int = 0
    tiers_before: dict[str, int] = field(default_factory=dict)
    tiers_after: dict[str, int] = field(default_factory=dict)
    migration: dict[str, dict[str, int]] = field(default_factory=dict)
    changes: list[TierChange] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    unfinished_reviews: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The `--json` form."""
        return {"review_id": self.review_id, "as_of": self.as_of.isoformat(),
                "programme_version": self.programme_version, "dry_run": self.dry_run, "clients": self.clients,
                "upgrades": sum(c.direction == "upgrade" for c in self.changes),
                "downgrades": sum(c.direction == "downgrade" for c in self.changes),
                "tiers_before": self.tiers_before, "tiers_after": self.tiers_after,
                "migration": self.migration, "changes": [c.as_dict() for c in self.changes],
                "skipped": self.skipped, "unfinished_reviews": self.unfinished_reviews}


def run_review(engine: Engine, programmes: ProgrammeSet, as_of: datetime, dry_run: bool = False,
               clock: Clock = utc_now, progress: Callable[[int], None] | None = None) -> ReviewReport:
    """Review every client as of `as_of`; write the tier changes unless `dry_run`."""
    if as_of.tzinfo is None:
        raise InputError("the review moment has no time zone; give UTC, e.g. 2026-03-31T00:00:00Z")
    as_of = as_of.astimezone(UTC)
    if as_of > clock() + MAX_CLOCK_SKEW:
        raise InputError(f"a review cannot look into the future: {as_of.isoformat()} is later than now")
    programme = programmes.at(as_of)
    if programme is None:
        raise InputError(f"no programme version is in force at {as_of.isoformat()}")
    window = programme.model.review.window_months
    with read_snapshot(engine) as conn:
        metrics = client_metrics(conn, as_of, months_before(as_of, window), window, programme.currency)
        current = client_store.tiers_as_of(conn, as_of)
        latest = client_store.last_activity(conn)
        unfinished = list(conn.execute(select(REVIEWS.c.id).where(REVIEWS.c.finished_at.is_(None))
                                       .order_by(REVIEWS.c.started_at)).scalars())
    report = ReviewReport(None if dry_run else _review_id(as_of), as_of, programme.version, dry_run,
                          tiers_before=dict.fromkeys(programme.tier_ids, 0),
                          tiers_after=dict.fromkeys(programme.tier_ids, 0), unfinished_reviews=unfinished)
    order = {tier: rank for rank, tier in enumerate(programme.tier_ids)}
    empty = dict.fromkeys(METRICS)
    for client_id, in_force in sorted(current.items()):
        if in_force.tier is None:
            continue  # not a client yet at that moment
        placement = place(programme.model.tiers, metrics.get(client_id, empty))
        skip = _skip_reason(in_force, as_of) if placement.tier != in_force.tier or in_force.decided_later else None
        if skip:
            report.skipped.append({"client_id": client_id, "reason": skip})
            continue
        _count(report, in_force.tier, placement.tier)
        if placement.tier != in_force.tier:
            effective = _effective_moment(as_of, in_force, latest.get(client_id))
            report.changes.append(_change(client_id, in_force.tier, placement, order, effective))
    if not dry_run:
        _write(engine, programme, report, clock, progress)
    return report


def _skip_reason(in_force: TierInForce, as_of: datetime) -> str | None:
    if in_force.decided_later:
        return "a later tier decision exists"
    if in_force.review_id is not None and in_force.since == as_of:
        return f"already decided at this moment by {in_force.review_id}; review at a later moment"
    return None


def _effective_moment(as_of: datetime, in_force: TierInForce, latest_event: datetime | None) -> datetime:
    """The review moment, or just after activity already applied beyond it (or after the tier row
    it would collide with), so history never contradicts an applied event."""
    moment = as_of
    for later in (latest_event, in_force.since):
        if later is not None and later >= moment:
            moment = later + INSTANT
    return moment


def _count(report: ReviewReport, before: str, after: str) -> None:
    report.clients += 1
    report.tiers_before[before] += 1
    report.tiers_after[after] += 1
    row = report.migration.setdefault(before, {})
    row[after] = row.get(after, 0) + 1


def _change(client_id: str, tier: str, placement: Placement, order: dict[str, int],
            effective: datetime) -> TierChange:
    # The old tier's verdict says why the client left it; the new tier's why it arrived; for an
    # upgrade the next tier up says why it did not go higher.
    target = placement.tier
    upward = order.get(target, 0) > order.get(tier, 0)
    above = [t for t, rank in order.items() if rank == order[target] + 1]
    reasons = placement.reasons(tier, target, *above) if tier in order else placement.reasons(target, *above)
    return TierChange(client_id, tier, target, "upgrade" if upward else "downgrade", reasons, effective)


def _review_id(as_of: datetime) -> str:
    return f"review-{as_of.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def _write(engine: Engine, programme: CompiledProgramme, report: ReviewReport, clock: Clock,
           progress: Callable[[int], None] | None) -> None:
    with write_transaction(engine) as conn:
        conn.execute(insert(REVIEWS).values(
            id=report.review_id, as_of=report.as_of, programme_id=programme.id,
            programme_version=programme.version, started_at=clock(), clients=report.clients))
    decided, applied = list(report.changes), []
    for start in range(0, len(decided), WRITE_CHUNK):
        chunk = decided[start:start + WRITE_CHUNK]
        done, skipped = with_retry(lambda c=chunk: _apply_changes(engine, programme, report, c, clock()))
        applied.extend(done)
        for change, reason in skipped:
            _uncount(report, change)
            report.skipped.append({"client_id": change.client_id, "reason": reason})
        if progress:
            progress(len(chunk))
    report.changes = applied  # what was written, not what was decided before the locks were taken
    counts = Counter(change.direction for change in applied)
    with write_transaction(engine) as conn:
        conn.execute(update(REVIEWS).where(REVIEWS.c.id == report.review_id).values(
            finished_at=clock(), clients=report.clients, upgrades=counts["upgrade"], downgrades=counts["downgrade"]))


def _uncount(report: ReviewReport, change: TierChange) -> None:
    """Take a client skipped at write time out of the counts, as a client skipped earlier never entered them."""
    report.clients -= 1
    report.tiers_before[change.from_tier] -= 1
    report.tiers_after[change.to_tier] -= 1
    report.migration[change.from_tier][change.to_tier] -= 1


def _apply_changes(engine: Engine, programme: CompiledProgramme, report: ReviewReport, changes: list[TierChange],
                   now: datetime) -> tuple[list[TierChange], list[tuple[TierChange, str]]]:
    """One transaction for a chunk of clients: re-check each under its lock, then write the tier rows,
    revocations and grants. Returns what was applied and what was skipped, with why."""
    source = Provenance(programme.id, programme.version, None)
    applied: list[TierChange] = []
    skipped: list[tuple[TierChange, str]] = []
    with write_transaction(engine) as conn:
        ids = [change.client_id for change in changes]
        client_store.lock_clients(conn, ids)
        in_force = client_store.tiers_as_of(conn, report.as_of, ids)
        latest = client_store.last_activity(conn, ids)
        standing = ledger.active_entitlements_by_rule_prefix(conn, ids, TIER_RULE_PREFIX)
        entries, tier_rows = [], []
        for change in changes:
            now_in_force = in_force[change.client_id]
            reason = _skip_reason(now_in_force, report.as_of)
            if reason is None and now_in_force.tier != change.from_tier:
                reason = f"moved to {now_in_force.tier} by another review meanwhile"
            if reason:
                skipped.append((change, reason))
                continue
            effective = _effective_moment(report.as_of, now_in_force, latest.get(change.client_id))
            change = replace(change, effective_from=effective)
            applied.append(change)
            tier_rows.append({
                "client_id": change.client_id, "tier": change.to_tier, "previous_tier": change.from_tier,
                "valid_from": effective, "reason": f"{change.direction} by review",
                "details": json.dumps(change.reasons), "review_id": report.review_id,
                "programme_id": programme.id, "programme_version": programme.version, "created_at": now})
            # Whatever standing tier benefits the client holds end here; the new tier's start.
            entries.extend(ledger.revoke_entry(row, source, effective, now) for row in standing[change.client_id])
            entries.extend(ledger.grant_entry(change.client_id, grant, source, now)
                           for grant in tier_grants(programme.tier(change.to_tier), effective))
        client_store.insert_tier_assignments(conn, tier_rows)
        ledger.append(conn, entries)
    return applied, skipped
