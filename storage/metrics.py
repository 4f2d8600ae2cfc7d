"""Client metrics computed in the database, set-based: a few GROUP BY queries for every client at once."""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection, and_, case, func, select

from engine.context import ONBOARDING_EVENT, whole_months
from engine.events import minor_unit_exponent
from engine.metrics import Values
from rewards.caps import months_before
from storage.models import Client, EventReversal, ProcessedEvent
from storage.types import as_utc

EVENTS = ProcessedEvent.__table__
REVERSAL = EventReversal.__table__
CLIENT = Client.__table__


def client_metrics(conn: Connection, as_of: datetime, window_start: datetime, window_months: int, currency: str,
                   client_ids: list[str] | None = None) -> dict[str, Values]:
    """Every metric of the registry for each client (or the named ones), from events in (window_start, as_of].

    Values are exact decimals (ratios and averages are not rounded, so a threshold is never met by rounding).
    """
    live = and_(EVENTS.c.occurred_at <= as_of, EVENTS.c.event_id.not_in(select(REVERSAL.c.event_id)))
    if client_ids is not None:
        live = and_(live, EVENTS.c.client_id.in_(client_ids))
    recent = EVENTS.c.occurred_at > window_start

    def count(*conditions) -> object:  # noqa: ANN002
        return func.sum(case((and_(recent, *conditions), 1), else_=0))

    def total(type_: str, period=recent) -> object:  # noqa: ANN001 - an SQL condition
        return func.sum(case((and_(period, EVENTS.c.type == type_), EVENTS.c.amount_minor), else_=0))

    previous = and_(EVENTS.c.occurred_at > months_before(window_start, window_months), EVENTS.c.occurred_at <= window_start)

    is_type = EVENTS.c.type.__eq__
    aggregates = select(
        EVENTS.c.client_id,
        total("loan.drawn").label("loan_volume"),
        count(is_type("loan.drawn")).label("drawdown_count"),
        count(is_type("repayment.made")).label("repayments"),
        count(is_type("repayment.made"), EVENTS.c.number == 0).label("on_time"),
        count(is_type("repayment.made"), EVENTS.c.number > 0).label("late_repayments"),
        func.count(case((is_type("product.purchased"), EVENTS.c.label)).distinct()).label("products_held"),
        count(is_type("referral.converted")).label("referrals"),
        count(is_type("event.attended")).label("events_attended"),
        func.min(case((is_type(ONBOARDING_EVENT), EVENTS.c.occurred_at))).label("onboarded_at"),
        func.min(EVENTS.c.occurred_at).label("first_event_at"),
        total("loan.drawn", previous).label("previous_loan_volume"),
        func.max(case((EVENTS.c.type.in_(("loan.drawn", "repayment.made")), EVENTS.c.occurred_at))).label("last_loan_activity"),
    ).where(live).group_by(EVENTS.c.client_id)

    ranked = select(EVENTS.c.client_id, EVENTS.c.number, func.row_number().over(
        partition_by=EVENTS.c.client_id, order_by=(EVENTS.c.occurred_at.desc(), EVENTS.c.event_id.desc())
    ).label("position")).where(live, recent, is_type("survey.answered")).subquery()
    latest_nps = dict(conn.execute(select(ranked.c.client_id, ranked.c.number).where(ranked.c.position == 1)).all())

    # Deposits: the latest report of each calendar month of the window (a restated month counts once).
    # Exactly `window_months` calendar months, ending with the month of the last instant before as_of.
    last = as_of - timedelta(microseconds=1)
    first_month, last_month = f"{months_before(last, window_months - 1):%Y-%m}", f"{last:%Y-%m}"
    reports = select(EVENTS.c.client_id, EVENTS.c.amount_minor, func.row_number().over(
        partition_by=(EVENTS.c.client_id, EVENTS.c.label),
        order_by=(EVENTS.c.occurred_at.desc(), EVENTS.c.event_id.desc())).label("position")).where(
        live, is_type("deposit.reported"), EVENTS.c.label >= first_month, EVENTS.c.label <= last_month).subquery()
    deposits = dict(conn.execute(select(reports.c.client_id, func.sum(reports.c.amount_minor))
                                 .where(reports.c.position == 1).group_by(reports.c.client_id)).all())

    scale = Decimal(1).scaleb(-minor_unit_exponent(currency))
    metrics: dict[str, Values] = {}
    for row in conn.execute(aggregates):
        since = row.onboarded_at or row.first_event_at
        metrics[row.client_id] = {
            "loan_volume": Decimal(row.loan_volume or 0) * scale,
            "drawdown_count": Decimal(row.drawdown_count or 0),
            "on_time_repayment_ratio": Decimal(row.on_time) / Decimal(row.repayments) if row.repayments else None,
            "late_repayments": Decimal(row.late_repayments or 0),
            "products_held": Decimal(row.products_held or 0),
            "tenure_months": Decimal(whole_months(as_utc(since), as_of)),
            "average_deposit_balance": Decimal(deposits.get(row.client_id) or 0) * scale / window_months,
            "latest_nps": Decimal(latest_nps[row.client_id]) if row.client_id in latest_nps else None,
            "referrals": Decimal(row.referrals or 0),
            "events_attended": Decimal(row.events_attended or 0),
            "days_since_loan_activity": Decimal((as_of - as_utc(row.last_loan_activity)).days)
            if row.last_loan_activity else None,
            "loan_volume_change": Decimal(row.loan_volume or 0) / Decimal(row.previous_loan_volume) - 1
            if row.previous_loan_volume else None,
        }
    return metrics


def volume_by_product(conn: Connection, client_ids: list[str], start: datetime, end: datetime) -> dict[str, dict[str, int]]:
    """Per client and loan product, the drawdowns in (start, end] that were not reversed, in minor units."""
    if not client_ids:
        return {}
    query = select(EVENTS.c.client_id, EVENTS.c.label, func.sum(EVENTS.c.amount_minor)).where(
        EVENTS.c.client_id.in_(client_ids), EVENTS.c.type == "loan.drawn", EVENTS.c.occurred_at > start,
        EVENTS.c.occurred_at <= end, EVENTS.c.event_id.not_in(select(REVERSAL.c.event_id))) \
        .group_by(EVENTS.c.client_id, EVENTS.c.label)
    volumes: dict[str, dict[str, int]] = {}
    for client_id, product, total in conn.execute(query):
        volumes.setdefault(client_id, {})[product] = int(total or 0)
    return volumes
