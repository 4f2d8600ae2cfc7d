"""The tier review: measure every client over the window, decide under the programme's review policy
(rewards/tier_policy.py), move clients through the ledger, raise and clear churn flags, expire points,
and report.

Clients are reviewed a page at a time (memory stays bounded whatever the portfolio's size): each
page is read in one snapshot, decided, then written in one transaction that re-checks each tier
change under the clients' locks. A move takes effect at the review moment, or, for a client whose
later activity was already applied, just after that activity (service/tier_moves.py), so no applied
event is ever left evaluated under a tier the client did not have then.

One review runs at a time: a lease in the database keeps replicas (and people) from running two.
A review interrupted half-way is finished by running it again under the same id: clients it already
moved are skipped, grace periods and churn flags it recorded are found, and expiry takes only what
is left. `dry_run` decides and writes nothing.
"""
from __future__ import annotations

import functools
import json
import os
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from engine.churn import fired_signals
from engine.events import minor_unit_exponent
from engine.metrics import METRICS, Placement, place
from engine.programme import CompiledProgramme, ProgrammeSet
from rewards.caps import months_before
from rewards.tier_policy import (
    DOWNGRADE,
    HOLD,
    PINNED,
    UPGRADE,
    Decision,
    Standing,
    decide,
)
from rewards.tiers import TIER_RULE_PREFIX
from service import telemetry
from service.clock import Clock, utc_now
from service.errors import ConflictError, InputError, ReviewInterruptedError
from service.expiry import expire_points
from service.retry import with_retry
from service.tier_moves import TierMove, effective_moment, move_rows
from storage import clients as client_store
from storage import leases, ledger, reviews, standing
from storage.clients import TierInForce
from storage.db import read_snapshot, write_transaction
from storage.metrics import client_metrics, volume_by_product

PAGE = 2000
LEASE = "tier-review"
LEASE_TTL = timedelta(minutes=10)  # renewed after every page; a holder silent this long is presumed dead
_RUNNING: set[str] = set()  # lease holders of this process whose review is running
_DATABASE_GONE = (DBAPIError, PoolTimeoutError)
REVIEW_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # the audit row's key holds 64 characters


@dataclass(frozen=True)
class TierChange:
    """A client moving between tiers, with the checks that decided it and the policy that shaped it."""

    client_id: str
    from_tier: str
    to_tier: str
    direction: str  # upgrade or downgrade
    reasons: list[dict]
    effective_from: datetime
    policy: str = "review"

    def as_dict(self) -> dict:
        """JSON form."""
        return {"client_id": self.client_id, "from": self.from_tier, "to": self.to_tier,
                "direction": self.direction, "effective_from": self.effective_from.isoformat(),
                "policy": self.policy, "reasons": self.reasons}


