"""Tier qualification and reviews: metrics from SQL, placement, ledger moves, idempotency (both databases)."""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from engine.metrics import METRICS, place, qualifies
from engine.schema import Qualification
from service.benefits import client_benefits
from service.ingest import Ingestor
from service.profile import client_profile
from service.reversal import reverse_event
from service.review import run_review
from service.tier_moves import effective_moment
from storage import clients as client_store
from storage import ledger, review_pages, reviews
from storage.db import read_snapshot
from storage.metrics import client_metrics, page_metrics
from storage.models import LedgerEntry, TierAssignment
from tests.conftest import event, ndjson

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def ingest(engine, programmes, *events):
    report = Ingestor(engine, programmes, clock=lambda: NOW).ingest_lines(ndjson(*events).splitlines())
    assert report.rejected == 0, report.errors


def drawn(event_id, client, at, amount, product="working_capital"):
    return event(event_id, client, "loan.drawn", at, loan_id="L-" + event_id, product=product, amount=amount,
                 currency="CNY", term_months=12)


def repaid(event_id, client, at, days_late=0, amount="100000"):
    return event(event_id, client, "repayment.made", at, loan_id="L", amount=amount, due_date=at[:10],
                 days_late=days_late)


def counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(select(func.count()).select_from(LedgerEntry.__table__)).scalar_one(),
                conn.execute(select(func.count()).select_from(TierAssignment.__table__)).scalar_one())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_page_reads_by_id_range_the_metrics_of_its_clients(engine, programmes):
    """page_metrics (the review's read, by client-id range) gives each page's clients what client_metrics
    gives them from a list of their ids: window edges, reversals, restated and late deposit reports."""
    events = []
    for n, client in enumerate(("C-1", "C-2", "C-3", "C-4", "C-5")):
        events += [event(f"o{n}", client, "client.onboarded", "2024-02-15T00:00:00Z", name=client, segment="strategic"),
                   drawn(f"a{n}", client, "2025-10-31T23:59:59Z", str(1000 * (n + 1))),
                   drawn(f"b{n}", client, "2025-11-01T00:00:01Z", "0.10"),
                   drawn(f"c{n}", client, "2026-10-31T12:00:00Z", str(n + 1)),
                   repaid(f"r{n}", client, "2026-03-10T00:00:00Z", days_late=n),
                   event(f"d{n}", client, "deposit.reported", "2026-04-30T00:00:00Z", month="2026-04",
                         average_balance="10.00"),
                   event(f"e{n}", client, "deposit.reported", "2026-11-02T00:00:00Z", month="2026-04",
                         average_balance=str(n + 1)),  # a report of the window known only after as_of
                   event(f"s{n}", client, "survey.answered", "2026-06-01T00:00:00Z", nps=n)]
    ingest(engine, programmes, *events)
    reverse_event(engine, "r2")
    as_of, start = at("2026-11-01T00:00:00Z"), at("2025-11-01T00:00:00Z")
    with read_snapshot(engine) as conn:
        pages = review_pages.bounds(reviews.all_client_ids(conn), 2)
        assert len(pages) == 3
        for page in pages:
            ids = review_pages.clients(conn, page)
            read = page_metrics(conn, as_of, start, 12, "CNY", page)
            assert read == client_metrics(conn, as_of, start, 12, "CNY", ids)
            assert sorted(read) == ids
            tiers = reviews.tiers_in_force(conn, as_of, page)
            assert tiers == client_store.tiers_as_of(conn, as_of, ids) and sorted(tiers) == ids


