"""Notices: the decisions worth acting on outside the engine (a client moved down a tier, a churn flag
raised, an entitlement consumed...), as the outbox records them and webhooks deliver them.

Each type has a versioned schema (a pydantic model of its `data`); a receiver reads `type` and
`version` and may rely on every field its version lists. A change that removes or retypes a field is a
new version; adding an optional field is not. Money is in minor units as integers (amounts in the
programme's currency) and moments are ISO 8601 UTC, as everywhere in the engine's JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from rewards.kinds import Kind, Reason


class NoticeData(BaseModel):
    """The fields every notice's data has."""

    model_config = ConfigDict(extra="forbid")

    client_id: str | None


class TierChanged(NoticeData):
    """A client moved to another tier (by a review, an instant upgrade or a pin)."""

    from_tier: str
    to_tier: str
    direction: Literal["up", "down"]
    effective_from: datetime
    reason: str  # for people: "downgrade by review (grace ended)"
    checks: list[dict] | None  # the checks behind the decision, as the tier history keeps them
    review_id: str | None


class GraceStarted(NoticeData):
    """A review found the client short of its tier and lets it keep the tier until `until`."""

    tier: str
    started_at: datetime
    until: datetime
    review_id: str


class GraceEnded(NoticeData):
    """A grace period ended: the client recovered, was moved down or elsewhere, or was pinned."""

    ended_at: datetime
    outcome: str | None  # recovered, downgraded, moved, pinned
    review_id: str | None


class ChurnFlagged(NoticeData):
    """A review raised an early warning: the signals that fired, with their values."""

    tier: str
    signals: list[dict]  # each signal that fired: its id, description, threshold and value
    value_minor: int  # the client's loan volume in the review's window, minor units: what is at stake
    review_id: str


class ChurnCleared(NoticeData):
    """A review found a flagged client recovered."""

    cleared_at: datetime
    review_id: str


class EntitlementChanged(NoticeData):
    """An entitlement granted, revoked, consumed by a booked loan, or reversed with its event."""

    entitlement_id: int
    kind: str
    use: str | None
    bps: int  # the discount, positive, for rate discounts; 0 otherwise
    products: list[str]
    rule_id: str | None
    valid_from: datetime
    valid_to: datetime | None
    event_id: str | None  # the activity event behind it, if any
    detail: dict | None


class PointsExpired(NoticeData):
    """Points of one earning lot expired unused."""

    points: int
    rule_id: str | None
    expired_at: datetime


class PointsExpiring(NoticeData):
    """Points of one earning lot will expire within the window the notice was given for."""

    event_id: str  # the lot is the points this event earned under this rule
    rule_id: str
    points: int  # still unspent
    earned_at: datetime
    expires_at: datetime
    within_days: int


class RedemptionMade(NoticeData):
    """A client spent points on a catalogue reward."""

    reward_id: str
    points: int
    redeemed_at: datetime


class QuoteCommitted(NoticeData):
    """A held price quote was committed to a booked loan: its single-use entitlements are consumed."""

    quote_id: str
    loan_id: str | None
    product: str
    amount_minor: int
    currency: str
    entitlement_ids: list[int]  # the single-use entitlements consumed
    pricing: dict  # the quote's answer, as the loan system was given it
    committed_at: datetime


class RuleVersionActivated(NoticeData):
    """A programme version was installed, to be in force from `effective_from`."""

    programme_id: str
    version: str
    effective_from: datetime
    file: str


# type -> (schema version, data model)
TYPES: dict[str, tuple[int, type[NoticeData]]] = {
    "tier.changed": (1, TierChanged),
    "grace.started": (1, GraceStarted),
    "grace.ended": (1, GraceEnded),
    "churn.flagged": (1, ChurnFlagged),
    "churn.cleared": (1, ChurnCleared),
    "entitlement.granted": (1, EntitlementChanged),
    "entitlement.revoked": (1, EntitlementChanged),
    "entitlement.consumed": (1, EntitlementChanged),
    "entitlement.reversed": (1, EntitlementChanged),
    "points.expiring": (1, PointsExpiring),
    "points.expired": (1, PointsExpired),
    "redemption.made": (1, RedemptionMade),
    "quote.committed": (1, QuoteCommitted),
    "rule_version.activated": (1, RuleVersionActivated),
}


@dataclass(frozen=True)
class Notice:
    """One notice ready for the outbox: its type, client, moment and data (checked against its schema)."""

    type: str
    client_id: str | None
    occurred_at: datetime
    data: str  # JSON of the type's model
    version: int
    dedupe_key: str | None = None  # given once per key (e.g. a lot's expiry warning per window)


def notice(type_: str, occurred_at: datetime, dedupe_key: str | None = None, **fields: object) -> Notice:
    """A notice of `type_`, its fields checked against the type's schema (ValueError if they do not fit)."""
    version, model = TYPES[type_]
    data = model(**fields)
    return Notice(type_, data.client_id, occurred_at, data.model_dump_json(), version, dedupe_key)


def tier_changed(row: dict) -> Notice:
    """The notice of a tier-history row that moves a client (it carries previous_tier and direction)."""
    checks = row.get("details")
    return notice("tier.changed", row["valid_from"], client_id=row["client_id"], from_tier=row["previous_tier"],
                  to_tier=row["tier"], direction=row["direction"], effective_from=row["valid_from"],
                  reason=row["reason"], checks=json.loads(checks) if isinstance(checks, str) else checks,
                  review_id=row.get("review_id"))


_ENTITLEMENT_TYPES = {Reason.GRANT: "entitlement.granted", Reason.REVOKE: "entitlement.revoked",
                      Reason.CONSUME: "entitlement.consumed", Reason.REVERSE: "entitlement.reversed"}
REDEEM_RULE_PREFIX = "redeem:"  # a redemption's ledger entries are booked under this rule id prefix


def from_entry(row: dict, entitlement_id: int | None) -> Notice | None:
    """The notice of one ledger entry (a row as storage.ledger writes it; `entitlement_id` for a grant,
    whose entry id is known only once it is inserted), or None for an entry nobody acts on (an adjustment)."""
    reason = Reason(row["reason"])
    if row["kind"] != Kind.POINTS and reason in _ENTITLEMENT_TYPES:
        detail = json.loads(row["detail"]) if row["detail"] else None
        return notice(_ENTITLEMENT_TYPES[reason], row["valid_from"], client_id=row["client_id"],
                      entitlement_id=entitlement_id or row["entitlement_id"], kind=row["kind"], use=row["use"],
                      bps=abs(row["bps"]), products=row["products"].split(",") if row["products"] else [],
                      rule_id=row["rule_id"], valid_from=row["valid_from"], valid_to=row["valid_to"],
                      event_id=row["event_id"], detail=detail)
    if row["kind"] == Kind.POINTS and reason == Reason.EXPIRE:
        return notice("points.expired", row["valid_from"], client_id=row["client_id"], points=-row["points"],
                      rule_id=row["rule_id"], expired_at=row["valid_from"])
    if row["kind"] == Kind.POINTS and reason == Reason.REDEEM:
        return notice("redemption.made", row["valid_from"], client_id=row["client_id"],
                      reward_id=(row["rule_id"] or "").removeprefix(REDEEM_RULE_PREFIX), points=-row["points"],
                      redeemed_at=row["valid_from"])
    return None


def json_schemas() -> dict:
    """Every notice type's JSON Schema, with its version: the document receivers code against."""
    return {type_: {"version": version, "schema": model.model_json_schema()}
            for type_, (version, model) in TYPES.items()}
