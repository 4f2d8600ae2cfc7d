"""The tier review: measure every client over the window, decide under the programme's review policy
(rewards/tier_policy.py), move clients through the ledger, raise and clear churn flags, expire points,
and report.

Clients are reviewed a page at a time (memory stays bounded whatever the portfolio's size): each
page is read in one snapshot, decided, then written in one transaction that re-checks each tier
change under the clients' locks, expires the page's due points, and records the page's share of the
report with the page. A move takes effect at the review moment, or, for a client whose later activity
was already applied, just after that activity (service/tier_moves.py), so no applied event is ever
left evaluated under a tier the client did not have then.

One review runs at a time: a lease in the database names it. Any number of processes may share it
(`share`: `loyalty review --id R` started on several machines): each claims pages through the
database (storage/review_pages.py) until none is left, a page whose process died is taken over, and
each assembles the same report from what every page recorded. Without `share` (the scheduler's
replicas) a review another process is running is refused. A review interrupted half-way is finished
by running it again under the same id: the pages it wrote are kept, the others are done now.
`dry_run` decides and writes nothing.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from engine.churn import fired_signals
from engine.events import minor_unit_exponent
from engine.metrics import METRICS, Placement, place
from engine.programme import CompiledProgramme, ProgrammeSet
from rewards.caps import months_before
from rewards.kinds import Reason
from rewards.lots import Lot, earned_no_later_than
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
from service.expiry import ExpiryReport, expire_due, expire_points
from service.retry import with_retry
from service.tier_moves import TierMove, effective_moment, move_rows
from storage import clients as client_store
from storage import leases, ledger, review_pages, reviews, standing
from storage.clients import TierInForce
from storage.db import read_snapshot, write_transaction
from storage.metrics import page_metrics, volume_by_product
from storage.review_pages import Page

PAGE = 5000  # clients per page: fewer, larger pages read the metrics faster (measured in bench/review.py)
LEASE = "tier-review"  # held in the name of the review that runs
LEASE_TTL = timedelta(minutes=10)  # renewed at every page claimed; a review silent this long is presumed dead
CLAIM_TTL = timedelta(minutes=2)  # a page claimed longer ago and not written is taken over by another process
POLL_SECONDS = 0.2  # how often a process with no page left looks at the pages others are writing
GC_THRESHOLD = 50_000  # allocations between collections of the youngest generation while a review runs
_RUNNING: set[str] = set()  # page claimants of this process whose review is running
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

    @classmethod
    def from_dict(cls, data: dict) -> TierChange:
        """Back from the JSON form."""
        return cls(data["client_id"], data["from"], data["to"], data["direction"], data["reasons"],
                   datetime.fromisoformat(data["effective_from"]), data["policy"])


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
               review_id: str | None = None, share: bool = False) -> ReviewReport:
    """Review every client as of `as_of` (default: now) under the review policy; write the outcome unless `dry_run`.

    `review_id` names the review (a scheduled one is named by its moment); an unfinished review of
    that id is resumed at the moment it was started with (another `as_of` is refused). With `share`,
    a review of that id that other processes are running is joined: this process writes pages of it
    too, and reports the whole review. ConflictError if another review is running (or this one,
    without `share`) or this one already finished; ReviewInterruptedError if the database stops
    answering half-way.
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
    with telemetry.review_run(dry_run), _seldom_collected():
        if dry_run:
            _dry_run(engine, programme, report, progress)
            report.points_expired = expire_points(engine, programmes, as_of, True, clock).as_dict()
            return report
        try:
            return _run(engine, programme, report, clock, progress, share)
        except _DATABASE_GONE as exc:  # the database went away or stopped answering: nothing half-written
            if isinstance(exc, DBAPIError) and not isinstance(exc, (OperationalError, InterfaceError)) \
                    and not exc.connection_invalidated:
                raise  # a statement the database refused: a fault of ours, not an outage
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise ReviewInterruptedError(
                f"the database stopped answering during review {report.review_id} ({reason}); what it wrote is "
                f"kept: once the database is back, finish it with `loyalty review --id {report.review_id}`",
                report.review_id) from exc