def test_activity_from_a_moment_reads_the_activity_that_can_move_an_effective_moment(engine, programmes):
    """activity_from reads only the months from the moment's on; the effective moments it gives are those
    of the client's whole history (an event at a month's first instant belongs to the month before)."""
    ingest(engine, programmes, drawn("a", "C-1", "2025-03-01T00:00:00Z", "100"),
           drawn("b", "C-1", "2025-07-01T00:00:00Z", "100"),  # exactly the moment, at a month boundary
           drawn("c", "C-2", "2025-05-01T00:00:00Z", "100"), drawn("d", "C-2", "2025-06-30T23:59:59Z", "100"),
           drawn("e", "C-3", "2025-03-01T00:00:00Z", "100"), drawn("f", "C-3", "2025-09-15T00:00:00Z", "100"))
    moment = at("2025-07-01T00:00:00Z")
    with read_snapshot(engine) as conn:
        whole = client_store.last_activity(conn, ["C-1", "C-2", "C-3"])
        narrow = reviews.activity_from(conn, ["C-1", "C-2", "C-3"], moment)
    assert (narrow["C-1"], narrow["C-3"]) == (at("2025-07-01T00:00:00Z"), at("2025-09-15T00:00:00Z"))
    assert narrow.get("C-2", at("2025-01-01T00:00:00Z")) < moment  # earlier activity: missing, or read and ignored
    for client_id in ("C-1", "C-2", "C-3"):
        assert effective_moment(moment, narrow.get(client_id)) == effective_moment(moment, whole.get(client_id))


# --- qualification (pure) -----------------------------------------------------------------------------

def test_thresholds_hold_exactly_at_the_limit(programmes):
    tiers = programmes.current.model.tiers
    base = dict.fromkeys(METRICS, Decimal(0))
    exactly = {**base, "loan_volume": Decimal("100000000.00"), "on_time_repayment_ratio": Decimal("0.95")}
    assert place(tiers, exactly).tier == "diamond"
    a_cent_short = {**exactly, "loan_volume": Decimal("99999999.99")}
    assert place(tiers, a_cent_short).tier == "gold"
    ratio_short = {**exactly, "on_time_repayment_ratio": Decimal("0.9499")}
    assert place(tiers, ratio_short).tier == "gold"
    no_repayments = {**exactly, "on_time_repayment_ratio": None}
    placement = place(tiers, no_repayments)
    assert placement.tier == "silver"  # a missing value never meets a threshold
    assert placement.verdicts["gold"][1][1].as_dict() == {"metric": "on_time_repayment_ratio", "operator": "gte",
                                                         "threshold": "0.9", "value": None, "met": False}


def test_strict_comparisons_and_nested_groups():
    group = Qualification.model_validate({"any": [{"metric": "loan_volume", "gt": 10},
                                                  {"all": [{"metric": "latest_nps", "gte": 9},
                                                           {"metric": "late_repayments", "lt": 1}]}]})
    assert qualifies(group, {"loan_volume": Decimal(10), "latest_nps": Decimal(9), "late_repayments": Decimal(1)})[0] is False
    assert qualifies(group, {"loan_volume": Decimal(10), "latest_nps": Decimal(9), "late_repayments": Decimal(0)})[0] is True
    assert qualifies(group, {"loan_volume": Decimal("10.01"), "latest_nps": None, "late_repayments": None})[0] is True


# --- metrics (SQL) --------------------------------------------------------------------------------------

