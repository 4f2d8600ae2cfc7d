"""What `explain` answers: the models of an explanation (for `loyalty explain --json` and the HTTP API)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from service.answer import Answer, Moment, ProgrammeRef
from service.benefits import EntitlementFields


class MetricCheck(Answer):
    """One metric against one threshold of a tier's qualification."""

    metric: str
    operator: Literal["gte", "gt", "lte", "lt"]
    threshold: str
    value: str | None = Field(description="the client's value, cut to 4 decimals; null when it has none")
    met: bool
    text: str = Field(description="for people, e.g. `loan_volume 105,000,000.00 ≥ 100,000,000`")


class TierVerdict(Answer):
    """Whether the client's metrics met a tier's qualification, with every check made."""

    tier: str
    qualifies: bool
    checks: list[MetricCheck]


class RequirementCheck(MetricCheck):
    """A threshold of the next tier, with how far the client's value is from it."""

    gap: str | None = Field(description="how much the value must rise (gte, gt) or fall (lte, lt); null when met "
                                        "or when the client has no value")


class Requirement(Answer):
    """A qualification as a tree: all or any of its checks and nested groups."""

    combine: Literal["all", "any"]
    met: bool
    items: list[RequirementCheck | Requirement]


class EventReversalNote(Answer):
    """When and why an event was reversed."""

    at: Moment
    reason: str


class ExplainedEvent(Answer):
    """An applied event, with its attributes as stored."""

    id: str
    type: str
    occurred_at: Moment
    data: dict[str, Any]
    programme_version: str = Field(description="the programme version it was evaluated under")
    reversed: EventReversalNote | None


class ReviewRef(Answer):
    """The tier review that decided a move."""

    id: str
    as_of: Moment | None
    trigger: str | None


class PinRef(Answer):
    """The pin behind a tier decision."""

    author: str
    reason: str
    until: Moment


class TierDecision(Answer):
    """The tier-history row that put the client in a tier, and why."""

    id: int
    how: Literal["new_client", "review", "instant_upgrade", "pin"]
    tier: str
    from_tier: str | None
    valid_from: Moment
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


class MetricValue(Answer):
    """A metric's value at the moment asked about."""

    value: str | None
    unit: str
    text: str


class NextTier(Answer):
    """The tier above the client's, and what it takes."""

    tier: str
    name: str
    qualifies: bool
    instant_upgrade: bool = Field(description="entered with the event that makes the client qualify, "
                                              "not at the next review")
    requirement: Requirement | None


class TierMoveOutlook(Answer):
    """A tier move the review policy will make, and when."""

    tier: str
    when: Literal["next_event", "next_review"] = Field(
        description="with the client's next event (an instant-upgrade tier) or at the next review")


class TierOutlook(Answer):
    """Where the review policy takes the client from the tier its metrics reach."""

    action: Literal["stay", "upgrade", "downgrade", "pinned"]
    moves: list[TierMoveOutlook] = Field(
        description="for an upgrade: the instant-upgrade tier it reaches with its next event, then the tier the "
                    "next review moves it to, if higher")
    pinned_until: Moment | None = Field(description="for a client pinned to its tier: when the pin ends")
    text: str


class TierExplanation(Answer):
    """The client's tier at the moment, the decision behind it, its metrics and where they take it."""

    current: str | None
    since: Moment | None
    decision: TierDecision | None
    metrics: dict[str, MetricValue]
    qualified: str | None = Field(description="the highest tier the metrics qualify for")
    outlook: TierOutlook | None = Field(
        description="none before the first tier decision, or for a tier the programme version no longer has")
    next_tier: NextTier | None


class RulePoints(Answer):
    """Points a rule earned."""

    rule_id: str | None
    points: int
    entries: int


class RewardPoints(Answer):
    """Points spent on a reward (negative)."""

    reward: str
    points: int
    entries: int


class PointsExplanation(Answer):
    """The balance at the moment as the sum of its parts (signed, as in the ledger)."""

    balance: int
    earned: int
    earned_by_rule: list[RulePoints]
    redeemed: int
    redeemed_by_reward: list[RewardPoints]
    expired: int
    reversed: int
    adjusted: int = Field(description="write-offs that keep a balance from going below zero")


class RuleCondition(Answer):
    """One condition of a rule against the value the event (or the client at its time) had."""

    on: Literal["event", "client"]
    attribute: str
    operator: str
    expected: str | list[str]
    value: str | None = Field(description="null when the event had no such attribute")
    met: bool
    text: str = Field(description="for people, e.g. `amount 60,000,000.00 ≥ 50,000,000`")


class ExplainedRule(Answer):
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


class RedemptionNote(Answer):
    """The catalogue redemption that granted an entitlement."""

    reward: str
    name: str | None
    points: int | None = Field(description="what it cost")
    entry_id: int | None = Field(description="the ledger entry that spent the points")
    redeemed_at: Moment


class HistoryStep(Answer):
    """One step in an entitlement's life; `entry_id` is the ledger entry (none for a lapse)."""

    entry_id: int | None
    at: Moment
    action: str = Field(description="granted, consumed, revoked, reversed or expired")
    text: str


class ExplainedEntitlement(EntitlementFields):
    """An entitlement, why the client got it, and what became of it."""

    valid_from: Moment
    valid_to: Moment | None
    what: str
    status: Literal["active", "consumed", "revoked", "reversed", "expired", "not_yet_granted"] = Field(
        description="at the moment asked about")
    status_since: Moment | None
    source: Literal["rule", "tier", "redemption"]
    rule_id: str
    programme: ProgrammeRef
    rule: ExplainedRule
    events: list[ExplainedEvent]
    redemption: RedemptionNote | None
    tier_decision: TierDecision | None
    history: list[HistoryStep]


class ExplanationAnswer(Answer):
    """Why a client holds each entitlement at a moment (or one entitlement, whatever became of it)."""

    client_id: str
    name: str | None
    as_of: Moment
    programme: ProgrammeRef
    entitlement_id: int | None = Field(description="the entitlement asked about; null when listing all held")
    tier: TierExplanation
    points: PointsExplanation
    entitlements: list[ExplainedEntitlement]
