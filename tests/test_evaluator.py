"""Every rule of the shipped programme, evaluated purely (no database)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from engine.context import ClientContext, context_at, tier_at, whole_months
from engine.events import validate_event
from engine.evaluator import evaluate
from rewards.kinds import Kind, Use
from rewards.points import apply_multiplier
from tests.conftest import event

AT = "2026-03-01T10:00:00Z"


@pytest.fixture(scope="module")
def programme(programmes):
    return programmes.current


def run(programme, type_: str, tier: str = "standard", segment: str | None = "transactional", tenure: int = 0,
        **data):
    typed = validate_event(event("e1", "C-1", type_, AT, **data), programme.model.event_types, programme.currency)
    outcomes = evaluate(programme, typed, ClientContext("C-1", tier, segment, tenure))
    points = {o.rule.rule.id: o.points.points for o in outcomes if o.points}
    grants = {o.rule.rule.id: o.grants for o in outcomes if o.grants}
    return [o.rule.rule.id for o in outcomes], points, grants


def drawdown(programme, amount: str, product: str = "working_capital", tier: str = "standard"):
    return run(programme, "loan.drawn", tier=tier, loan_id="L1", product=product, amount=amount, currency="CNY",
               term_months=12)


def test_drawdown_points_use_the_tier_multiplier(programme):
    assert drawdown(programme, "30000000.00")[1] == {"drawdown-points": 3000}
    assert drawdown(programme, "30000000.00", tier="silver")[1] == {"drawdown-points": 3600}
    assert drawdown(programme, "30000000.00", tier="gold")[1] == {"drawdown-points": 4500}
    assert drawdown(programme, "30000000.00", tier="diamond")[1] == {"drawdown-points": 6000}


def test_points_round_down_never_up(programme):
    # 99,999.99 CNY is 9 whole 10,000s: 9 points, never 10.
    assert drawdown(programme, "99999.99")[1] == {"drawdown-points": 9}
    # 7 base points × 1.2 = 8.4 → 8.
    assert drawdown(programme, "70000", tier="silver")[1] == {"drawdown-points": 8}


def test_large_drawdown_grants_a_single_use_discount_first(programme):
    fired, _, grants = drawdown(programme, "50000000.00")
    assert fired == ["large-drawdown-discount", "drawdown-points"]  # priority 20 before the default 100
    [grant] = grants["large-drawdown-discount"]
    assert (grant.kind, grant.bps, grant.use) == (Kind.RATE_DISCOUNT, 10, Use.SINGLE)
    assert grant.products == ("working_capital", "term_loan")
    assert grant.valid_to - grant.valid_from == timedelta(days=180)


def test_large_drawdown_threshold_and_product_are_exact(programme):
    assert "large-drawdown-discount" not in drawdown(programme, "49999999.99")[0]
    assert "large-drawdown-discount" not in drawdown(programme, "80000000", product="project_finance")[0]


def test_on_time_repayment_only(programme):
    on_time = run(programme, "repayment.made", loan_id="L1", amount="1000000", due_date="2026-03-01", days_late=0)
    late = run(programme, "repayment.made", loan_id="L1", amount="1000000", due_date="2026-03-01", days_late=3)
    assert on_time[1] == {"on-time-repayment": 50}
    assert late[0] == []


def test_deposit_cross_sell_referral_survey(programme):
    assert run(programme, "deposit.reported", month="2026-02", average_balance="150000000")[1] == {"deposit-balance": 1500}
    assert run(programme, "product.purchased", tier="gold", product="fx_hedging")[1] == {"cross-sell": 3000}
    _, points, grants = run(programme, "referral.converted", referred_client_id="C-9")
    assert points == {"referral": 5000}
    assert grants["referral"][0].bps == 5 and grants["referral"][0].products == ("working_capital",)
    # Survey points ignore the tier multiplier, whatever the score.
    assert run(programme, "survey.answered", tier="diamond", nps=2)[1] == {"survey-feedback": 200}


def test_event_attendance(programme):
    assert run(programme, "event.attended", kind="client_day")[1] == {"client-day": 500}
    assert run(programme, "event.attended", kind="salon")[1] == {"forum-salon-training": 300}
    fired, _, grants = run(programme, "event.attended", tier="gold", kind="client_day")
    assert fired == ["gold-client-day-fast-track", "client-day"]
    [lane] = grants["gold-client-day-fast-track"]
    assert lane.kind == Kind.FAST_TRACK and lane.detail == {"lane": "express_24h", "sla_hours": 24}
    assert "gold-client-day-fast-track" not in run(programme, "event.attended", tier="silver", kind="client_day")[0]


def test_special_assistance_needs_segment_and_tenure(programme):
    args = dict(loan_id="L1", amount="100000", due_date="2026-03-01", days_late=0)
    eligible = run(programme, "repayment.made", segment="special_assistance", tenure=12, **args)
    assert eligible[2]["special-assistance-recovery"][0].detail == {"fee_waiver_pct": 50}
    assert "special-assistance-recovery" not in run(programme, "repayment.made", segment="special_assistance",
                                                    tenure=11, **args)[0]
    assert "special-assistance-recovery" not in run(programme, "repayment.made", segment=None, tenure=40, **args)[0]


def test_multiplier_rounding_rule():
    assert apply_multiplier(7, Decimal("1.2")) == 8
    assert apply_multiplier(5, Decimal("1.5")) == 7
    assert apply_multiplier(0, Decimal("2")) == 0


def test_client_context_as_of_a_moment():
    start = datetime(2025, 1, 31, 12, tzinfo=UTC)
    assert whole_months(start, datetime(2025, 2, 28, 12, tzinfo=UTC)) == 0
    assert whole_months(start, datetime(2025, 3, 31, 12, tzinfo=UTC)) == 2
    assert whole_months(start, datetime(2024, 3, 31, tzinfo=UTC)) == 0
    history = [(datetime(2026, 1, 1, tzinfo=UTC), "silver"), (datetime(2026, 4, 1, tzinfo=UTC), "gold")]
    assert tier_at(history, datetime(2025, 12, 31, tzinfo=UTC), "standard") == "standard"
    assert tier_at(history, datetime(2026, 1, 1, tzinfo=UTC), "standard") == "silver"
    assert tier_at(history, datetime(2026, 5, 1, tzinfo=UTC), "standard") == "gold"
    onboardings = [(datetime(2026, 2, 1, tzinfo=UTC), "special_assistance"),
                   (datetime(2026, 7, 1, tzinfo=UTC), "strategic")]
    first_seen = datetime(2026, 1, 10, tzinfo=UTC)
    before = context_at("C", datetime(2026, 1, 15, tzinfo=UTC), history, "standard", onboardings, first_seen)
    assert before.segment is None and before.tenure_months == 0  # not onboarded yet at that moment
    middle = context_at("C", datetime(2026, 6, 30, tzinfo=UTC), history, "standard", onboardings, first_seen)
    assert (middle.tier, middle.segment, middle.tenure_months) == ("gold", "special_assistance", 4)
    after = context_at("C", datetime(2026, 8, 2, tzinfo=UTC), history, "standard", onboardings, first_seen)
    assert (after.segment, after.tenure_months) == ("strategic", 6)  # tenure counts from the first onboarding