def test_metrics_are_exact_and_respect_the_window(engine, programmes):
    ingest(engine, programmes,
           event("o", "C-1", "client.onboarded", "2024-02-15T00:00:00Z", name="A", segment="strategic"),
           drawn("old", "C-1", "2025-10-31T23:59:59Z", "90000000"),   # outside a window ending 2026-10-31
           drawn("d1", "C-1", "2025-11-01T00:00:01Z", "0.10"),
           drawn("d2", "C-1", "2026-10-31T00:00:00Z", "0.20"),
           drawn("later", "C-1", "2026-11-02T00:00:00Z", "5000000"),  # after as_of
           repaid("r1", "C-1", "2026-01-10T00:00:00Z"), repaid("r2", "C-1", "2026-02-10T00:00:00Z", days_late=3),
           repaid("r3", "C-1", "2026-03-10T00:00:00Z"),
           event("p1", "C-1", "product.purchased", "2026-01-01T00:00:00Z", product="payroll"),
           event("p2", "C-1", "product.purchased", "2026-02-01T00:00:00Z", product="payroll"),
           event("p3", "C-1", "product.purchased", "2026-03-01T00:00:00Z", product="fx_hedging"),
           event("dep", "C-1", "deposit.reported", "2026-03-31T00:00:00Z", month="2026-03", average_balance="1200.12"),
           event("dep2", "C-1", "deposit.reported", "2026-04-30T00:00:00Z", month="2026-04", average_balance="10.00"),
           event("dep2-fix", "C-1", "deposit.reported", "2026-05-02T00:00:00Z", month="2026-04", average_balance="20.00"),
           event("dep-old", "C-1", "deposit.reported", "2025-11-02T00:00:00Z", month="2025-10", average_balance="999"),
           event("s1", "C-1", "survey.answered", "2026-04-01T00:00:00Z", nps=3),
           event("s2", "C-1", "survey.answered", "2026-06-01T00:00:00Z", nps=8),
           event("ref", "C-1", "referral.converted", "2026-05-01T00:00:00Z", referred_client_id="X"))
    reverse_event(engine, "r3")
    with read_snapshot(engine) as conn:
        values = client_metrics(conn, at("2026-11-01T00:00:00Z"), at("2025-11-01T00:00:00Z"), 12, "CNY")["C-1"]
    assert values["loan_volume"] == Decimal("0.30")
    assert values["drawdown_count"] == 2
    assert values["on_time_repayment_ratio"] == Decimal(1) / Decimal(2)  # r3 was reversed
    assert values["late_repayments"] == 1
    assert values["products_held"] == 2
    # Each month's latest report counts once; a report of a month before the window does not count.
    assert values["average_deposit_balance"] == Decimal("1220.12") / 12
    assert values["latest_nps"] == 8
    assert values["referrals"] == 1
    assert values["tenure_months"] == 32


# --- reviews ----------------------------------------------------------------------------------------------

def test_a_client_moves_up_and_down_with_matching_grants_and_revokes(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-1", "2025-03-01T00:00:00Z", "40000000"),
           repaid("r1", "C-1", "2025-04-01T00:00:00Z"))
    # The shipped policy upgrades to gold instantly: with the repayment that made the client qualify.
    history = client_profile(engine, programmes, "C-1", at("2025-05-01T00:00:00Z")).tier_history
    assert [(h.tier, h.valid_from, h.reason) for h in history][-1] == \
        ("gold", "2025-04-01T00:00:00.000001+00:00", "instant upgrade: qualifies for gold")
    first = run_review(engine, programmes, at("2025-06-30T00:00:00Z"), clock=lambda: NOW)
    assert first.changes == [] and first.tiers_after["gold"] == 1
    gold = client_benefits(engine, programmes, "C-1", at("2025-07-01T00:00:00Z"), "working_capital").model_dump(
        mode="json")
    assert (gold["tier"], gold["rate_discount_bps"], gold["fast_track_sla_hours"]) == ("gold", 10, 72)

    ingest(engine, programmes, drawn("d2", "C-1", "2026-02-01T00:00:00Z", "12000000"))
    second = run_review(engine, programmes, at("2026-06-30T00:00:00Z"), clock=lambda: NOW)
    # The shipped policy's 30-day grace: the client keeps gold, and is told until when.
    assert second.changes == []
    assert [(h["client_id"], h["tier"], h["qualifies_for"], h["hold"], h["until"]) for h in second.held] == \
        [("C-1", "gold", "silver", "grace", "2026-07-30T00:00:00+00:00")]
    third = run_review(engine, programmes, at("2026-07-31T00:00:00Z"), clock=lambda: NOW)
    [change] = third.changes
    assert (change.from_tier, change.to_tier, change.direction, change.policy) == \
        ("gold", "silver", "downgrade", "grace ended")
    gold_reason = next(r for r in change.reasons if r["tier"] == "gold")
    assert gold_reason["qualifies"] is False
    assert {"metric": "loan_volume", "operator": "gte", "threshold": "30000000", "value": "12000000",
            "met": False} in gold_reason["checks"]

    with read_snapshot(engine) as conn:
        entries = ledger.client_entries(conn, "C-1")
        assert ledger.verify(conn) == []
    granted = {e["id"]: e for e in entries if e["reason"] == "grant" and e["rule_id"] == "tier:gold"}
    revoked = [e for e in entries if e["reason"] == "revoke"]
    assert sorted(e["entitlement_id"] for e in revoked) == sorted(granted)
    assert all(e["bps"] == -granted[e["entitlement_id"]]["bps"] for e in revoked)
    silver = client_benefits(engine, programmes, "C-1", at("2026-08-01T00:00:00Z"), "working_capital").model_dump(
        mode="json")
    assert (silver["tier"], silver["rate_discount_bps"], silver["fast_track_sla_hours"]) == ("silver", 5, 120)
    assert {e["rule_id"] for e in silver["entitlements"]} == {"tier:silver"}
    # The past is unchanged: while gold, the client held gold's benefits.
    then = client_benefits(engine, programmes, "C-1", at("2026-01-01T00:00:00Z"), "working_capital").model_dump(
        mode="json")
    assert (then["tier"], then["rate_discount_bps"], then["fast_track_sla_hours"]) == ("gold", 10, 72)
    assert {e["rule_id"] for e in then["entitlements"]} == {"tier:gold"}


