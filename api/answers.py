"""What the endpoints answer, as schemas for the OpenAPI document.

The use cases return plain JSON; these models describe it (every field, nothing more: extra fields
are forbidden, so the fuzz tests' response-conformance check catches any drift between answer and
document). They are documentation, not a serialisation step: the hot path sends its JSON as it is.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProgrammeRef(_Answer):
    """The rule-file version that decided."""

    id: str
    version: str


class EntitlementAnswer(_Answer):
    """An entitlement with its provenance."""

    id: int
    kind: Literal["rate_discount", "fast_track", "relationship_manager", "fee_waiver"]
    use: Literal["single", "standing"]
    bps: int | None
    products: list[str]
    detail: dict[str, Any]
    rule_id: str
    programme_id: str
    programme_version: str
    event_id: str | None
    ledger_entry_id: int
    valid_from: str
    valid_to: str | None
    reserved_by_quote: str | None


class DiscountAnswer(_Answer):
    """How the effective discount came about."""

    uncapped_bps: int
    ceiling_bps: int
    entitlement_ids: list[int]


class BenefitsAnswer(_Answer):
    """What a client holds at a moment, and what it gives a loan of `product` (and `amount`)."""

    client_id: str
    as_of: str
    programme: ProgrammeRef
    tier: str
    tier_name: str
    points_balance: int
    points_multiplier: str
    product: str | None
    amount: str | None
    currency: str
    rate_discount_bps: int
    rate_discount: DiscountAnswer | None
    interest_saved_per_year: str | None
    rate_discount_bps_by_product: dict[str, int]
    fast_track_lane: str | None
    fast_track_sla_hours: int | None
    relationship_manager: bool
    fee_waiver_pct: int
    entitlements: list[EntitlementAnswer]


class QuoteAnswer(_Answer):
    """A quote: its pricing and the single-use entitlements it holds."""

    quote_id: str
    client_id: str
    status: Literal["held", "committed", "voided", "expired"]
    product: str
    amount: str
    currency: str
    programme: ProgrammeRef
    created_at: str
    expires_at: str
    resolved_at: str | None
    loan_id: str | None
    held_entitlement_ids: list[int]
    tier: str
    tier_name: str
    rate_discount_bps: int
    rate_discount: DiscountAnswer | None
    interest_saved_per_year: str | None
    fast_track_lane: str | None
    fast_track_sla_hours: int | None
    relationship_manager: bool
    fee_waiver_pct: int
    entitlements_used: list[EntitlementAnswer]


class EventResult(_Answer):
    """What happened to one item of a batch."""

    index: int
    id: str | None
    status: Literal["applied", "duplicate", "rejected"]
    error: str | None


class EventsAnswer(_Answer):
    """Counts, and a result per item in the order sent."""

    applied: int
    duplicates: int
    rejected: int
    results: list[EventResult]


class SkippedEntitlement(_Answer):
    """An entitlement a reversal could not take back (already consumed or revoked)."""

    entitlement_id: int
    status: str


class ReversalAnswer(_Answer):
    """The compensating entries written (none if the event was already reversed)."""

    event_id: str
    status: Literal["reversed", "already_reversed"]
    entries: list[int]
    skipped: list[SkippedEntitlement]
    points_written_off: int = Field(description="points the client had already spent or lost to expiry: "
                                                "written off so the balance stops at zero")


class LedgerEntryAnswer(_Answer):
    """One immutable ledger entry."""

    id: int
    client_id: str
    kind: str
    reason: str
    points: int
    bps: int
    products: list[str]
    detail: dict[str, Any]
    use: str | None
    rule_id: str | None
    programme_id: str | None
    programme_version: str | None
    event_id: str | None
    entitlement_id: int | None
    reverses_entry_id: int | None
    valid_from: str
    valid_to: str | None
    created_at: str


class LedgerPage(_Answer):
    """A page of entries, newest first; `next_cursor` fetches the next page (null on the last)."""

    client_id: str
    entries: list[LedgerEntryAnswer]
    next_cursor: str | None


class TierChange(_Answer):
    """One row of the tier history."""

    tier: str
    from_tier: str | None
    valid_from: str
    reason: str
    review_id: str | None
    reasons: list[Any]


class GraceAnswer(_Answer):
    """An open grace period."""

    tier: str
    started_at: str
    until: str
    review_id: str


class PinAnswer(_Answer):
    """A manual tier override."""

    tier: str
    valid_from: str
    until: str
    reason: str
    author: str


class ChurnSignalAnswer(_Answer):
    """A churn signal that fired, with the client's value."""

    id: str
    description: str
    metric: str
    operator: str
    threshold: str
    value: str | None


class ChurnFlagAnswer(_Answer):
    """An open churn flag."""

    raised_at: str
    raised_by: str
    last_seen_at: str
    signals: list[ChurnSignalAnswer]


class ProfileAnswer(_Answer):
    """Profile, tier, tier history with reasons, and the metrics a review would see."""

    client_id: str
    name: str | None
    segment: str | None
    industry: str | None
    onboarded_at: str | None
    first_seen_at: str
    points_balance: int
    as_of: str
    tier: str
    qualifies_for: str
    metrics: dict[str, str | None]
    window_months: int
    tier_history: list[TierChange]
    grace: GraceAnswer | None = Field(description="the client no longer qualifies for its tier and keeps it until then")
    pin: PinAnswer | None = Field(description="a manual override in force")
    pins: list[PinAnswer] = Field(description="every pin, oldest first")
    churn_flag: ChurnFlagAnswer | None = Field(description="open early warning, with the signals last seen")


class RewardAnswer(_Answer):
    """A reward of the catalogue."""

    id: str
    name: str
    description: str
    points: int
    min_tier: str | None


class RewardRef(_Answer):
    """The reward redeemed."""

    id: str
    name: str


class RedemptionAnswer(_Answer):
    """Points spent and the entitlement granted."""

    client_id: str
    reward: RewardRef
    points_spent: int
    points_balance: int
    redeemed_at: str
    entitlements: list[EntitlementAnswer]


def documented(model: type[BaseModel], status: int = 200) -> dict:
    """An operation's `responses` entry for its success answer."""
    return {status: {"model": model}}
