"""Reverse an event: compensating entries for everything it produced, each pointing to what it cancels."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from sqlalchemy import Engine, insert, select

from rewards.kinds import Reason, Status
from service.answer import Answer
from service.clock import Clock, utc_now
from service.errors import NotFoundError
from service.retry import with_retry
from storage import clients as client_store
from storage import ledger
from storage.db import write_transaction
from storage.ledger import Provenance
from storage import lots, metric_totals
from storage.lots import WRITE_OFF
from storage.models import Entitlement, EventReversal, ProcessedEvent


class SkippedEntitlement(Answer):
    """An entitlement a reversal could not take back (already consumed or revoked)."""

    entitlement_id: int
    status: str


class ReversalAnswer(Answer):
    """The compensating entries written (none if the event was already reversed)."""

    event_id: str
    status: Literal["reversed", "already_reversed"]
    entries: list[int]
    skipped: list[SkippedEntitlement]
    points_written_off: int = Field(description="points the client had already spent or lost to expiry: "
                                                "written off so the balance stops at zero")


def reverse_event(engine: Engine, event_id: str, reason: str = "", clock: Clock = utc_now) -> ReversalAnswer:
    """Reverse `event_id` once; a second call reports it was already reversed and writes nothing."""
    return with_retry(lambda: _reverse(engine, event_id, reason, clock))


def _reverse(engine: Engine, event_id: str, reason: str, clock: Clock) -> ReversalAnswer:
    processed, reversals = ProcessedEvent.__table__, EventReversal.__table__
    entitlements = Entitlement.__table__
    with write_transaction(engine) as conn:
        event = conn.execute(select(processed.c.client_id).where(processed.c.event_id == event_id)).first()
        if event is None:
            raise NotFoundError(f"no processed event {event_id!r}")
        client_store.lock_clients(conn, [event.client_id])  # serialise with ingest for this client
        if conn.execute(select(reversals.c.event_id).where(reversals.c.event_id == event_id)).first():
            return ReversalAnswer(event_id=event_id, status="already_reversed", entries=[], skipped=[],
                                  points_written_off=0)
        now = clock()
        conn.execute(insert(reversals).values(event_id=event_id, reversed_at=now, reason=reason))
        metric_totals.rebuild(conn, [event.client_id])  # the event no longer counts in its client's metrics
        originals = [row for row in ledger.event_entries(conn, event_id)
                     if row["reason"] in (Reason.EARN, Reason.GRANT) and row["reverses_entry_id"] is None]
        grant_ids = [row["id"] for row in originals if row["reason"] == Reason.GRANT]
        status = dict(conn.execute(select(entitlements.c.id, entitlements.c.status)
                                   .where(entitlements.c.id.in_(grant_ids))).all()) if grant_ids else {}
        # An entitlement already consumed or revoked cannot be taken back by a reversal: say so instead.
        skipped = [SkippedEntitlement(entitlement_id=row["id"], status=status[row["id"]]) for row in originals
                   if row["reason"] == Reason.GRANT and status.get(row["id"]) != Status.ACTIVE]
        skipped_ids = {item.entitlement_id for item in skipped}
        rows = [ledger.compensating_entry(row, Reason.REVERSE, now, event_id) for row in originals
                if row["id"] not in skipped_ids]
        written_off = lots.shortfall(conn, event.client_id, rows)
        if written_off:
            # Points already expired, or spent with nothing left to take them from: taking them back would
            # leave the client owing points. The reversal still cancels its entries exactly; this
            # credit, recorded beside it, gives back what cannot be taken.
            source = Provenance(rows[0]["programme_id"], rows[0]["programme_version"], event_id)
            rows.append(ledger.points_entry(event.client_id, WRITE_OFF, written_off, Reason.ADJUST, now, source, now,
                                            detail={"written_off": written_off,
                                                    "why": "reversed points were already spent or expired"}))
        ledger.append(conn, rows)
        ids = [row["id"] for row in ledger.event_entries(conn, event_id)
               if row["reason"] in (Reason.REVERSE, Reason.ADJUST)]
        return ReversalAnswer(event_id=event_id, status="reversed", entries=ids, skipped=skipped,
                              points_written_off=written_off)

