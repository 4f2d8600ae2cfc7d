"""A portfolio summary a relationship manager wants after a review: tiers, points, discounts, top clients."""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Engine, and_, case, func, select

from engine.events import minor_unit_exponent
from engine.metrics import display
from engine.programme import ProgrammeSet
from rewards.caps import months_before
from rewards.kinds import Kind, Reason, Status, Use
from rewards.stacking import rate_discount
from service.benefits import client_benefits
from storage import clients as client_store
from storage.db import read_snapshot
from storage.ledger import held_entitlements_of_all
from storage.metrics import client_metrics
from storage.models import Entitlement, EventReversal, LedgerEntry, ProcessedEvent
from storage.types import as_utc

ENTRY = LedgerEntry.__table__
ENT = Entitlement.__table__
EVENTS = ProcessedEvent.__table__
REVERSAL = EventReversal.__table__


def portfolio_summary(engine: Engine, programmes: ProgrammeSet, at: datetime, top: int = 5,
                      featured_product: str = "working_capital") -> dict:
    """Clients per tier, points issued, discounts granted with the loan volume they apply to, top clients."""
    at = at.astimezone(UTC)
    programme = programmes.for_moment(at)
    window = programme.model.review.window_months
    start = months_before(at, window)
    scale = Decimal(1).scaleb(-minor_unit_exponent(programme.currency))
    with read_snapshot(engine) as conn:
        tiers = client_store.tiers_as_of(conn, at)
        points = dict(conn.execute(select(ENTRY.c.reason, func.sum(ENTRY.c.points))
                                   .where(ENTRY.c.kind == Kind.POINTS).group_by(ENTRY.c.reason)).all())
        grants = conn.execute(select(ENT.c.rule_id, ENT.c.use, func.count(), func.sum(case(
            (ENT.c.status == Status.ACTIVE, 1), else_=0))).where(ENT.c.kind == Kind.RATE_DISCOUNT)
            .group_by(ENT.c.rule_id, ENT.c.use).order_by(ENT.c.rule_id)).all()
        drawdowns = conn.execute(select(EVENTS.c.client_id, EVENTS.c.label, EVENTS.c.amount_minor,
                                        EVENTS.c.occurred_at).where(
            and_(EVENTS.c.type == "loan.drawn", EVENTS.c.occurred_at > start, EVENTS.c.occurred_at <= at,
                 EVENTS.c.event_id.not_in(select(REVERSAL.c.event_id))))).all()
        held = held_entitlements_of_all(conn)
        metrics = client_metrics(conn, at, start, window, programme.currency)
    per_tier = {tier: 0 for tier in programme.tier_ids}
    for in_force in tiers.values():
        if in_force.tier:
            per_tier[in_force.tier] = per_tier.get(in_force.tier, 0) + 1
    # What standing discounts were worth: each drawdown of the window at the discount its client
    # held for that product at that moment, as interest a year on the amount drawn.
    discounted_volume, interest = Decimal(0), Decimal(0)
    for client_id, product, minor, occurred_at in drawdowns:
        moment = as_utc(occurred_at)
        standing = [e for e in held.get(client_id, []) if e.use == Use.STANDING]
        bps = rate_discount(standing, product, moment, programme.ceiling_bps(product)).bps
        if bps:
            amount = Decimal(minor) * scale
            discounted_volume += amount
            interest += amount * bps / 10_000
    ranked = sorted(metrics.items(), key=lambda item: (-(item[1]["loan_volume"] or 0), item[0]))[:top]
    tier_of = {client_id: in_force.tier for client_id, in_force in tiers.items()}
    return {
        "as_of": at.isoformat(),
        "programme": {"id": programme.id, "version": programme.version},
        "clients": sum(per_tier.values()),
        "clients_per_tier": per_tier,
        "points": {"earned": int(points.get(Reason.EARN, 0) or 0), "reversed": -int(points.get(Reason.REVERSE, 0) or 0),
                   "redeemed": -int(points.get(Reason.REDEEM, 0) or 0),
                   "outstanding": int(sum(v or 0 for v in points.values()))},
        "discount_grants": [{"rule_id": rule_id, "use": use, "granted": count, "active": int(active or 0)}
                            for rule_id, use, count, active in grants],
        "standing_discounts": {"discounted_drawdowns": str(discounted_volume.quantize(scale)),
                               "interest_forgone_per_year": str(interest.quantize(scale)),
                               "window_months": window},
        "top_clients": [{"client_id": client_id, "tier": tier_of.get(client_id),
                         "loan_volume": display(values["loan_volume"]),
                         "average_deposit_balance": display(values["average_deposit_balance"]),
                         "on_time_repayment_ratio": display(values["on_time_repayment_ratio"])}
                        for client_id, values in ranked],
        "featured_benefits": [
            client_benefits(engine, programmes, client_id, at, featured_product).model_dump(mode="json")
            for client_id, _values in ranked[:3]],
    }
