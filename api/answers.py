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


class _Entitlement(_Answer):
    """What an entitlement is: the fields every answer about one starts with."""

    id: int
    kind: Literal["rate_discount", "fast_track", "relationship_manager", "fee_waiver"]
    use: Literal["single", "standing"]
    bps: int | None
    products: list[str]
    detail: dict[str, Any]


class EntitlementAnswer(_Entitlement):
    """An entitlement with its provenance."""

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


class MetricCheck(_Answer):
    """One metric against one threshold of a tier's qualification."""

    metric: str
    operator: Literal["gte", "gt", "lte", "lt"]
    threshold: str
    value: str | None = Field(description="the client's value, cut to 4 decimals; null when it has none")
    met: bool
    text: str = Field(description="for people, e.g. `loan_volume 105,000,000.00 ≥ 100,000,000`")


class TierVerdict(_Answer):
    """Whether the client's metrics met a tier's qualification, with every check made."""

    tier: str
    qualifies: bool
    checks: list[MetricCheck]


class RequirementCheck(MetricCheck):
    """A threshold of the next tier, with how far the client's value is from it."""

    gap: str | None = Field(description="how much the value must rise (gte, gt) or fall (lte, lt); null when met "
                                        "or when the client has no value")


class Requirement(_Answer):
    """A qualification as a tree: all or any of its checks and nested groups."""

    combine: Literal["all", "any"]
    met: bool
    items: list[RequirementCheck | Requirement]


class EventReversalNote(_Answer):
    """When and why an event was reversed."""

    at: str
    reason: str


class ExplainedEvent(_Answer):
    """An applied event, with its attributes as stored."""

    id: str
    type: str
    occurred_at: str
    data: dict[str, Any]
    programme_version: str = Field(description="the programme version it was evaluated under")
    reversed: EventReversalNote | None


class ReviewRef(_Answer):
    """The tier review that decided a move."""

    id: str
    as_of: str | None
    trigger: str | None


class PinRef(_Answer):
    """The pin behind a tier decision."""

    author: str
    reason: str
    until: str


class TierDecision(_Answer):
    """The tier-history row that put the client in a tier, and why."""

    id: int
    how: Literal["new_client", "review", "instant_upgrade", "pin"]
    tier: str
    from_tier: str | None
    valid_from: str
    reason: str
    programme: ProgrammeRef
    review: ReviewRef | None
    pin: PinRef | None
    latest_event: ExplainedEvent | None = Field(
        description="for an instant upgrade: the client's latest event when it was measured (instant upgrades are "
                    "measured at the end of the ingest batch that brought the activity)")
    reasons_source: Literal["recorded", "recomputed", "none"] = Field(
        description="recorded with the decision, or recomputed now from the stored events (pins record none)")
    reasons: list[TierVerdict]


class MetricValue(_Answer):
    """A metric's value at the moment asked about."""

    value: str | None
    unit: str
    text: str


class NextTier(_Answer):
    """The tier above the client's, and what it takes."""

    tier: str
    name: str
    qualifies: bool
    instant_upgrade: bool = Field(description="entered with the event that makes the client qualify, "
                                              "not at the next review")
    requirement: Requirement | None


class TierMoveOutlook(_Answer):
    """A tier move the review policy will make, and when."""

    tier: str
    when: Literal["next_event", "next_review"] = Field(
        description="with the client's next event (an instant-upgrade tier) or at the next review")


class TierOutlook(_Answer):
    """Where the review policy takes the client from the tier its metrics reach."""

    action: Literal["stay", "upgrade", "downgrade", "pinned"]
    moves: list[TierMoveOutlook] = Field(
        description="for an upgrade: the instant-upgrade tier it reaches with its next event, then the tier the "
                    "next review moves it to, if higher")
    pinned_until: str | None = Field(description="for a client pinned to its tier: when the pin ends")
    text: str


class TierExplanation(_Answer):
    """The client's tier at the moment, the decision behind it, its metrics and where they take it."""

    current: str | None
    since: str | None
    decision: TierDecision | None
    metrics: dict[str, MetricValue]
    qualified: str | None = Field(description="the highest tier the metrics qualify for")
    outlook: TierOutlook | None = Field(
        description="none before the first tier decision, or for a tier the programme version no longer has")
    next_tier: NextTier | None


class RulePoints(_Answer):
    """Points a rule earned."""

    rule_id: str | None
    points: int
    entries: int


class RewardPoints(_Answer):
    """Points spent on a reward (negative)."""

    reward: str
    points: int
    entries: int


class PointsExplanation(_Answer):
    """The balance at the moment as the sum of its parts (signed, as in the ledger)."""

    balance: int
    earned: int
    earned_by_rule: list[RulePoints]
    redeemed: int
    redeemed_by_reward: list[RewardPoints]
    expired: int
    reversed: int
    adjusted: int = Field(description="write-offs that keep a balance from going below zero")


class RuleCondition(_Answer):
    """One condition of a rule against the value the event (or the client at its time) had."""

    on: Literal["event", "client"]
    attribute: str
    operator: str
    expected: str | list[str]
    value: str | None = Field(description="null when the event had no such attribute")
    met: bool
    text: str = Field(description="for people, e.g. `amount 60,000,000.00 ≥ 50,000,000`")


class ExplainedRule(_Answer):
    """What granted an entitlement: a rule of the rule file, a tier's standing benefits or a catalogue reward."""

    id: str
    description: str | None
    found: bool = Field(description="false when the version that granted it is no longer among the loaded rules")
    note: str | None
    priority: int | None
    event_type: str | None
    award: dict[str, Any] | None
    cap: dict[str, Any] | None
    conditions: list[RuleCondition]


class RedemptionNote(_Answer):
    """The catalogue redemption that granted an entitlement."""

    reward: str
    name: str | None
    points: int | None = Field(description="what it cost")
    entry_id: int | None = Field(description="the ledger entry that spent the points")
    redeemed_at: str


class HistoryStep(_Answer):
    """One step in an entitlement's life; `entry_id` is the ledger entry (none for a lapse)."""

    entry_id: int | None
    at: str
    action: str = Field(description="granted, consumed, revoked, reversed or expired")
    text: str


class ExplainedEntitlement(_Entitlement):
    """An entitlement, why the client got it, and what became of it."""

    valid_from: str
    valid_to: str | None
    what: str
    status: Literal["active", "consumed", "revoked", "reversed", "expired", "not_yet_granted"] = Field(
        description="at the moment asked about")
    status_since: str | None
    source: Literal["rule", "tier", "redemption"]
    rule_id: str
    programme: ProgrammeRef
    rule: ExplainedRule
    events: list[ExplainedEvent]
    redemption: RedemptionNote | None
    tier_decision: TierDecision | None
    history: list[HistoryStep]


class ExplanationAnswer(_Answer):
    """Why a client holds each entitlement at a moment (or one entitlement, whatever became of it)."""

    client_id: str
    name: str | None
    as_of: str
    programme: ProgrammeRef
    entitlement_id: int | None = Field(description="the entitlement asked about; null when listing all held")
    tier: TierExplanation
    points: PointsExplanation
    entitlements: list[ExplainedEntitlement]