@dataclass
class ReviewReport:
    """What a review found and did."""

    review_id: str | None
    as_of: datetime
    programme_version: str
    dry_run: bool
    tiers: list[str]
    currency: str
    trigger: str = "manual"
    resumed: bool = False
    clients: int = 0
    tiers_before: dict[str, int] = field(default_factory=dict)
    tiers_after: dict[str, int] = field(default_factory=dict)
    migration: dict[str, dict[str, int]] = field(default_factory=dict)
    changes: list[TierChange] = field(default_factory=list)
    held: list[dict] = field(default_factory=list)
    pins: list[dict] = field(default_factory=list)
    churn_flagged: list[dict] = field(default_factory=list)
    churn_cleared: list[dict] = field(default_factory=list)
    points_expired: dict = field(default_factory=lambda: {"points": 0, "lots": 0, "clients": 0})
    discount_change: Decimal = Decimal(0)
    discount_clients: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    unfinished_reviews: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The `--json` form (also what the report files are written from)."""
        flagged = sorted(self.churn_flagged, key=lambda flag: (-Decimal(flag["loan_volume"]), flag["client_id"]))
        return {"review_id": self.review_id, "as_of": self.as_of.isoformat(),
                "programme_version": self.programme_version, "trigger": self.trigger, "dry_run": self.dry_run,
                "resumed": self.resumed, "currency": self.currency, "tiers": self.tiers, "clients": self.clients,
                "upgrades": sum(c.direction == UPGRADE for c in self.changes),
                "downgrades": sum(c.direction == DOWNGRADE for c in self.changes),
                "tiers_before": self.tiers_before, "tiers_after": self.tiers_after,
                "migration": self.migration, "changes": [c.as_dict() for c in self.changes],
                "held": self.held, "pins": self.pins,
                "churn": {"flagged": flagged, "cleared": self.churn_cleared},
                "points_expired": self.points_expired,
                "standing_discounts": {"change_per_year": str(self._money(self.discount_change)),
                                       "clients": self.discount_clients},
                "skipped": self.skipped, "unfinished_reviews": self.unfinished_reviews}

    def _money(self, amount: Decimal) -> Decimal:
        return amount.quantize(Decimal(1).scaleb(-minor_unit_exponent(self.currency)), rounding=ROUND_HALF_EVEN)


def scheduled_review_id(moment: datetime) -> str:
    """The id of the scheduled review at `moment`: the same on every replica."""
    return f"review-{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}-scheduled"


def run_review(engine: Engine, programmes: ProgrammeSet, as_of: datetime | None = None, dry_run: bool = False,
               clock: Clock = utc_now, progress: Callable[[int], None] | None = None, trigger: str = "manual",
               review_id: str | None = None) -> ReviewReport:
    """Review every client as of `as_of` (default: now) under the review policy; write the outcome unless `dry_run`.

    `review_id` names the review (a scheduled one is named by its moment); an unfinished review of
    that id is resumed at the moment it was started with (another `as_of` is refused). ConflictError
    if another review is running or this one already finished; ReviewInterruptedError if the database
    stops answering half-way.
    """
    if review_id is not None and not REVIEW_ID.fullmatch(review_id):
        raise InputError(f"review id {review_id[:80]!r} is not one; expected 1 to 64 letters, digits, '.', '_', "
                         "':' or '-', as `loyalty review` prints it")
    if as_of is not None and as_of.tzinfo is None:
        raise InputError("the review moment has no time zone; give UTC, e.g. 2026-03-31T00:00:00Z")
    recorded = _recorded(engine, review_id) if review_id is not None and not dry_run else None
    if recorded is not None and recorded.finished_at is None:
        if as_of is not None and as_of.astimezone(UTC) != recorded.as_of:
            raise InputError(f"review {review_id} is a review as of {recorded.as_of.isoformat()}, not "
                             f"{as_of.astimezone(UTC).isoformat()}; resume it without --as-of to finish it at its moment")
        as_of = recorded.as_of
    as_of = (as_of or clock()).astimezone(UTC)
    if as_of > clock():  # not even by a clock's skew: the review also expires points, which cannot be future
        raise InputError(f"a review cannot look into the future: {as_of.isoformat()} is later than now")
    programme = programmes.at(as_of)
    if programme is None:
        raise InputError(f"no programme version is in force at {as_of.isoformat()}")
    report = ReviewReport(None if dry_run else review_id or _new_review_id(as_of), as_of, programme.version, dry_run,
                          programme.tier_ids, programme.currency, trigger,
                          tiers_before=dict.fromkeys(programme.tier_ids, 0),
                          tiers_after=dict.fromkeys(programme.tier_ids, 0))
    with telemetry.review_run(dry_run):
        if dry_run:
            _review_pages(engine, programme, report, clock, progress)
            report.points_expired = expire_points(engine, programmes, as_of, True, clock).as_dict()
            return report
        try:
            return _run(engine, programmes, programme, report, clock, progress)
        except _DATABASE_GONE as exc:  # the database went away or stopped answering: nothing half-written
            if isinstance(exc, DBAPIError) and not isinstance(exc, (OperationalError, InterfaceError)) \
                    and not exc.connection_invalidated:
                raise  # a statement the database refused: a fault of ours, not an outage
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise ReviewInterruptedError(
                f"the database stopped answering during review {report.review_id} ({reason}); what it wrote is "
                f"kept: once the database is back, finish it with `loyalty review --id {report.review_id}`",
                report.review_id) from exc


def _recorded(engine: Engine, review_id: str) -> reviews.ReviewRun | None:
    with read_snapshot(engine) as conn:
        return reviews.find(conn, review_id)


def _run(engine: Engine, programmes: ProgrammeSet, programme: CompiledProgramme, report: ReviewReport, clock: Clock,
         progress: Callable[[int], None] | None) -> ReviewReport:
    holder = f"{socket.gethostname()[:48]}:{os.getpid()}:{uuid.uuid4().hex[:8]}:{_place()}"
    lease = leases.current(engine, LEASE)
    if lease is not None and _abandoned(lease[0]):
        leases.release(engine, LEASE, lease[0])  # its holder can no longer renew it: no need to wait for it to lapse
    if not leases.acquire(engine, LEASE, holder, LEASE_TTL, clock()):
        lease = leases.current(engine, LEASE)
        running = f" ({lease[0]}, lease until {lease[1].isoformat()})" if lease else ""
        raise ConflictError(f"another tier review is running{running}; run it again once that one is done",
                            "review-running")

    def keep_lease(*_: object) -> None:
        if not leases.acquire(engine, LEASE, holder, LEASE_TTL, clock()):
            raise ConflictError(f"review {report.review_id} lost its lease to another replica, which will finish it",
                                "review-lease-lost")

    _RUNNING.add(holder)
    try:
        _start(engine, programme, report, clock())
        _review_pages(engine, programme, report, clock, progress, renew=keep_lease)
        report.points_expired = expire_points(engine, programmes, report.as_of, False, clock,
                                              progress=keep_lease).as_dict()
        keep_lease()
        _finish(engine, report, clock())
    finally:
        _RUNNING.discard(holder)
        _release(engine, holder)
    return report


def _abandoned(holder: str) -> bool:
    """Whether a lease holder ("host:pid:nonce:place") is gone: a process of this kernel and pid namespace
    that ended, or this process with no review of it running any more (the database went away before it
    could release the lease). Holders elsewhere (another machine, another container) are left to lapse."""
    parts = holder.split(":")
    if len(parts) != 4 or not _place() or parts[3] != _place() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return holder not in _RUNNING
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (owned by another user)
    return False


@functools.cache
def _place() -> str:
    """This kernel's boot and this process's pid namespace: where a process id means the same process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return ""  # not Linux: never take a lease over early
    return f"{boot}.{namespace}"


