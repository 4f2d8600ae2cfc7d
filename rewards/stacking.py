"""How held entitlements combine into what a loan application gets.

Stacking rule (documented in rules/README.md):
- every standing rate discount that covers the product stacks (adds up);
- at most one single-use discount is applied per loan: the largest, ties broken by the one that
  expires first, then the oldest grant;
- the total is capped at the programme's ceiling for the product;
- fast track: the lane with the shortest SLA; fee waiver: the highest percentage (never more than 100);
  relationship manager: held if any grant is valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rewards.kinds import Kind, Status, Use


@dataclass(frozen=True)
class Entitlement:
    """A granted entitlement as held by a client, with its provenance."""

    id: int
    client_id: str
    kind: Kind
    use: Use
    bps: int
    products: tuple[str, ...]
    detail: dict
    valid_from: datetime
    valid_to: datetime | None
    status: Status
    rule_id: str
    programme_id: str
    programme_version: str
    event_id: str | None

    def valid_at(self, at: datetime) -> bool:
        """Held and inside its validity window at `at` (a revoked one was held until its revocation)."""
        return (self.status in (Status.ACTIVE, Status.REVOKED) and self.valid_from <= at
                and (self.valid_to is None or at < self.valid_to))


@dataclass(frozen=True)
class DiscountDecision:
    """The effective rate discount for one product and the entitlements it draws on."""

    product: str
    bps: int
    uncapped_bps: int
    ceiling_bps: int
    applied: tuple[int, ...]


@dataclass(frozen=True)
class ServiceBenefits:
    """The non-price benefits in force."""

    fast_track_lane: str | None
    fast_track_sla_hours: int | None
    relationship_manager: bool
    fee_waiver_pct: int
    applied: tuple[int, ...]


def rate_discount(held: list[Entitlement], product: str, at: datetime, ceiling_bps: int) -> DiscountDecision:
    """Effective discount in bps for `product` at `at`, after stacking and the ceiling."""
    usable = [e for e in held if e.kind == Kind.RATE_DISCOUNT and product in e.products and e.valid_at(at)]
    standing = [e for e in usable if e.use == Use.STANDING]
    single = sorted((e for e in usable if e.use == Use.SINGLE),
                    key=lambda e: (-e.bps, e.valid_to is None, e.valid_to or at, e.id))
    chosen = standing + single[:1]
    total = sum(e.bps for e in chosen)
    return DiscountDecision(product, min(total, ceiling_bps), total, ceiling_bps, tuple(e.id for e in chosen))


def service_benefits(held: list[Entitlement], at: datetime) -> ServiceBenefits:
    """Fast-track lane, relationship manager and fee waiver in force at `at`."""
    valid = [e for e in held if e.valid_at(at)]
    lanes = sorted((e for e in valid if e.kind == Kind.FAST_TRACK), key=lambda e: (e.detail["sla_hours"], e.id))
    managers = [e for e in valid if e.kind == Kind.RELATIONSHIP_MANAGER]
    waivers = sorted((e for e in valid if e.kind == Kind.FEE_WAIVER), key=lambda e: (-e.detail["fee_waiver_pct"], e.id))
    applied = [*lanes[:1], *managers[:1], *waivers[:1]]
    return ServiceBenefits(
        fast_track_lane=lanes[0].detail["lane"] if lanes else None,
        fast_track_sla_hours=lanes[0].detail["sla_hours"] if lanes else None,
        relationship_manager=bool(managers),
        fee_waiver_pct=min(100, waivers[0].detail["fee_waiver_pct"]) if waivers else 0,
        applied=tuple(e.id for e in applied),
    )