@contextmanager
def _seldom_collected() -> Iterator[None]:
    """While a review runs, the cyclic garbage collector runs seldom: the review allocates millions of
    short-lived objects (result rows, decisions) beside its growing report, and at the default threshold
    the collector took a quarter of its CPU (measured, 100,000 clients). Process-wide, so it is left
    alone if already raised (another review runs) and restored only if still ours."""
    before = gc.get_threshold()
    if before[0] >= GC_THRESHOLD:
        yield
        return
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        if gc.get_threshold()[0] == GC_THRESHOLD:
            gc.set_threshold(*before)


def _recorded(engine: Engine, review_id: str) -> reviews.ReviewRun | None:
    with read_snapshot(engine) as conn:
        return reviews.find(conn, review_id)


def _new_review_id(as_of: datetime) -> str:
    return f"review-{as_of:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _dry_run(engine: Engine, programme: CompiledProgramme, report: ReviewReport,
             progress: Callable[[int], None] | None) -> None:
    """Decide every page as a review would, and report what it would write."""
    with read_snapshot(engine) as conn:
        pages = review_pages.bounds(reviews.all_client_ids(conn), PAGE)
    for page in pages:
        decided = _decide_page(engine, programme, report, page)
        _account_for(report, _outcome(programme, report, decided, decided.changes, [], []))
        if progress:
            progress(len(decided.ids))


# --- running and sharing ---------------------------------------------------------------------------------

def _run(engine: Engine, programme: CompiledProgramme, report: ReviewReport, clock: Clock,
         progress: Callable[[int], None] | None, share: bool) -> ReviewReport:
    holder = f"{socket.gethostname()[:48]}:{os.getpid()}:{uuid.uuid4().hex[:8]}:{_place()}"
    _take_lease(engine, report.review_id, clock())
    _RUNNING.add(holder)
    try:
        with_retry(lambda: _start(engine, programme, report, clock()))  # two processes may record it at once
        written = _write_pages(engine, programme, report, holder, clock, progress, share)
        with read_snapshot(engine) as conn:
            outcomes = _recorded_outcomes(conn, report.review_id, written)
        for outcome in outcomes:
            _account_for(report, outcome)
        report.points_expired = _expired(report.as_of, outcomes)
        if not _finish(engine, report, clock()) and not share:  # it was running elsewhere after all
            raise ConflictError(f"review {report.review_id} was finished by another process", "review-finished")
        leases.release(engine, LEASE, report.review_id)
    except BaseException:
        _give_up(engine, report.review_id, holder, clock())
        raise
    finally:
        _RUNNING.discard(holder)
    return report


def _take_lease(engine: Engine, review_id: str, now: datetime) -> None:
    """Take the review lease for `review_id`, or share it if that review is the one running; ConflictError
    if another review runs."""
    if leases.acquire(engine, LEASE, review_id, LEASE_TTL, now):
        return
    lease = leases.current(engine, LEASE)
    if lease is not None and _review_abandoned(engine, lease[0]):
        leases.release(engine, LEASE, lease[0])  # no process can renew it: no need to wait for it to lapse
        if leases.acquire(engine, LEASE, review_id, LEASE_TTL, now):
            return
        lease = leases.current(engine, LEASE)
    running = f" ({lease[0]}, lease until {lease[1].isoformat()})" if lease else ""
    raise ConflictError(f"another tier review is running{running}; run it again once that one is done",
                        "review-running")


def _review_abandoned(engine: Engine, review_id: str) -> bool:
    """Whether every process that claimed pages of the review is known to be gone (none claimed any:
    not known, the lease lapses by itself)."""
    with read_snapshot(engine) as conn:
        holders = review_pages.claimants(conn, review_id)
    return bool(holders) and all(_abandoned(holder) for holder in holders)


