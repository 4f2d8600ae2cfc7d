"""Standing tier benefits as grants, so the ledger records what each tier gives."""
from __future__ import annotations

from datetime import datetime

from engine.schema import Tier
from rewards.kinds import Grant, Kind, Use


TIER_RULE_PREFIX = "tier:"


def tier_rule_id(tier_id: str) -> str:
    """The rule id that standing benefits of a tier are recorded under."""
    return f"{TIER_RULE_PREFIX}{tier_id}"


def tier_grants(tier: Tier, at: datetime) -> list[Grant]:
    """The standing benefits of `tier`, as grants valid from `at` until revoked."""
    rule_id = tier_rule_id(tier.id)
    benefits = tier.benefits
    grants = [
        Grant(Kind.RATE_DISCOUNT, rule_id, Use.STANDING, at, None, bps=bps, products=(product,))
        for product, bps in sorted(benefits.rate_discount_bps.items()) if bps > 0
    ]
    if benefits.fast_track:
        grants.append(Grant(Kind.FAST_TRACK, rule_id, Use.STANDING, at, None,
                            detail={"lane": benefits.fast_track.lane, "sla_hours": benefits.fast_track.sla_hours}))
    if benefits.relationship_manager:
        grants.append(Grant(Kind.RELATIONSHIP_MANAGER, rule_id, Use.STANDING, at, None))
    if benefits.fee_waiver_pct:
        grants.append(Grant(Kind.FEE_WAIVER, rule_id, Use.STANDING, at, None,
                            detail={"fee_waiver_pct": benefits.fee_waiver_pct}))
    return grants