def test_events_after_an_upgrade_earn_at_the_new_tier(engine, plain_programmes):
    programmes = plain_programmes  # review mechanics, without the shipped policy's holds
    ingest(engine, programmes, drawn("d1", "C-1", "2025-03-01T00:00:00Z", "150000000"),
           repaid("r1", "C-1", "2025-04-01T00:00:00Z"))
    run_review(engine, programmes, at("2025-06-30T00:00:00Z"), clock=lambda: NOW)
    ingest(engine, programmes, drawn("before", "C-1", "2025-06-29T00:00:00Z", "100000"),
           drawn("after", "C-1", "2025-07-01T00:00:00Z", "100000"))
    with read_snapshot(engine) as conn:
        points = {e["event_id"]: e["points"] for e in ledger.client_entries(conn, "C-1") if e["kind"] == "points"}
    assert (points["before"], points["after"]) == (10, 20)  # diamond doubles from the review on


def test_review_twice_changes_nothing_and_dry_run_writes_nothing(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-1", "2026-03-01T00:00:00Z", "15000000"),
           drawn("d2", "C-2", "2026-03-01T00:00:00Z", "500000"))
    before = counts(engine)
    dry = run_review(engine, programmes, at("2026-06-30T00:00:00Z"), dry_run=True)
    assert dry.review_id is None and [c.to_tier for c in dry.changes] == ["silver"]
    assert counts(engine) == before
    real = run_review(engine, programmes, at("2026-06-30T00:00:00Z"))
    after_first = counts(engine)
    assert len(real.changes) == 1 and after_first != before
    again = run_review(engine, programmes, at("2026-06-30T00:00:00Z"))
    later = run_review(engine, programmes, at("2026-07-15T00:00:00Z"))
    assert again.changes == [] and later.changes == []
    assert again.tiers_after == {"standard": 1, "silver": 1, "gold": 0, "diamond": 0}
    assert counts(engine) == after_first


def test_a_move_takes_effect_after_activity_already_applied_beyond_the_review_moment(engine, plain_programmes):
    programmes = plain_programmes  # review mechanics, without the shipped policy's holds
    ingest(engine, programmes, drawn("d1", "C-1", "2025-03-01T00:00:00Z", "150000000"),
           repaid("r1", "C-1", "2025-04-01T00:00:00Z"),
           drawn("late", "C-1", "2025-07-01T00:00:00Z", "100000"))  # applied before the review runs
    [change] = run_review(engine, programmes, at("2025-06-30T00:00:00Z"), clock=lambda: NOW).changes
    assert change.effective_from == at("2025-07-01T00:00:00.000001Z")
    ingest(engine, programmes, drawn("between", "C-1", "2025-06-30T12:00:00Z", "100000"),
           drawn("after", "C-1", "2025-07-02T00:00:00Z", "100000"))
    with read_snapshot(engine) as conn:
        points = {e["event_id"]: e["points"] for e in ledger.client_entries(conn, "C-1") if e["kind"] == "points"}
        assert ledger.verify(conn) == []
    # Every event earned under the tier its time had in the history: standard until the move, then diamond.
    assert (points["late"], points["between"], points["after"]) == (10, 10, 20)


