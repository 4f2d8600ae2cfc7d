"""Moving a client between tiers: the tier-history row, and the ledger entries that end the old tier's
standing benefits and start the new tier's. Shared by reviews, pins and instant upgrades."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.programme import CompiledProgramme
from rewards.tiers import tier_grants
from storage import ledger
from storage.ledger import Provenance

INSTANT = timedelta(microseconds=1)


@dataclass(frozen=True)
class TierMove:
    """One client's move, as the tier history records it."""

    client_id: str
    from_tier: str
    to_tier: str
    effective_from: datetime
    reason: str  # for people: "upgrade by review (grace ended)", "pinned by ana until 2026-12-31: ..."
    details: list[dict] | None = None  # the checks behind the decision
    review_id: str | None = None


def move_rows(programme: CompiledProgramme, move: TierMove, held: list[dict], now: datetime,
              event_id: str | None = None) -> tuple[dict, list[dict]]:
    """The tier-history row and the ledger entries of `move`; `held` is the client's active standing
    tier entitlements (rows of the entitlement table), all of which end at the move."""
    source = Provenance(programme.id, programme.version, event_id)
    rank = {tier: position for position, tier in enumerate(programme.tier_ids)}  # a tier no longer offered ranks lowest
    direction = "up" if rank.get(move.to_tier, -1) > rank.get(move.from_tier, -1) else "down"
    tier_row = {"client_id": move.client_id, "tier": move.to_tier, "previous_tier": move.from_tier,
                "direction": direction,
                "valid_from": move.effective_from, "reason": move.reason,
                "details": json.dumps(move.details) if move.details is not None else None,
                "review_id": move.review_id, "programme_id": programme.id,
                "programme_version": programme.version, "created_at": now}
    entries = [ledger.revoke_entry(row, source, move.effective_from, now) for row in held]
    entries.extend(ledger.grant_entry(move.client_id, grant, source, now)
                   for grant in tier_grants(programme.tier(move.to_tier), move.effective_from))
    return tier_row, entries


def effective_moment(moment: datetime, *later: datetime | None) -> datetime:
    """`moment`, or just after the latest of `later` (applied activity, the tier row in force) that is
    not before it: history never contradicts an applied event, nor two moves share a moment."""
    for other in later:
        if other is not None and other >= moment:
            moment = other + INSTANT
    return moment
