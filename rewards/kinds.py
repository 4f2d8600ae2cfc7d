"""The entitlement kinds, ledger reasons, and the awards the evaluator produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum


class Kind(StrEnum):
    """What an entitlement is."""

    POINTS = "points"
    RATE_DISCOUNT = "rate_discount"
    FAST_TRACK = "fast_track"
    RELATIONSHIP_MANAGER = "relationship_manager"
    FEE_WAIVER = "fee_waiver"


class Reason(StrEnum):
    """Why a ledger entry was written."""

    EARN = "earn"
    GRANT = "grant"
    REDEEM = "redeem"
    CONSUME = "consume"
    EXPIRE = "expire"
    REVOKE = "revoke"
    REVERSE = "reverse"
    ADJUST = "adjust"


class Use(StrEnum):
    """Single-use entitlements are consumed once by a booked loan; standing ones last while valid."""

    SINGLE = "single"
    STANDING = "standing"


class Status(StrEnum):
    """Lifecycle of a granted entitlement."""

    ACTIVE = "active"
    CONSUMED = "consumed"
    REVOKED = "revoked"
    REVERSED = "reversed"


@dataclass(frozen=True)
class PointsAward:
    """Points earned by one rule for one event, after the tier multiplier."""

    rule_id: str
    points: int
    base_points: int
    multiplier: Decimal


@dataclass(frozen=True)
class Grant:
    """An entitlement to create: a rate discount or a service benefit."""

    kind: Kind
    rule_id: str
    use: Use
    valid_from: datetime
    valid_to: datetime | None
    bps: int = 0
    products: tuple[str, ...] = ()
    detail: dict = field(default_factory=dict)
