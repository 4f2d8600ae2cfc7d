"""The client metrics that tier qualifications test: one registry, with how each is measured.

The values are computed in the database (storage/metrics.py) from the stored activity over the
programme's review window; this module names them and decides qualifications from their values.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from engine.schema import Qualification, Threshold


@dataclass(frozen=True)
class Metric:
    """A named client measure."""

    name: str
    unit: str  # money, count, ratio, months, score
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("loan_volume", "money", "sum of drawdowns (loan.drawn amount) in the window"),
    Metric("drawdown_count", "count", "number of drawdowns in the window"),
    Metric("on_time_repayment_ratio", "ratio", "share of repayments in the window with days_late 0 (0 to 1; "
                                               "no value without repayments)"),
    Metric("late_repayments", "count", "repayments in the window with days_late above 0"),
    Metric("products_held", "count", "distinct non-loan products ever taken up (product.purchased)"),
    Metric("tenure_months", "months", "whole months since the first onboarding (or first event)"),
    Metric("average_deposit_balance", "money", "the latest reported average balance of each calendar month of "
                                                "the window, summed and divided by the window's months (a month "
                                                "not reported counts 0)"),
    Metric("latest_nps", "score", "the latest NPS answer in the window (no value without one)"),
    Metric("referrals", "count", "referrals converted in the window"),
    Metric("events_attended", "count", "lender events attended in the window"),
    Metric("days_since_loan_activity", "days", "whole days since the latest drawdown or repayment, in the window "
                                               "or before it (no value without one)"),
    Metric("loan_volume_change", "ratio", "loan volume in the window against the window before it: -0.5 is half "
                                          "as much (no value when the window before had none)"),
]}

# Which attribute of each event type the metrics read: (money attribute, integer attribute, label attribute).
METRIC_INPUTS: dict[str, tuple[str | None, str | None, str | None]] = {
    "loan.drawn": ("amount", None, "product"),
    "repayment.made": ("amount", "days_late", None),
    "deposit.reported": ("average_balance", None, "month"),
    "product.purchased": (None, None, "product"),
    "survey.answered": (None, "nps", None),
    "event.attended": (None, None, "kind"),
}

Values = dict[str, Decimal | None]  # metric name → value; None when the client has no data for it


@dataclass(frozen=True)
class Check:
    """One threshold against a client's value: the reason a qualification held or failed."""

    metric: str
    operator: str
    threshold: Decimal
    value: Decimal | None
    met: bool

    def as_dict(self) -> dict:
        """JSON form, with decimals as text."""
        return {"metric": self.metric, "operator": self.operator, "threshold": str(self.threshold),
                "value": display(self.value), "met": self.met}


def display(value: Decimal | None) -> str | None:
    """A metric value as text: at most 4 decimals, cut (never rounded up, so 0.89999 shows 0.8999)."""
    if value is None:
        return None
    shown = value.quantize(Decimal("0.0001"), rounding=ROUND_DOWN) if value != value.to_integral_value() else value
    return format(shown.normalize(), "f")


_MEETS = {"gte": operator.ge, "gt": operator.gt, "lte": operator.le, "lt": operator.lt}


def check(threshold: Threshold, values: Values) -> Check:
    """Compare a client's metric with a threshold; a missing value never meets it."""
    value = values.get(threshold.metric)
    op = threshold.operator
    limit = getattr(threshold, op)  # threshold.value without finding the operator again: reviews check every client
    met = value is not None and _MEETS[op](value, limit)
    return Check(threshold.metric, op, limit, value, met)


def qualifies(qualification: Qualification | None, values: Values) -> tuple[bool, list[Check]]:
    """Whether the qualification holds, and every check made (for the tier decision's reasons)."""
    if qualification is None:
        return True, []
    checks: list[Check] = []
    results = []
    for item in qualification.all or qualification.any or []:
        if isinstance(item, Threshold):
            result = check(item, values)
            checks.append(result)
            results.append(result.met)
        else:
            held, nested = qualifies(item, values)
            checks.extend(nested)
            results.append(held)
    return (all(results) if qualification.all is not None else any(results)), checks


@dataclass(frozen=True)
class Placement:
    """The tier a client's metrics earn, with each tier's verdict (the reasons of the decision)."""

    tier: str
    verdicts: dict[str, tuple[bool, list[Check]]]

    def reasons(self, *tiers: str) -> list[dict]:
        """The checks behind the verdicts of `tiers`, as JSON."""
        return [{"tier": tier, "qualifies": self.verdicts[tier][0],
                 "checks": [c.as_dict() for c in self.verdicts[tier][1]]} for tier in dict.fromkeys(tiers)
                if self.verdicts.get(tier, (True, []))[1]]  # the lowest tier has no checks to show


def place(tiers: list, values: Values) -> Placement:
    """The highest tier (of `tiers`, lowest first) whose qualification holds; the lowest always does."""
    verdicts = {tier.id: qualifies(tier.qualification, values) for tier in tiers}
    chosen = tiers[0].id
    for tier in tiers[1:]:
        if verdicts[tier.id][0]:
            chosen = tier.id
    return Placement(chosen, verdicts)