def _abandoned(holder: str) -> bool:
    """Whether a page claimant ("host:pid:nonce:place") is gone: a process of this kernel and pid namespace
    that ended, or this process with no review of it running any more (the database went away before it
    could give its claims up). Claimants elsewhere (another machine, another container) are left to lapse."""
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


def _give_up(engine: Engine, review_id: str, holder: str, now: datetime) -> None:
    """On the way out after an error: free this process's claims at once, and the lease unless another
    live process is writing a page of the review (it finishes the review, or gives up in turn)."""
    try:
        with write_transaction(engine) as conn:
            review_pages.release(conn, review_id, holder, now)
            others = review_pages.claimants(conn, review_id, unfinished_only=True, live_at=now) - {holder}
        if all(_abandoned(other) for other in others):
            leases.release(engine, LEASE, review_id)
    except DBAPIError:
        pass  # the database is gone: claims and lease lapse by themselves, and the first error is the news


def _start(engine: Engine, programme: CompiledProgramme, report: ReviewReport, now: datetime) -> None:
    """Record the review and its pages, or find the unfinished run of it to resume or join."""
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
        if not review_pages.recorded(conn, report.review_id):
            review_pages.create(conn, report.review_id,
                                review_pages.bounds(reviews.all_client_ids(conn), PAGE))
        report.resumed = existing is not None
        report.unfinished_reviews = reviews.unfinished(conn, other_than=report.review_id)


def _write_pages(engine: Engine, programme: CompiledProgramme, report: ReviewReport, holder: str, clock: Clock,
                 progress: Callable[[int], None] | None, share: bool) -> dict[int, dict]:
    """Claim, decide and write pages until none is left, then wait for those other processes are writing
    (taking over any whose process is gone or whose claim ran out); returns the outcome of each page
    written here, by page number."""
    written: dict[int, dict] = {}
    while True:
        page = _claim(engine, report.review_id, holder, clock(), share)
        if page is None:
            with read_snapshot(engine) as conn:
                if not review_pages.unfinished(conn, report.review_id):
                    return written
            time.sleep(POLL_SECONDS)
            continue

        def review_page(page: Page = page) -> tuple[int, dict] | None:
            decided = _decide_page(engine, programme, report, page)
            outcome = _write_page(engine, programme, report, page, decided, holder, clock())
            return None if outcome is None else (len(decided.ids), outcome)

        # A retry after a conflict decides the page again, from what the other writer left.
        done = with_retry(review_page)
        if done is not None:  # else another process took the page over, and writes it
            written[page.number] = done[1]
            if progress:
                progress(done[0])


def _claim(engine: Engine, review_id: str, holder: str, now: datetime, share: bool) -> Page | None:
    with write_transaction(engine) as conn:
        gone = {other for other in review_pages.claimants(conn, review_id, unfinished_only=True) if _abandoned(other)}
        page = review_pages.claim(conn, review_id, holder, now, now + CLAIM_TTL, gone)
        # Only a page to write needs the lease (once the review is finished, it is gone). Its row's lock
        # makes a review's claims one at a time: every other process's claim is visible after it.
        if page is not None and not leases.take(conn, LEASE, review_id, LEASE_TTL, now):
            raise ConflictError(f"review {review_id} lost its lease to another review; once that one is done, "
                                f"finish this one with `loyalty review --id {review_id}`", "review-lease-lost")
        if not share and not all(_abandoned(other) for other in
                                 review_pages.claimants(conn, review_id, live_at=now) - {holder}):
            raise ConflictError(f"review {review_id} is running in another process", "review-running")
    return page


def _finish(engine: Engine, report: ReviewReport, now: datetime) -> bool:
    """Record the review finished with its counts, once: False if another process sharing it did first."""
    summary = report.as_dict()
    with write_transaction(engine) as conn:
        return reviews.record_finish(conn, report.review_id, now, report.clients, summary["upgrades"],
                                     summary["downgrades"], report.points_expired["points"], len(report.churn_flagged))


# --- deciding ------------------------------------------------------------------------------------------

