"""Manual tier overrides: pin a client to a tier until a date, with a reason and an author.

The client moves to the pinned tier at once (standing benefits through the ledger, like any move),
the pin and the move are recorded, and reviews leave the client there until the pin ends, reporting
that they did. A later pin of the same client replaces the earlier one from its own start.

Pins are never edited: ending one early (`unpin_tier`) records a pin of no length from that moment, which
replaces it from then on and is itself never in force; the client keeps its tier until a review moves it.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from engine.errors import did_you_mean
from engine.programme import ProgrammeSet
from rewards.tiers import TIER_RULE_PREFIX
from service.answer import Answer, Moment
from service.benefits import require_utc
from service.clock import Clock, utc_now
from service.errors import ConflictError, InputError, NotFoundError
from service.retry import with_retry
from service.tier_moves import TierMove, effective_moment, move_rows
from storage import clients as client_store
from storage import ledger, standing
from storage.db import write_transaction


class PinSetAnswer(Answer):
    """A pin just set: the tier, from when until when, and whether the client moved to it."""

    client_id: str
    tier: str
    from_tier: str
    moved: bool
    valid_from: Moment
    until: Moment
    reason: str
    author: str


class PinEndedAnswer(Answer):
    """A pin ended early: the pin that ended and when; the client keeps `tier` until a review moves it."""

    client_id: str
    tier: str
    pinned_tier: str
    pinned_until: Moment
    ended_at: Moment
    reason: str
    author: str


def pin_tier(engine: Engine, programmes: ProgrammeSet, client_id: str, tier: str, until: datetime, reason: str,
             author: str, clock: Clock = utc_now) -> PinSetAnswer:
    """Pin `client_id` to `tier` from now until `until`; returns the pin and whether the client moved."""
    until = require_utc(until)
    if not reason.strip():
        raise InputError("a pin needs a reason (--reason): the review report and the tier history show it")
    if not author.strip():
        raise InputError("a pin needs an author (--author)")
    return with_retry(lambda: _pin(engine, programmes, client_id, tier, until, reason.strip(), author.strip(), clock))


def _pin(engine: Engine, programmes: ProgrammeSet, client_id: str, tier: str, until: datetime, reason: str,
         author: str, clock: Clock) -> PinSetAnswer:
    with write_transaction(engine) as conn:
        now = clock()
        programme = programmes.for_moment(now)
        if tier not in programme.tier_ids:
            known = programme.tier_ids
            raise InputError(f"no tier {tier!r} in programme {programme.id} {programme.version}"
                             f"{did_you_mean(tier, known)}; expected one of: {', '.join(known)}")
        if until <= now:
            raise InputError(f"--until {until.isoformat()} is not in the future")
        if not client_store.lock_clients(conn, [client_id]):
            raise NotFoundError(f"no client {client_id!r}: it has no events yet")
        in_force = client_store.tiers_as_of(conn, now, [client_id])[client_id]
        if in_force.decided_later:
            raise ConflictError(f"client {client_id} already has a tier decision later than now; pin it after that",
                                "later-tier-decision")
        latest = client_store.last_activity(conn, [client_id]).get(client_id)
        start = effective_moment(now, latest, in_force.since)
        text = f"pinned by {author} until {until:%Y-%m-%d}: {reason}"
        standing.insert_pin(conn, {"client_id": client_id, "tier": tier, "valid_from": start, "until": until,
                                   "reason": reason, "author": author, "created_at": now})
        moved = in_force.tier != tier
        held = ledger.active_entitlements_by_rule_prefix(conn, [client_id], TIER_RULE_PREFIX)[client_id]
        held = held if moved else []
        tier_row, entries = move_rows(programme, TierMove(client_id, in_force.tier, tier, start, text), held, now)
        # Recorded even when the tier stays: reviews and instant upgrades then see a decision at the pin's
        # start, and never move the client over it from an earlier moment.
        client_store.insert_tier_assignments(conn, [tier_row])
        if moved:
            ledger.append(conn, entries)
        standing.close_graces(conn, [{"client_id": client_id, "ended_at": start, "ended_by": None,
                                      "outcome": "pinned"}])
        return PinSetAnswer(client_id=client_id, tier=tier, from_tier=in_force.tier, moved=moved,
                         valid_from=start.isoformat(), until=until.isoformat(), reason=reason, author=author)


def unpin_tier(engine: Engine, client_id: str, reason: str, author: str, clock: Clock = utc_now) -> PinEndedAnswer:
    """End `client_id`'s pin in force now; NotFoundError if it has none (or is unknown)."""
    if not reason.strip():
        raise InputError("ending a pin needs a reason: the client's pin history shows it")
    if not author.strip():
        raise InputError("ending a pin needs an author")
    return with_retry(lambda: _unpin(engine, client_id, reason.strip(), author.strip(), clock))


def _unpin(engine: Engine, client_id: str, reason: str, author: str, clock: Clock) -> PinEndedAnswer:
    with write_transaction(engine) as conn:
        now = clock()
        if not client_store.lock_clients(conn, [client_id]):
            raise NotFoundError(f"no client {client_id!r}: it has no events yet")
        pin = standing.pins_in_force(conn, now, [client_id]).get(client_id)
        if pin is None:
            raise NotFoundError(f"client {client_id} has no pin in force; `loyalty client {client_id}` shows its pins")
        in_force = client_store.tiers_as_of(conn, now, [client_id])[client_id]
        # Just after applied activity, as a pin starts: history never contradicts an applied event.
        end = effective_moment(now, client_store.last_activity(conn, [client_id]).get(client_id))
        standing.insert_pin(conn, {"client_id": client_id, "tier": pin.tier, "valid_from": end, "until": end,
                                   "reason": f"pin ended by {author}: {reason}", "author": author,
                                   "created_at": now})
        return PinEndedAnswer(client_id=client_id, tier=in_force.tier, pinned_tier=pin.tier,
                           pinned_until=pin.until.isoformat(), ended_at=end.isoformat(), reason=reason,
                           author=author)