def _release(engine: Engine, holder: str) -> None:
    try:
        leases.release(engine, LEASE, holder)
    except DBAPIError:
        pass  # the database is gone: the lease lapses by itself after LEASE_TTL, and the first error is the news


def _start(engine: Engine, programme: CompiledProgramme, report: ReviewReport, now: datetime) -> None:
    """Record the review, or find the unfinished run of it to resume (at the moment it was started with)."""
    with write_transaction(engine) as conn:
        existing = reviews.find(conn, report.review_id)
        if existing is not None and existing.finished_at is not None:
            raise ConflictError(f"review {report.review_id} already finished at {existing.finished_at.isoformat()}",
                                "review-finished", finished_at=existing.finished_at.isoformat())
        if existing is not None and existing.as_of != report.as_of:  # recorded meanwhile by another run
            raise ConflictError(f"review {report.review_id} is a review as of {existing.as_of.isoformat()}; resume it "
                                "without --as-of", "review-moment", as_of=existing.as_of.isoformat())
        if existing is None:
            reviews.record_start(conn, report.review_id, report.trigger, report.as_of, programme.id,
                                 programme.version, now)
        report.resumed = existing is not None
        report.unfinished_reviews = reviews.unfinished(conn, other_than=report.review_id)


def _finish(engine: Engine, report: ReviewReport, now: datetime) -> None:
    summary = report.as_dict()
    with write_transaction(engine) as conn:
        reviews.record_finish(conn, report.review_id, now, report.clients, summary["upgrades"], summary["downgrades"],
                              report.points_expired["points"], len(report.churn_flagged))


def _new_review_id(as_of: datetime) -> str:
    return f"review-{as_of:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


# --- deciding ------------------------------------------------------------------------------------------