@dataclass
class _Page:
    """One page's decisions: what to write and what to report."""

    ids: list[str]
    changes: list[TierChange] = field(default_factory=list)
    grace_opens: list[dict] = field(default_factory=list)
    grace_closes: list[dict] = field(default_factory=list)
    flags_raised: list[dict] = field(default_factory=list)
    flags_seen: list[dict] = field(default_factory=list)
    flags_cleared: list[str] = field(default_factory=list)
    expiring: list[str] = field(default_factory=list)  # clients with points due to expire
    volumes: dict[str, dict[str, int]] = field(default_factory=dict)
    # What the report gets once the page is written (a retried page is decided afresh).
    stayed: list[str] = field(default_factory=list)  # the tier of each client reviewed and not moved
    already_moved: list[TierChange] = field(default_factory=list)  # by this review before release 0003's pages
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
        return sorted(ids | set(self.flags_cleared) | set(self.expiring))


def _decide_page(engine: Engine, programme: CompiledProgramme, report: ReviewReport, page: Page) -> _Page:
    """Read one page of clients in a snapshot and decide each (nothing is written here)."""
    as_of, window = report.as_of, programme.model.review.window_months
    window_start = months_before(as_of, window)
    rank = {tier: position for position, tier in enumerate(programme.tier_ids)}
    with read_snapshot(engine) as conn:
        ids = review_pages.clients(conn, page)
        metrics = page_metrics(conn, as_of, window_start, window, programme.currency, page)
        current = {client_id: in_force for client_id, in_force in reviews.tiers_in_force(conn, as_of, page).items()
                   if in_force.tier is not None}  # the others were not clients yet at that moment
        pins = standing.pins_in_force(conn, as_of, page)
        graces = standing.open_graces(conn, page)
        flags = standing.open_flags(conn, page)
        values = {client_id: metrics.get(client_id, dict.fromkeys(METRICS)) for client_id in ids if client_id in current}
        placements = {client_id: place(programme.model.tiers, values[client_id]) for client_id in values}
        # Tenure matters only to a downgrade: read for the clients placed below their tier.
        tenure = standing.tenure_starts(conn, [client_id for client_id, placement in placements.items()
                                               if rank[placement.tier] < rank[current[client_id].tier]], as_of)
        decided = _Page(ids)
        for client_id, placement in placements.items():
            in_force = current[client_id]
            tier_after = _decide_client(programme, report, decided, client_id, in_force, placement,
                                        Standing(in_force.tier, in_force.since, tenure.get(client_id),  # type: ignore[arg-type]
                                                 graces.get(client_id), pins.get(client_id)))
            _churn(programme, report, decided, client_id, tier_after, values[client_id], flags.get(client_id))
        if report.dry_run:  # a review finds when each move takes effect under the clients' locks, when it writes
            latest = reviews.activity_from(conn, [change.client_id for change in decided.changes], as_of)
            decided.changes = [replace(change, effective_from=effective_moment(
                as_of, latest.get(change.client_id), current[change.client_id].since)) for change in decided.changes]
        elif programme.model.points.expire_after_months is not None:
            # The page's own clients, by id range: every page read the whole table (every process, again).
            due = reviews.clients_with_lots_by(
                conn, earned_no_later_than(as_of, programme.model.points.expire_after_months), page)
            decided.expiring = [client_id for client_id in ids if client_id in due]
        changed = [change.client_id for change in decided.changes + decided.already_moved]
        decided.volumes = volume_by_product(conn, changed, window_start, as_of)
    return decided


def _decide_client(programme: CompiledProgramme, report: ReviewReport, page: _Page, client_id: str,
                   in_force: TierInForce, placement: Placement, client: Standing) -> str:
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
    else:  # counted once it is written; when it takes effect is found then (a dry run finds it at once)
        page.changes.append(_change(client_id, in_force.tier, decision, placement, programme.tier_ids, report.as_of))
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


# --- writing -------------------------------------------------------------------------------------------

