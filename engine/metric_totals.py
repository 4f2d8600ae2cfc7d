"""Per client and calendar month, the partial sums, counts and extremes every registered metric needs.

A month's totals cover the events with `occurred_at` in (start of the month, start of the next month]:
the interval is open at its start and closed at its end, like a metric window (start, as_of], so a
window whose ends fall on month starts (every scheduled review) is an exact union of months. A window
with other ends reads its two partial edge months from the events themselves (storage/metrics.py).

The deposit report of a month is kept in the totals of the month it reports (its `month` attribute),
not of the month it arrived in: restated reports replace it when they are later. Products taken up
are not counted per month (the metric counts distinct products ever): storage keeps each product's
first purchase beside the months.

Folding is the same whether the totals are kept up to date batch by batch or rebuilt from every
event, so `ledger verify` can rebuild them and compare.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from engine.context import ONBOARDING_EVENT

_JUST_BEFORE = timedelta(microseconds=1)
LOAN_ACTIVITY = ("loan.drawn", "repayment.made")


class Fact(NamedTuple):
    """What the metrics read of one applied event (the typed columns of its processed-event row)."""

    client_id: str
    event_id: str
    type: str
    occurred_at: datetime
    amount_minor: int | None
    number: int | None
    label: str | None


def month_of(moment: datetime) -> str:
    """The month whose totals hold an event at `moment` ('YYYY-MM'): an event at a month's first instant
    belongs to the month before, which ends there."""
    return f"{moment.astimezone(UTC) - _JUST_BEFORE:%Y-%m}"


def month_start(moment: datetime) -> datetime:
    """The latest month start at or before `moment` (UTC)."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(moment: datetime) -> datetime:
    """The earliest month start at or after `moment` (UTC)."""
    start = month_start(moment)
    if start == moment:
        return start
    return (start + timedelta(days=32)).replace(day=1)


@dataclass(slots=True)
class MonthTotals:
    """One client's live (not reversed) events of one month, folded."""

    events: int = 0
    loan_minor: int = 0
    drawdowns: int = 0
    repayments: int = 0
    on_time: int = 0
    late: int = 0
    referrals: int = 0
    attended: int = 0
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    onboarded_at: datetime | None = None  # the month's first onboarding
    last_loan_activity: datetime | None = None
    nps_at: datetime | None = None  # the month's latest survey answer (by moment, then event id)
    nps_event_id: str | None = None
    nps: int | None = None
    deposit_at: datetime | None = None  # the latest report of this month's deposits, whenever it arrived
    deposit_event_id: str | None = None
    deposit_minor: int | None = None

    def as_row(self) -> dict:
        """The columns as a dict (the storage row without its key)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


COLUMNS = tuple(f.name for f in fields(MonthTotals))


def add(totals: dict[tuple[str, str], MonthTotals], fact: Fact) -> None:
    """Fold one live event into the totals it changes (created as needed), keyed by (client, month)."""
    at = fact.occurred_at
    month = totals.setdefault((fact.client_id, month_of(at)), MonthTotals())
    month.events += 1
    if month.first_event_at is None or at < month.first_event_at:
        month.first_event_at = at
    if month.last_event_at is None or at > month.last_event_at:
        month.last_event_at = at
    kind = fact.type
    if kind == "loan.drawn":
        month.loan_minor += fact.amount_minor or 0
        month.drawdowns += 1
    elif kind == "repayment.made":
        month.repayments += 1
        if fact.number == 0:
            month.on_time += 1
        elif fact.number is not None and fact.number > 0:
            month.late += 1
    elif kind == "referral.converted":
        month.referrals += 1
    elif kind == "event.attended":
        month.attended += 1
    elif kind == ONBOARDING_EVENT:
        if month.onboarded_at is None or at < month.onboarded_at:
            month.onboarded_at = at
    elif kind == "survey.answered" and fact.number is not None:
        if month.nps_at is None or (at, fact.event_id) > (month.nps_at, month.nps_event_id):
            month.nps_at, month.nps_event_id, month.nps = at, fact.event_id, fact.number
    elif kind == "deposit.reported" and fact.label:
        reported = totals.setdefault((fact.client_id, fact.label), MonthTotals())
        if reported.deposit_at is None or (at, fact.event_id) > (reported.deposit_at, reported.deposit_event_id):
            reported.deposit_at, reported.deposit_event_id = at, fact.event_id
            reported.deposit_minor = fact.amount_minor or 0
    if kind in LOAN_ACTIVITY and (month.last_loan_activity is None or at > month.last_loan_activity):
        month.last_loan_activity = at


def first_purchases(facts: Iterable[Fact]) -> dict[tuple[str, str], datetime]:
    """Per (client, product), the first purchase among `facts`."""
    first: dict[tuple[str, str], datetime] = {}
    for fact in facts:
        if fact.type == "product.purchased" and fact.label:
            key = (fact.client_id, fact.label)
            if key not in first or fact.occurred_at < first[key]:
                first[key] = fact.occurred_at
    return first


def fold(facts: Iterable[Fact]) -> dict[tuple[str, str], MonthTotals]:
    """The totals of `facts` from nothing."""
    totals: dict[tuple[str, str], MonthTotals] = {}
    for fact in facts:
        add(totals, fact)
    return totals


_COUNTERS = ("events", "loan_minor", "drawdowns", "repayments", "on_time", "late", "referrals", "attended")


def combine(parts: Iterable[MonthTotals]) -> MonthTotals:
    """The totals of several months (or parts of months) together; deposits are left out (they are per month)."""
    total = MonthTotals()
    for part in parts:
        for name in _COUNTERS:
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.first_event_at = _earliest(total.first_event_at, part.first_event_at)
        total.onboarded_at = _earliest(total.onboarded_at, part.onboarded_at)
        if part.last_event_at is not None and (total.last_event_at is None or part.last_event_at > total.last_event_at):
            total.last_event_at = part.last_event_at
        if part.last_loan_activity is not None and (total.last_loan_activity is None
                                                    or part.last_loan_activity > total.last_loan_activity):
            total.last_loan_activity = part.last_loan_activity
        if part.nps_at is not None and (total.nps_at is None
                                        or (part.nps_at, part.nps_event_id) > (total.nps_at, total.nps_event_id)):
            total.nps_at, total.nps_event_id, total.nps = part.nps_at, part.nps_event_id, part.nps
    return total


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None:
        return second
    return first if second is None or first <= second else second