@dataclass
class _Page:
    """One page's decisions: what to write and what to report."""

    changes: list[TierChange] = field(default_factory=list)
    grace_opens: list[dict] = field(default_factory=list)
    grace_closes: list[dict] = field(default_factory=list)
    flags_raised: list[dict] = field(default_factory=list)
    flags_seen: list[dict] = field(default_factory=list)
    flags_cleared: list[str] = field(default_factory=list)
    volumes: dict[str, dict[str, int]] = field(default_factory=dict)
    # What the report gets once the page is written (a retried page is decided afresh).
    stayed: list[str] = field(default_factory=list)  # the tier of each client reviewed and not moved
    already_moved: list[TierChange] = field(default_factory=list)  # by this review, before it was resumed
    skipped: list[dict] = field(default_factory=list)
    held: list[dict] = field(default_factory=list)
    pins: list[dict] = field(default_factory=list)
    churn_flagged: list[dict] = field(default_factory=list)
    churn_cleared: list[dict] = field(default_factory=list)

    @property
    def client_ids(self) -> list[str]:
        """Every client the page writes something for."""
        ids = {c.client_id for c in self.changes} | {row["client_id"] for row in self.grace_opens}
        ids |= {row["client_id"] for row in self.grace_closes + self.flags_raised + self.flags_seen}
        return sorted(ids | set(self.flags_cleared))


def _review_pages(engine: Engine, programme: CompiledProgramme, report: ReviewReport, clock: Clock,
                  progress: Callable[[int], None] | None, renew: Callable[[], None] | None = None) -> None:
    with read_snapshot(engine) as conn:
        client_ids = reviews.all_client_ids(conn)
    for start in range(0, len(client_ids), PAGE):
        ids = client_ids[start:start + PAGE]

        def review_page(ids: list[str] = ids) -> tuple[_Page, list[TierChange], list[tuple[TierChange, str]]]:
            page = _decide_page(engine, programme, report, ids)
            if report.dry_run:
                return page, page.changes, []
            if renew is not None:
                renew()  # before writing: a holder that lost its lease writes nothing more
            return page, *_write_page(engine, programme, report, page, clock())

        # A retry after a conflict decides the page again, from what the other writer left.
        page, applied, skipped = review_page() if report.dry_run else with_retry(review_page)
        _account_for(report, programme, page, applied, skipped)
        if progress:
            progress(len(ids))


def _decide_page(engine: Engine, programme: CompiledProgramme, report: ReviewReport, ids: list[str]) -> _Page:
    """Read one page of clients in a snapshot and decide each (nothing is written here)."""
    as_of, window = report.as_of, programme.model.review.window_months
    window_start = months_before(as_of, window)
    with read_snapshot(engine) as conn:
        metrics = client_metrics(conn, as_of, window_start, window, programme.currency, ids)
        current = client_store.tiers_as_of(conn, as_of, ids)
        latest = client_store.last_activity(conn, ids)
        pins = standing.pins_in_force(conn, as_of, ids)
        graces = standing.open_graces(conn, ids)
        flags = standing.open_flags(conn, ids)
        tenure = standing.tenure_starts(conn, ids, as_of)
        page = _Page()
        for client_id in ids:
            in_force = current.get(client_id)
            if in_force is None or in_force.tier is None:
                continue  # not a client yet at that moment
            values = metrics.get(client_id, dict.fromkeys(METRICS))
            placement = place(programme.model.tiers, values)
            tier_after = _decide_client(programme, report, page, client_id, in_force, placement, latest.get(client_id),
                                        Standing(in_force.tier, in_force.since, tenure[client_id],
                                                 graces.get(client_id), pins.get(client_id)))
            _churn(programme, report, page, client_id, tier_after, values, flags.get(client_id))
        changed = [change.client_id for change in page.changes + page.already_moved]
        page.volumes = volume_by_product(conn, changed, window_start, as_of)
    return page