def _write_page(engine: Engine, programme: CompiledProgramme, report: ReviewReport, page: Page, decided: _Page,
                holder: str, now: datetime) -> dict | None:
    """One transaction for a page: re-check each tier change under the clients' locks, then write the
    tier rows, revocations and grants, grace periods, churn flags and expiry, and record the page
    written with its outcome. Returns the outcome; None if another process took the page over (this
    one then writes nothing)."""
    with write_transaction(engine) as conn:
        if not review_pages.hold(conn, report.review_id, page, holder):
            return None
        reviews.insert_in_small_batches(conn)
        client_store.lock_clients(conn, decided.client_ids)
        applied, skipped = _move(conn, programme, report, decided.changes, now)
        not_moved = {change.client_id for change, _ in skipped}
        standing.close_graces(conn, [row for row in decided.grace_closes if row["client_id"] not in not_moved])
        standing.open_grace_rows(conn, [row for row in decided.grace_opens if row["client_id"] not in not_moved])
        standing.raise_flags(conn, decided.flags_raised)
        standing.refresh_flags(conn, decided.flags_seen)
        standing.clear_flags(conn, decided.flags_cleared, report.as_of, report.review_id)
        expired = expire_due(conn, programme, decided.expiring, report.as_of, now) if decided.expiring else []
        outcome = _outcome(programme, report, decided, applied, skipped, expired)
        review_pages.finish(conn, report.review_id, page, now, _stored(outcome))
    telemetry.POINTS_EXPIRED.inc(sum(lot.remaining for lot in expired))
    return outcome


def _move(conn: Connection, programme: CompiledProgramme, report: ReviewReport, changes: list[TierChange],
          now: datetime) -> tuple[list[TierChange], list[tuple[TierChange, str]]]:
    """Re-check each change under the clients' locks and write those that still hold (tier rows,
    revocations, grants); returns what was applied, and what was skipped with why."""
    applied: list[TierChange] = []
    skipped: list[tuple[TierChange, str]] = []
    moved = [change.client_id for change in changes]
    in_force = client_store.tiers_as_of(conn, report.as_of, moved)
    latest = reviews.activity_from(conn, moved, report.as_of)  # only activity from as_of on can move the moment
    held = ledger.active_entitlements_by_rule_prefix(conn, moved, TIER_RULE_PREFIX)
    revocations, grants, tier_rows = [], [], []
    for change in changes:
        now_in_force = in_force[change.client_id]
        reason = _skip_reason(now_in_force, report.as_of, report.review_id)
        if reason is None and now_in_force.tier != change.from_tier:
            reason = f"moved to {now_in_force.tier} meanwhile"
        if reason:
            skipped.append((change, reason))
            continue
        change = replace(change, effective_from=effective_moment(report.as_of, latest.get(change.client_id),
                                                                 now_in_force.since))
        applied.append(change)
        tier_row, entries = move_rows(programme, TierMove(
            change.client_id, change.from_tier, change.to_tier, change.effective_from,
            f"{change.direction} by review ({change.policy})", change.reasons, report.review_id),
            held[change.client_id], now)
        tier_rows.append(tier_row)
        # A move's revocations come before its grants; all the page's revocations, then all its grants,
        # keep that order per client and let the ledger insert each kind in one statement.
        revocations.extend(entry for entry in entries if entry["reason"] != Reason.GRANT)
        grants.extend(entry for entry in entries if entry["reason"] == Reason.GRANT)
    client_store.insert_tier_assignments(conn, tier_rows)
    ledger.append(conn, revocations + grants)
    return applied, skipped


# --- reporting -----------------------------------------------------------------------------------------
# Each page's share of the report (its outcome) is plain JSON: a review's pages record it with their
# writes, so the report is assembled the same way whichever process wrote which page.

