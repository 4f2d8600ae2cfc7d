"""A client's profile for people: who it is, its tier and why, its tier history and metric values, and
what the reviews keep about it: a grace period (the client is told until when), pins, a churn flag."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy import Engine, select

from engine.context import tier_at
from engine.metrics import METRICS, display, place
from engine.programme import ProgrammeSet
from rewards.caps import months_before
from service.answer import Answer, Moment
from service.errors import NotFoundError
from storage import standing
from storage.db import read_snapshot
from service.benefits import require_utc
from storage.metrics import client_metrics
from storage.models import Client, TierAssignment


class TierChange(Answer):
    """One row of the tier history."""

    tier: str
    from_tier: str | None
    valid_from: Moment
    reason: str
    review_id: str | None
    reasons: list[Any]


class GraceAnswer(Answer):
    """An open grace period."""

    tier: str
    started_at: Moment
    until: Moment
    review_id: str


class PinAnswer(Answer):
    """A manual tier override."""

    tier: str
    valid_from: Moment
    until: Moment
    reason: str
    author: str


class ChurnSignalAnswer(Answer):
    """A churn signal that fired, with the client's value."""

    id: str
    description: str
    metric: str
    operator: str
    threshold: str
    value: str | None


class ChurnFlagAnswer(Answer):
    """An open churn flag."""

    raised_at: Moment
    raised_by: str
    last_seen_at: Moment
    signals: list[ChurnSignalAnswer]


class ProfileAnswer(Answer):
    """Profile, tier, tier history with reasons, and the metrics a review would see."""

    client_id: str
    name: str | None
    segment: str | None
    industry: str | None
    onboarded_at: Moment | None
    first_seen_at: Moment
    points_balance: int
    as_of: Moment
    tier: str
    qualifies_for: str
    metrics: dict[str, str | None]
    window_months: int
    tier_history: list[TierChange]
    grace: GraceAnswer | None = Field(description="the client no longer qualifies for its tier and keeps it until then")
    pin: PinAnswer | None = Field(description="a manual override in force")
    pins: list[PinAnswer] = Field(description="every pin, oldest first")
    churn_flag: ChurnFlagAnswer | None = Field(description="open early warning, with the signals last seen")


def client_profile(engine: Engine, programmes: ProgrammeSet, client_id: str, at: datetime) -> ProfileAnswer:
    """Profile, current tier, tier history with reasons, and the metrics a review would see at `at`."""
    at = require_utc(at)
    programme = programmes.for_moment(at)
    window = programme.model.review.window_months
    clients, tiers = Client.__table__, TierAssignment.__table__
    with read_snapshot(engine) as conn:
        client = conn.execute(select(clients).where(clients.c.client_id == client_id)).first()
        if client is None:
            raise NotFoundError(f"no client {client_id!r}: it has no events yet")
        history = [dict(row._mapping) for row in conn.execute(
            select(tiers).where(tiers.c.client_id == client_id).order_by(tiers.c.valid_from, tiers.c.id))]
        values = client_metrics(conn, at, months_before(at, window), window, programme.currency,
                                [client_id]).get(client_id, dict.fromkeys(METRICS))
        grace = standing.grace_of(conn, client_id)
        pins = standing.pin_history(conn, client_id)
        flags = standing.flags(conn, client_id=client_id)
    started = [row for row in pins if row["valid_from"] <= at]  # the latest pin started by then holds, until it ends
    current = tier_at([(row["valid_from"], row["tier"]) for row in history], at, programme.lowest_tier.id)
    placement = place(programme.model.tiers, values)
    return ProfileAnswer.model_validate({
        "client_id": client_id,
        "name": client.name, "segment": client.segment, "industry": client.industry,
        "onboarded_at": client.onboarded_at.isoformat() if client.onboarded_at else None,
        "first_seen_at": client.first_seen_at.isoformat(),
        "points_balance": client.points_balance,
        "as_of": at.isoformat(),
        "tier": current,
        "qualifies_for": placement.tier,
        "metrics": {name: display(value) for name, value in values.items()},
        "window_months": window,
        "tier_history": [{
            "tier": row["tier"], "from_tier": row["previous_tier"], "valid_from": row["valid_from"].isoformat(),
            "reason": row["reason"], "review_id": row["review_id"],
            "reasons": json.loads(row["details"]) if row["details"] else [],
        } for row in history],
        # A grace already served (a decline still under way) has nothing left to tell.
        "grace": {"tier": grace["tier"], "started_at": grace["started_at"].isoformat(),
                  "until": grace["until"].isoformat(), "review_id": grace["review_id"]}
        if grace and grace["until"] > at else None,
        "pin": _pin_view(started[-1]) if started and started[-1]["until"] > at else None,
        "pins": [_pin_view(row) for row in pins],
        "churn_flag": {"raised_at": flags[0]["raised_at"].isoformat(), "raised_by": flags[0]["raised_by"],
                       "last_seen_at": flags[0]["last_seen_at"].isoformat(), "signals": flags[0]["signals"]}
        if flags else None,
    })


def _pin_view(row: dict) -> dict:
    return {"tier": row["tier"], "valid_from": row["valid_from"].isoformat(), "until": row["until"].isoformat(),
            "reason": row["reason"], "author": row["author"]}
