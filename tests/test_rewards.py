"""Stacking, ceilings and caps: pure rules, checked by example and by property."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from engine.schema import Cap
from rewards.caps import CapUsage, allowed, period_bounds
from rewards.kinds import Kind, Status, Use
from rewards.stacking import Entitlement, rate_discount, service_benefits

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def discount(id_: int, bps: int, use: Use, products=("working_capital",), valid_to=None, status=Status.ACTIVE,
             valid_from=NOW - timedelta(days=1)) -> Entitlement:
    return Entitlement(id_, "C", Kind.RATE_DISCOUNT, use, bps, tuple(products), {}, valid_from, valid_to, status,
                       "r", "p", "1", None)


def benefit(id_: int, kind: Kind, **detail) -> Entitlement:
    return Entitlement(id_, "C", kind, Use.STANDING, 0, (), detail, NOW - timedelta(days=1), None, Status.ACTIVE,
                       "r", "p", "1", None)


def test_standing_discounts_stack_and_one_single_use_is_added():
    held = [discount(1, 10, Use.STANDING), discount(2, 5, Use.STANDING), discount(3, 8, Use.SINGLE),
            discount(4, 12, Use.SINGLE), discount(5, 30, Use.STANDING, products=("term_loan",))]
    decision = rate_discount(held, "working_capital", NOW, ceiling_bps=50)
    assert decision.bps == 27 and decision.applied == (1, 2, 4)


def test_the_ceiling_caps_the_total():
    held = [discount(1, 40, Use.STANDING), discount(2, 20, Use.SINGLE)]
    decision = rate_discount(held, "working_capital", NOW, ceiling_bps=50)
    assert (decision.bps, decision.uncapped_bps, decision.ceiling_bps) == (50, 60, 50)


def test_expired_future_and_consumed_entitlements_do_not_count():
    held = [discount(1, 10, Use.SINGLE, valid_to=NOW), discount(2, 10, Use.SINGLE, valid_from=NOW + timedelta(1)),
            discount(3, 10, Use.SINGLE, status=Status.CONSUMED)]
    assert rate_discount(held, "working_capital", NOW, 50).bps == 0


def test_equal_single_use_discounts_pick_the_one_expiring_first():
    held = [discount(1, 10, Use.SINGLE, valid_to=NOW + timedelta(days=90)),
            discount(2, 10, Use.SINGLE, valid_to=NOW + timedelta(days=10)), discount(3, 10, Use.SINGLE)]
    assert rate_discount(held, "working_capital", NOW, 50).applied == (2,)


def test_service_benefits_pick_the_best():
    held = [benefit(1, Kind.FAST_TRACK, lane="priority", sla_hours=120),
            benefit(2, Kind.FAST_TRACK, lane="green_channel", sla_hours=48),
            benefit(3, Kind.FEE_WAIVER, fee_waiver_pct=25), benefit(4, Kind.FEE_WAIVER, fee_waiver_pct=50),
            benefit(5, Kind.RELATIONSHIP_MANAGER)]
    result = service_benefits(held, NOW)
    assert (result.fast_track_lane, result.fast_track_sla_hours) == ("green_channel", 48)
    assert result.fee_waiver_pct == 50 and result.relationship_manager
    assert service_benefits([], NOW).fast_track_sla_hours is None


@given(st.lists(st.tuples(st.integers(1, 200), st.sampled_from([Use.SINGLE, Use.STANDING])), max_size=12),
       st.integers(0, 100))
def test_stacking_never_exceeds_the_ceiling_or_uses_two_single_use_grants(grants, ceiling):
    held = [discount(i, bps, use) for i, (bps, use) in enumerate(grants)]
    decision = rate_discount(held, "working_capital", NOW, ceiling)
    assert 0 <= decision.bps <= ceiling
    assert decision.bps == min(decision.uncapped_bps, ceiling)
    singles = [e for e in held if e.id in decision.applied and e.use == Use.SINGLE]
    assert len(singles) <= 1
    assert all(e.id in decision.applied for e in held if e.use == Use.STANDING)


def test_period_bounds_are_utc_calendar_periods():
    at = datetime(2026, 11, 15, 23, 30, tzinfo=UTC)
    assert period_bounds("month", at) == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    assert period_bounds("quarter", at) == (datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert period_bounds("year", at) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert period_bounds("day", at) == (datetime(2026, 11, 15, tzinfo=UTC), datetime(2026, 11, 16, tzinfo=UTC))
    assert period_bounds("lifetime", at) == (None, None)


def test_caps_clip_points_and_stop_firings():
    cap = Cap(per="month", points=2000, times=3)
    assert allowed(cap, CapUsage(points=1500, times=1), 900) == (True, 500)
    assert allowed(cap, CapUsage(points=2000, times=1), 900) == (True, 0)
    assert allowed(cap, CapUsage(points=0, times=3), 900) == (False, 0)
    assert allowed(None, CapUsage(), 900) == (True, 900)
