"""Manual tier overrides: pin a client to a tier until a date, with a reason and an author.

The client moves to the pinned tier at once (standing benefits through the ledger, like any move),
the pin and the move are recorded, and reviews leave the client there until the pin ends, reporting
that they did. A later pin of the same client replaces the earlier one from its own start.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from engine.errors import did_you_mean
from engine.programme import ProgrammeSet
from rewards.tiers import TIER_RULE_PREFIX
from service.benefits import require_utc
from service.clock import Clock, utc_now
from service.errors import ConflictError, InputError, NotFoundError
from service.retry import with_retry
from service.tier_moves import TierMove, effective_moment, move_rows
from storage import clients as client_store
from storage import ledger, standing
from storage.db import write_transaction


def pin_tier(engine: Engine, programmes: ProgrammeSet, client_id: str, tier: str, until: datetime, reason: str,
             author: str, clock: Clock = utc_now) -> dict:
    """Pin `client_id` to `tier` from now until `until`; returns the pin and whether the client moved."""
    until = require_utc(until)
    if not reason.strip():
        raise InputError("a pin needs a reason (--reason): the review report and the tier history show it")
    if not author.strip():
        raise InputError("a pin needs an author (--author)")
    return with_retry(lambda: _pin(engine, programmes, client_id, tier, until, reason.strip(), author.strip(), clock))


def _pin(engine: Engine, programmes: ProgrammeSet, client_id: str, tier: str, until: datetime, reason: str,
         author: str, clock: Clock) -> dict:
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
        return {"client_id": client_id, "tier": tier, "from_tier": in_force.tier, "moved": moved,
                "valid_from": start.isoformat(), "until": until.isoformat(), "reason": reason, "author": author}