def _outcome(programme: CompiledProgramme, report: ReviewReport, decided: _Page, applied: list[TierChange],
             skipped: list[tuple[TierChange, str]], expired: list[Lot]) -> dict:
    """A page's share of the report: counts, moves with the change in standing discounts, and lists."""
    migration: dict[str, dict[str, int]] = {}
    moved = decided.already_moved + applied
    pairs = [(tier, tier) for tier in decided.stayed] + [(change.from_tier,) * 2 for change, _ in skipped]
    for before, after in pairs + [(change.from_tier, change.to_tier) for change in moved]:
        row = migration.setdefault(before, {})
        row[after] = row.get(after, 0) + 1
    discounts = [_discount(programme, report, change, decided.volumes.get(change.client_id, {})) for change in moved]
    return {"migration": migration, "changes": [change.as_dict() for change in moved],
            "skipped": [{"client_id": change.client_id, "reason": reason} for change, reason in skipped]
            + decided.skipped,
            "held": decided.held, "pins": decided.pins, "churn_flagged": decided.churn_flagged,
            "churn_cleared": decided.churn_cleared,
            "discount_change": str(sum((amount for amount, _ in discounts), Decimal(0))),
            "discount_clients": [entry for _, entry in discounts],
            "expired": {"points": sum(lot.remaining for lot in expired), "lots": len(expired),
                        "clients": sorted({lot.client_id for lot in expired})}}


def _discount(programme: CompiledProgramme, report: ReviewReport, change: TierChange,
              volumes: dict[str, int]) -> tuple[Decimal, dict]:
    """The yearly interest a move gives up (positive) or takes back, at the window's drawdowns per product."""
    before = programme.tier(change.from_tier).benefits.rate_discount_bps
    after = programme.tier(change.to_tier).benefits.rate_discount_bps
    scale = Decimal(1).scaleb(-minor_unit_exponent(programme.currency))
    amount = sum((Decimal(volume) * scale * (after.get(product, 0) - before.get(product, 0)) / 10_000
                  for product, volume in volumes.items()), Decimal(0))
    return amount, {"client_id": change.client_id, "from": change.from_tier, "to": change.to_tier,
                    "loan_volume": str(Decimal(sum(volumes.values())) * scale),
                    "change_per_year": str(report._money(amount))}


def _stored(outcome: dict) -> str:
    """An outcome as its page keeps it: the moves' reasons are already in their tier rows."""
    return json.dumps({**outcome, "changes": [{**change, "reasons": None} for change in outcome["changes"]]})


def _recorded_outcomes(conn: Connection, review_id: str, written: dict[int, dict]) -> list[dict]:
    """The outcomes of every page of a review, in page order: those `written` by this process, and those
    other processes (or an earlier run) recorded, the moves' reasons read back from their tier rows."""
    recorded = {number: json.loads(text) for number, text in review_pages.outcomes(conn, review_id, written).items()}
    reasons = reviews.move_reasons(conn, review_id) if recorded else {}
    for outcome in recorded.values():
        for change in outcome["changes"]:
            change["reasons"] = reasons.get(change["client_id"], [])
    outcomes = {**recorded, **written}
    return [outcomes[number] for number in sorted(outcomes)]


def _account_for(report: ReviewReport, outcome: dict) -> None:
    """Add a page's outcome to the report."""
    for before, row in outcome["migration"].items():
        for after, count in row.items():
            report.clients += count
            report.tiers_before[before] += count
            report.tiers_after[after] += count
            migrated = report.migration.setdefault(before, {})
            migrated[after] = migrated.get(after, 0) + count
    report.changes.extend(TierChange.from_dict(change) for change in outcome["changes"])
    for part in ("skipped", "held", "pins", "churn_flagged", "churn_cleared", "discount_clients"):
        getattr(report, part).extend(outcome[part])
    report.discount_change += Decimal(outcome["discount_change"])


def _expired(as_of: datetime, outcomes: list[dict]) -> dict:
    """What the pages expired, as expiry reports it."""
    total = ExpiryReport(as_of, False)
    for outcome in outcomes:
        total.points += outcome["expired"]["points"]
        total.lots += outcome["expired"]["lots"]
        total.clients.update(outcome["expired"]["clients"])
    return total.as_dict()