def _decide_client(programme: CompiledProgramme, report: ReviewReport, page: _Page, client_id: str,
                   in_force: TierInForce, placement: Placement, latest_event: datetime | None,
                   client: Standing) -> str:
    """Decide one client; returns its tier after the review."""
    if report.review_id is not None and in_force.review_id == report.review_id:
        page.already_moved.append(TierChange(
            client_id, in_force.previous_tier, in_force.tier,  # type: ignore[arg-type]
            UPGRADE if programme.tier_ids.index(in_force.tier) > programme.tier_ids.index(in_force.previous_tier)
            else DOWNGRADE, [], in_force.since, "written before the review was resumed"))  # type: ignore[arg-type]
        return in_force.tier
    decision = decide(client, placement.tier, programme.tier_ids, programme.model.review.downgrade, report.as_of)
    skip = _skip_reason(in_force, report.as_of, report.review_id) if decision.tier != in_force.tier else None
    if skip:
        page.skipped.append({"client_id": client_id, "reason": skip})
        page.stayed.append(in_force.tier)
        return in_force.tier  # its churn signals are still read: the flag does not depend on the move
    if decision.close_grace:
        page.grace_closes.append({"client_id": client_id, "ended_at": report.as_of, "ended_by": report.review_id,
                                  "outcome": decision.close_grace})
    if decision.open_grace is not None:
        page.grace_opens.append({"client_id": client_id, "tier": decision.tier, "started_at": report.as_of,
                                 "until": decision.open_grace, "review_id": report.review_id})
    if decision.action == PINNED:
        page.pins.append({"client_id": client_id, "tier": decision.tier, "qualifies_for": placement.tier,
                            "until": decision.until.isoformat(), "reason": client.pin.reason,  # type: ignore[union-attr]
                            "author": client.pin.author})  # type: ignore[union-attr]
    elif decision.action == HOLD:
        page.held.append({"client_id": client_id, "tier": decision.tier, "qualifies_for": placement.tier,
                            "hold": decision.hold, "detail": decision.policy,
                            "until": decision.until.isoformat() if decision.until else None})
    if decision.tier == in_force.tier:
        page.stayed.append(in_force.tier)
    else:  # counted once it is written
        effective = effective_moment(report.as_of, latest_event, in_force.since)
        page.changes.append(_change(client_id, in_force.tier, decision, placement, programme.tier_ids, effective))
    return decision.tier


def _churn(programme: CompiledProgramme, report: ReviewReport, page: _Page, client_id: str, tier: str,
           values: dict, open_flag: dict | None) -> None:
    signals = fired_signals(programme.model.churn, values, tier, programme.tier_ids)
    if not signals:
        if open_flag is not None:
            page.flags_cleared.append(client_id)
            page.churn_cleared.append({"client_id": client_id, "tier": tier,
                                         "raised_at": open_flag["raised_at"].isoformat()})
        return
    volume = values.get("loan_volume") or Decimal(0)
    value = int(volume.scaleb(minor_unit_exponent(programme.currency)))
    page.churn_flagged.append({"client_id": client_id, "tier": tier, "loan_volume": str(volume),
                                 "new": open_flag is None, "signals": signals})
    row = {"client_id": client_id, "tier": tier, "signals": json.dumps(signals), "value": value}
    if open_flag is None:
        page.flags_raised.append({**row, "raised_at": report.as_of, "raised_by": report.review_id,
                                  "last_seen_at": report.as_of, "last_review_id": report.review_id})
    else:
        page.flags_seen.append({**row, "seen_at": report.as_of, "review_id": report.review_id})


def _skip_reason(in_force: TierInForce, as_of: datetime, review_id: str | None) -> str | None:
    if review_id is not None and in_force.review_id == review_id:
        return f"already moved by this review ({review_id})"
    if in_force.decided_later:
        return "a later tier decision exists"
    if in_force.review_id is not None and in_force.since == as_of:
        return f"already decided at this moment by {in_force.review_id}; review at a later moment"
    return None


def _change(client_id: str, tier: str, decision: Decision, placement: Placement, tiers: list[str],
            effective: datetime) -> TierChange:
    # The old tier's verdict says why the client left it; the new tier's why it arrived; for an
    # upgrade the next tier up says why it did not go higher.
    order = {name: rank for rank, name in enumerate(tiers)}
    target = decision.tier
    above = [name for name, rank in order.items() if rank == order[target] + 1]
    reasons = placement.reasons(tier, target, *above) if tier in order else placement.reasons(target, *above)
    direction = UPGRADE if order.get(target, 0) > order.get(tier, 0) else DOWNGRADE
    return TierChange(client_id, tier, target, direction, reasons, effective, decision.policy or "review")


# --- writing and counting ------------------------------------------------------------------------------