def test_rerunning_at_the_same_moment_after_late_activity_skips_with_a_reason(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-1", "2026-03-01T00:00:00Z", "15000000"))
    first = run_review(engine, programmes, at("2026-06-30T00:00:00Z"))
    ingest(engine, programmes, drawn("d2", "C-1", "2026-04-01T00:00:00Z", "20000000"),
           repaid("r1", "C-1", "2026-05-01T00:00:00Z"))
    again = run_review(engine, programmes, at("2026-06-30T00:00:00Z"))
    assert again.changes == []
    assert again.skipped == [{"client_id": "C-1", "reason": f"already decided at this moment by {first.review_id}; "
                                                           "review at a later moment"}]
    later = run_review(engine, programmes, at("2026-07-01T00:00:00Z"))
    assert [(c.from_tier, c.to_tier) for c in later.changes] == [("silver", "gold")]


def test_a_review_cannot_look_into_the_future(engine, programmes):
    from service.errors import InputError

    with pytest.raises(InputError, match="into the future"):
        run_review(engine, programmes, at("2030-01-01T00:00:00Z"), clock=lambda: NOW)


def test_a_review_before_a_later_decision_skips_the_client(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-1", "2026-03-01T00:00:00Z", "15000000"))
    run_review(engine, programmes, at("2026-06-30T00:00:00Z"))
    earlier = run_review(engine, programmes, at("2026-04-30T00:00:00Z"))
    assert earlier.skipped == [{"client_id": "C-1", "reason": "a later tier decision exists"}]
    assert earlier.changes == []


def test_client_profile_shows_history_reasons_and_metrics(engine, programmes):
    ingest(engine, programmes, event("o", "C-1", "client.onboarded", "2025-01-01T00:00:00Z", name="Huaxin",
                                     segment="strategic"),
           drawn("d1", "C-1", "2026-03-01T00:00:00Z", "15000000"))
    run_review(engine, programmes, at("2026-06-30T00:00:00Z"))
    profile = client_profile(engine, programmes, "C-1", at("2026-07-01T00:00:00Z")).model_dump(mode="json")
    assert (profile["name"], profile["tier"], profile["qualifies_for"]) == ("Huaxin", "silver", "silver")
    assert profile["metrics"]["loan_volume"] == "15000000"
    assert [h["tier"] for h in profile["tier_history"]] == ["standard", "silver"]
    reasons = profile["tier_history"][1]["reasons"]
    assert any(c["metric"] == "loan_volume" and c["met"] for r in reasons if r["tier"] == "silver" for c in r["checks"])


@pytest.mark.parametrize("as_of", ["2026-06-30T00:00:00"])
def test_a_naive_review_moment_is_refused(engine, programmes, as_of):
    from service.errors import InputError

    with pytest.raises(InputError, match="no time zone"):
        run_review(engine, programmes, datetime.fromisoformat(as_of))


def test_average_deposit_counts_the_window_months_at_a_month_boundary(engine, programmes):
    ingest(engine, programmes, *(event(f"d{m}", "C-1", "deposit.reported", f"2025-{m:02d}-28T00:00:00Z",
                                       month=f"2025-{m:02d}", average_balance="1200000") for m in range(1, 13)))
    for moment in ("2026-01-01T00:00:00Z", "2025-12-31T23:00:00Z"):
        with read_snapshot(engine) as conn:
            values = client_metrics(conn, at(moment), at(moment.replace("2026-01-01", "2025-01-01")
                                                             .replace("2025-12-31", "2024-12-31")), 12, "CNY")
        assert values["C-1"]["average_deposit_balance"] == Decimal("1200000")
