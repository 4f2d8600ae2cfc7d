"""Points expiry: what is left of each lot expires a configured number of months after it was earned.

An `expire` entry takes the unspent remainder of one lot, at the lot's expiry moment, naming the
event and rule that earned it. Running expiry again at the same or a later moment finds nothing left
to expire in those lots: it is idempotent, and safe to interrupt.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from engine.programme import CompiledProgramme, ProgrammeSet
from rewards.kinds import Reason
from rewards.lots import Lot, earned_no_later_than, expires_at
from service import telemetry
from service.answer import Answer, Moment
from service.clock import Clock, utc_now
from service.errors import InputError
from service.retry import with_retry
from storage import clients as client_store
from storage import ledger, lots
from storage.db import read_snapshot, write_transaction
from storage.ledger import Provenance

CHUNK = 1000


@dataclass
class ExpiryReport:
    """What expired (or, in a dry run, would expire)."""

    as_of: datetime
    dry_run: bool
    points: int = 0
    lots: int = 0
    clients: set[str] = field(default_factory=set)

    def as_dict(self) -> dict:
        """JSON form."""
        return {"as_of": self.as_of.isoformat(), "dry_run": self.dry_run, "points": self.points, "lots": self.lots,
                "clients": len(self.clients)}


def expire_points(engine: Engine, programmes: ProgrammeSet, as_of: datetime, dry_run: bool = False,
                  clock: Clock = utc_now, progress: Callable[[int], None] | None = None) -> ExpiryReport:
    """Expire every lot whose expiry moment is at or before `as_of`; with `dry_run`, only count them."""
    programme = programmes.for_moment(as_of)
    report = ExpiryReport(as_of, dry_run)
    months = programme.model.points.expire_after_months
    if months is None:
        return report
    if as_of > clock():
        raise InputError(f"points cannot expire in the future: {as_of.isoformat()} is later than now")
    latest = earned_no_later_than(as_of, months)
    with read_snapshot(engine) as conn:
        candidates = lots.lot_clients(conn, latest)
    for start in range(0, len(candidates), CHUNK):
        chunk = candidates[start:start + CHUNK]
        if dry_run:
            with read_snapshot(engine) as conn:
                due = _due(lots.open_lots_earned_by(conn, latest, chunk), as_of, months)
        else:
            due = with_retry(lambda c=chunk: _expire_chunk(engine, programme, c, as_of, clock()))
            telemetry.POINTS_EXPIRED.inc(sum(lot.remaining for lot in due))
        for lot in due:
            report.points += lot.remaining
            report.lots += 1
            report.clients.add(lot.client_id)
        if progress:
            progress(len(chunk))
    return report


class ExpiringLot(Answer):
    """What is left of one points lot, and when it expires."""

    client_id: str
    points: int
    earned: int
    earned_at: Moment
    expires_at: Moment
    event_id: str
    rule_id: str


class ExpiringAnswer(Answer):
    """Points expiring within a period: their total, and the lots soonest first (the first `limit` of them)."""

    within: str
    points: int
    lots: list[ExpiringLot]


def expiring(engine: Engine, programmes: ProgrammeSet, now: datetime, within: timedelta,
             client_id: str | None = None) -> list[ExpiringLot]:
    """Lots that will expire after `now` and no later than `now + within`, soonest first."""
    horizon = now + within
    months = programmes.for_moment(horizon).model.points.expire_after_months
    if months is None:
        return []
    with read_snapshot(engine) as conn:
        open_lots = lots.open_lots_earned_by(conn, earned_no_later_than(horizon, months),
                                             None if client_id is None else [client_id])
    soon = [(expires_at(lot.earned_at, months), lot) for lot in open_lots]
    return [ExpiringLot(client_id=lot.client_id, points=lot.remaining, earned=lot.points,
                        earned_at=lot.earned_at.isoformat(), expires_at=moment.isoformat(), event_id=lot.event_id,
                        rule_id=lot.rule_id)
            for moment, lot in sorted(soon, key=lambda pair: (pair[0], pair[1].client_id))
            if now < moment <= horizon]


def expiring_answer(engine: Engine, programmes: ProgrammeSet, now: datetime, within: timedelta, label: str,
                    client_id: str | None = None, limit: int | None = None) -> ExpiringAnswer:
    """The lots expiring within `within` (named `label`, e.g. 30d): the points of all, the first `limit` lots."""
    soon = expiring(engine, programmes, now, within, client_id)
    return ExpiringAnswer(within=label, points=sum(lot.points for lot in soon), lots=soon[:limit])


def _due(open_lots: list[Lot], as_of: datetime, months: int) -> list[Lot]:
    """The lots that have expired by `as_of` (the query's bound admits a few that have not)."""
    return [lot for lot in open_lots if expires_at(lot.earned_at, months) <= as_of]


def _expire_chunk(engine: Engine, programme: CompiledProgramme, client_ids: list[str], as_of: datetime,
                  now: datetime) -> list[Lot]:
    with write_transaction(engine) as conn:
        client_store.lock_clients(conn, client_ids)  # lots are read after the lock: no debit races past us
        return expire_due(conn, programme, client_ids, as_of, now)


def expire_due(conn: Connection, programme: CompiledProgramme, client_ids: list[str], as_of: datetime,
               now: datetime) -> list[Lot]:
    """In the caller's transaction (the clients locked), expire their lots due by `as_of`; returns them."""
    months = programme.model.points.expire_after_months
    if months is None:
        return []
    due = _due(lots.open_lots_earned_by(conn, earned_no_later_than(as_of, months), client_ids), as_of, months)
    ledger.append(conn, [expiry_entry(lot, programme, months, now) for lot in due])
    return due


def expiry_entry(lot: Lot, programme: CompiledProgramme, months: int, now: datetime) -> dict:
    """The entry expiring what is left of `lot`, at its expiry moment."""
    moment = expires_at(lot.earned_at, months)
    return ledger.points_entry(lot.client_id, lot.rule_id, -lot.remaining, Reason.EXPIRE, moment,
                               Provenance(programme.id, programme.version, lot.event_id), now,
                               detail=lots.expiry_detail(lot, moment))