def _write_page(engine: Engine, programme: CompiledProgramme, report: ReviewReport, page: _Page,
                now: datetime) -> tuple[list[TierChange], list[tuple[TierChange, str]]]:
    """One transaction for a page: re-check each tier change under the clients' locks, then write the
    tier rows, revocations and grants, grace periods and churn flags. Returns what was applied and
    what was skipped, with why."""
    applied: list[TierChange] = []
    skipped: list[tuple[TierChange, str]] = []
    with write_transaction(engine) as conn:
        ids = page.client_ids
        client_store.lock_clients(conn, ids)
        moved = [change.client_id for change in page.changes]
        in_force = client_store.tiers_as_of(conn, report.as_of, moved)
        latest = client_store.last_activity(conn, moved)
        held = ledger.active_entitlements_by_rule_prefix(conn, moved, TIER_RULE_PREFIX)
        entries, tier_rows = [], []
        for change in page.changes:
            now_in_force = in_force[change.client_id]
            reason = _skip_reason(now_in_force, report.as_of, report.review_id)
            if reason is None and now_in_force.tier != change.from_tier:
                reason = f"moved to {now_in_force.tier} meanwhile"
            if reason:
                skipped.append((change, reason))
                continue
            effective = effective_moment(report.as_of, latest.get(change.client_id), now_in_force.since)
            change = replace(change, effective_from=effective)
            applied.append(change)
            tier_row, move_entries = move_rows(programme, TierMove(
                change.client_id, change.from_tier, change.to_tier, effective,
                f"{change.direction} by review ({change.policy})", change.reasons, report.review_id),
                held[change.client_id], now)
            tier_rows.append(tier_row)
            entries.extend(move_entries)
        client_store.insert_tier_assignments(conn, tier_rows)
        ledger.append(conn, entries)
        not_moved = {change.client_id for change, _ in skipped}
        standing.close_graces(conn, [row for row in page.grace_closes if row["client_id"] not in not_moved])
        standing.open_grace_rows(conn, [row for row in page.grace_opens if row["client_id"] not in not_moved])
        standing.raise_flags(conn, page.flags_raised)
        standing.refresh_flags(conn, page.flags_seen)
        standing.clear_flags(conn, page.flags_cleared, report.as_of, report.review_id)  # type: ignore[arg-type]
    return applied, skipped


def _account_for(report: ReviewReport, programme: CompiledProgramme, page: _Page, applied: list[TierChange],
                 skipped: list[tuple[TierChange, str]]) -> None:
    """Add a written page to the report: counts, moves with the change in standing discounts, and lists."""
    for tier in page.stayed:
        _count(report, tier, tier)
    for change, reason in skipped:  # not moved after all: counted where it stays
        report.skipped.append({"client_id": change.client_id, "reason": reason})
        _count(report, change.from_tier, change.from_tier)
    for change in page.already_moved + applied:
        _count(report, change.from_tier, change.to_tier)
        report.changes.append(change)
        _discount(report, programme, change, page.volumes.get(change.client_id, {}))
    report.skipped.extend(page.skipped)
    report.held.extend(page.held)
    report.pins.extend(page.pins)
    report.churn_flagged.extend(page.churn_flagged)
    report.churn_cleared.extend(page.churn_cleared)


def _count(report: ReviewReport, before: str, after: str) -> None:
    report.clients += 1
    report.tiers_before[before] += 1
    report.tiers_after[after] += 1
    row = report.migration.setdefault(before, {})
    row[after] = row.get(after, 0) + 1


def _discount(report: ReviewReport, programme: CompiledProgramme, change: TierChange, volumes: dict[str, int]) -> None:
    """The yearly interest the move gives up (positive) or takes back, at the window's drawdowns per product."""
    before = programme.tier(change.from_tier).benefits.rate_discount_bps
    after = programme.tier(change.to_tier).benefits.rate_discount_bps
    scale = Decimal(1).scaleb(-minor_unit_exponent(programme.currency))
    amount = sum((Decimal(volume) * scale * (after.get(product, 0) - before.get(product, 0)) / 10_000
                  for product, volume in volumes.items()), Decimal(0))
    report.discount_change += amount
    report.discount_clients.append({"client_id": change.client_id, "from": change.from_tier, "to": change.to_tier,
                                    "loan_volume": str(Decimal(sum(volumes.values())) * scale),
                                    "change_per_year": str(report._money(amount))})
