"""The management loop on both databases: pins, grace, churn flags, points lots and expiry, resumable
reviews under a lease, and the commands people use for them."""
from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

import service.review as review_module
from service.churn import churn_list
from service.errors import ConflictError
from service.expiry import expire_points, expiring
from service.ingest import Ingestor
from service.pins import pin_tier
from service.profile import client_profile
from service.redemptions import redeem
from service.reversal import reverse_event
from service.review import run_review
from storage import leases, ledger
from storage.db import read_snapshot
from storage.models import LedgerEntry, PointsLot, TierAssignment, TierReview
from engine.loader import load_programmes
from tests.conftest import cli_json, event, ndjson, programme_variant, run_cli

NOW = datetime(2027, 6, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ingest(engine, programmes, *events, clock=NOW):
    report = Ingestor(engine, programmes, clock=lambda: clock).ingest_lines(ndjson(*events).splitlines())
    assert report.rejected == 0, report.errors


def drawn(event_id, client, when, amount):
    return event(event_id, client, "loan.drawn", when, loan_id="L-" + event_id, product="working_capital",
                 amount=amount, currency="CNY", term_months=12)


def repaid(event_id, client, when, days_late=0):
    return event(event_id, client, "repayment.made", when, loan_id="L", amount="100000", due_date=when[:10],
                 days_late=days_late)


def bought(event_id, client, when, product):
    return event(event_id, client, "product.purchased", when, product=product)


def verified(engine) -> None:
    with read_snapshot(engine) as conn:
        assert ledger.verify(conn) == []


# --- pins -------------------------------------------------------------------------------------------------

def test_a_pin_moves_the_client_and_reviews_honour_and_report_it_until_it_ends(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-1", "2025-03-01T00:00:00Z", "1000000"))
    pinned = pin_tier(engine, programmes, "C-1", "diamond", at("2025-12-31T00:00:00Z"), "strategic account", "ana",
                      clock=lambda: at("2025-04-01T00:00:00Z"))
    assert (pinned.from_tier, pinned.tier, pinned.moved) == ("standard", "diamond", True)
    profile = client_profile(engine, programmes, "C-1", at("2025-04-02T00:00:00Z")).model_dump(mode="json")
    assert profile["tier"] == "diamond"
    assert profile["tier_history"][-1]["reason"] == "pinned by ana until 2025-12-31: strategic account"

    during = run_review(engine, programmes, at("2025-06-30T00:00:00Z"), clock=lambda: NOW)
    assert during.changes == [] and during.tiers_after["diamond"] == 1
    assert [(p["client_id"], p["tier"], p["qualifies_for"], p["author"], p["reason"]) for p in during.pins] == \
        [("C-1", "diamond", "standard", "ana", "strategic account")]
    # The pin has ended: the policy applies again (30 days of grace first, then one step down per review).
    after = run_review(engine, programmes, at("2026-01-15T00:00:00Z"), clock=lambda: NOW)
    assert after.pins == [] and [h["hold"] for h in after.held] == ["grace"]
    later = run_review(engine, programmes, at("2026-02-20T00:00:00Z"), clock=lambda: NOW)
    assert [(c.from_tier, c.to_tier, c.policy) for c in later.changes] == [("diamond", "gold", "limited to 1 step down")]
    verified(engine)


def test_a_pin_needs_a_known_tier_a_future_end_and_a_reason(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-1", "2025-03-01T00:00:00Z", "1000000"))
    when = lambda: at("2025-04-01T00:00:00Z")  # noqa: E731
    with pytest.raises(ValueError, match="no tier 'platinum'"):
        pin_tier(engine, programmes, "C-1", "platinum", at("2025-12-31T00:00:00Z"), "r", "a", clock=when)
    with pytest.raises(ValueError, match="not in the future"):
        pin_tier(engine, programmes, "C-1", "gold", at("2025-03-31T00:00:00Z"), "r", "a", clock=when)
    with pytest.raises(ValueError, match="needs a reason"):
        pin_tier(engine, programmes, "C-1", "gold", at("2025-12-31T00:00:00Z"), "  ", "a", clock=when)
    with pytest.raises(LookupError, match="no client 'C-9'"):
        pin_tier(engine, programmes, "C-9", "gold", at("2025-12-31T00:00:00Z"), "r", "a", clock=when)


# --- grace, churn -----------------------------------------------------------------------------------------

def test_churn_flags_are_raised_with_their_signals_and_cleared_with_history(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-1", "2025-01-10T00:00:00Z", "40000000"),
           repaid("r1", "C-1", "2025-02-10T00:00:00Z"),
           event("s1", "C-1", "survey.answered", "2025-03-01T00:00:00Z", nps=3),
           drawn("d2", "C-2", "2025-01-10T00:00:00Z", "1000"))
    first = run_review(engine, programmes, at("2025-09-01T00:00:00Z"), clock=lambda: NOW)
    [flag] = first.churn_flagged  # C-2 is standard: below the policy's min_tier, never flagged
    assert (flag["client_id"], flag["tier"], flag["new"]) == ("C-1", "gold", True)
    assert {(s["id"], s["value"]) for s in flag["signals"]} == {("dormant", "203"), ("unhappy", "3")}

    ingest(engine, programmes, drawn("d3", "C-1", "2025-10-01T00:00:00Z", "5000000"),
           event("s2", "C-1", "survey.answered", "2025-10-02T00:00:00Z", nps=9))
    second = run_review(engine, programmes, at("2025-10-15T00:00:00Z"), clock=lambda: NOW)
    assert second.churn_flagged == [] and [c["client_id"] for c in second.churn_cleared] == ["C-1"]
    assert churn_list(engine, "CNY") == []
    [history] = churn_list(engine, "CNY", history=True)
    assert (history.raised_by, history.cleared_by) == (first.review_id, second.review_id)
    assert history.loan_volume == "40000000.00"


# --- points lots and expiry -------------------------------------------------------------------------------

PRODUCTS = ["payroll", "insurance", "cash_management", "fx_hedging", "trade_services"]


def five_lots(engine, programmes):
    """Five lots of 2,000 points (cross-sales), earned a month apart from 2025-01-10."""
    ingest(engine, programmes, *(bought(f"p{i}", "C-1", f"2025-0{i + 1}-10T00:00:00Z", product)
                                 for i, product in enumerate(PRODUCTS)))


def lots_left(engine) -> dict[str, int]:
    lots = PointsLot.__table__
    with read_snapshot(engine) as conn:
        return dict(conn.execute(select(lots.c.event_id, lots.c.remaining).order_by(lots.c.event_id)).all())


def test_redemptions_take_the_oldest_lots_and_expiry_takes_only_what_is_left(engine, programmes):
    five_lots(engine, programmes)
    redeem(engine, programmes, "C-1", "fast-track-24h", clock=lambda: at("2025-06-01T00:00:00Z"))  # 8,000 points
    assert lots_left(engine) == {"p0": 0, "p1": 0, "p2": 0, "p3": 0, "p4": 2000}

    soon = expiring(engine, programmes, at("2027-04-20T00:00:00Z"), timedelta(days=30))
    assert [(lot.event_id, lot.points, lot.expires_at) for lot in soon] == \
        [("p4", 2000, "2027-05-10T00:00:00+00:00")]
    nothing = expire_points(engine, programmes, at("2027-04-30T00:00:00Z"), clock=lambda: NOW)
    assert (nothing.points, nothing.lots) == (0, 0)  # p0-p3 expired in their time, but nothing was left in them
    dry = expire_points(engine, programmes, at("2027-05-10T00:00:00Z"), dry_run=True, clock=lambda: NOW)
    assert (dry.points, dry.lots) == (2000, 1) and lots_left(engine)["p4"] == 2000
    done = expire_points(engine, programmes, at("2027-05-10T00:00:00Z"), clock=lambda: NOW)
    assert (done.points, done.lots, done.clients) == (2000, 1, {"C-1"})
    again = expire_points(engine, programmes, at("2027-05-31T00:00:00Z"), clock=lambda: NOW)
    assert again.points == 0
    with read_snapshot(engine) as conn:
        [entry] = [e for e in ledger.client_entries(conn, "C-1") if e["reason"] == "expire"]
    assert (entry["points"], entry["event_id"], entry["rule_id"], entry["valid_from"]) == \
        (-2000, "p4", "cross-sell", "2027-05-10T00:00:00+00:00")
    assert entry["detail"]["expires_at"] == "2027-05-10T00:00:00+00:00"
    verified(engine)


def test_points_past_their_expiry_cannot_be_spent_even_before_the_expiry_job_runs(engine, programmes):
    five_lots(engine, programmes)  # p0-p2 expire by 2027-03-10, p3 and p4 later
    with pytest.raises(ConflictError) as refused:
        redeem(engine, programmes, "C-1", "fast-track-24h", clock=lambda: at("2027-03-15T00:00:00Z"))
    assert (refused.value.code, refused.value.facts["balance"]) == ("insufficient-points", 4000)
    assert lots_left(engine)["p0"] == 2000  # the refusal wrote nothing; the expiry job will write it


def test_reversing_points_already_spent_writes_them_off_and_the_balance_stops_at_zero(engine, programmes):
    five_lots(engine, programmes)
    redeem(engine, programmes, "C-1", "fast-track-24h", clock=lambda: at("2025-06-01T00:00:00Z"))
    first = reverse_event(engine, "p0", clock=lambda: NOW).model_dump(mode="json")
    assert first["points_written_off"] == 0  # the 2,000 left cover it
    second = reverse_event(engine, "p1", clock=lambda: NOW).model_dump(mode="json")
    assert second["points_written_off"] == 2000
    with read_snapshot(engine) as conn:
        entries = ledger.client_entries(conn, "C-1")
        balance = sum(e["points"] for e in entries)
    [write_off] = [e for e in entries if e["reason"] == "adjust"]
    assert (balance, write_off["points"], write_off["event_id"]) == (0, 2000, "p1")
    assert client_profile(engine, programmes, "C-1", NOW).points_balance == 0
    verified(engine)


def test_a_reversal_takes_back_its_own_lot_and_writes_off_what_already_expired(engine, programmes):
    five_lots(engine, programmes)
    reverse_event(engine, "p4", clock=lambda: NOW)  # the newest earning: its own lot, not the oldest
    assert lots_left(engine) == {"p0": 2000, "p1": 2000, "p2": 2000, "p3": 2000, "p4": 0}
    expire_points(engine, programmes, at("2027-01-10T00:00:00Z"), clock=lambda: NOW)  # p0 expires
    reversed_ = reverse_event(engine, "p0", clock=lambda: NOW).model_dump(mode="json")
    # The expired points were never used: nothing is taken from the client's other points for them.
    assert reversed_["points_written_off"] == 2000
    assert lots_left(engine) == {"p0": 0, "p1": 2000, "p2": 2000, "p3": 2000, "p4": 0}
    verified(engine)


# --- running reviews --------------------------------------------------------------------------------------

def test_one_review_at_a_time_and_an_interrupted_review_resumes_without_double_effects(engine, programmes,
                                                                                     monkeypatch):
    ingest(engine, programmes, *(drawn(f"d{i}", f"C-{i}", "2025-02-01T00:00:00Z", "20000000") for i in range(4)))
    moment = at("2025-06-30T00:00:00Z")
    assert leases.acquire(engine, review_module.LEASE, "elsewhere", timedelta(minutes=5), NOW)
    with pytest.raises(ConflictError, match="another tier review is running"):
        run_review(engine, programmes, moment, clock=lambda: NOW)
    leases.release(engine, review_module.LEASE, "elsewhere")

    monkeypatch.setattr(review_module, "PAGE", 1)
    pages = []

    def crash_after_two_pages(count: int) -> None:
        pages.append(count)
        if len(pages) == 2:
            raise RuntimeError("the machine went down")

    with pytest.raises(RuntimeError):
        run_review(engine, programmes, moment, clock=lambda: NOW, review_id="review-q2", progress=crash_after_two_pages)
    assert leases.current(engine, review_module.LEASE) is None  # released on the way out
    resumed = run_review(engine, programmes, moment, clock=lambda: NOW, review_id="review-q2")
    # The report and the audit row cover the whole review: the pages written before the crash recorded
    # their share of the report with their moves, reasons included.
    assert resumed.resumed and resumed.migration == {"standard": {"silver": 4}} and resumed.skipped == []
    assert [c.policy for c in resumed.changes] == ["review"] * 4 and all(c.reasons for c in resumed.changes)
    tiers, reviews = TierAssignment.__table__, TierReview.__table__
    with read_snapshot(engine) as conn:
        moves = conn.execute(select(func.count()).select_from(tiers).where(tiers.c.review_id == "review-q2")).scalar()
        audit = conn.execute(select(reviews.c.finished_at, reviews.c.clients, reviews.c.upgrades)
                             .where(reviews.c.id == "review-q2")).one()
    assert moves == 4 and audit.finished_at is not None and (audit.clients, audit.upgrades) == (4, 4)
    with pytest.raises(ConflictError, match="already finished"):
        run_review(engine, programmes, moment, clock=lambda: NOW, review_id="review-q2")
    verified(engine)


def test_a_dry_run_writes_nothing_not_even_expiry(engine, programmes):
    five_lots(engine, programmes)
    ingest(engine, programmes, drawn("d1", "C-2", "2025-01-10T00:00:00Z", "40000000"))
    entries = LedgerEntry.__table__
    with read_snapshot(engine) as conn:
        before = conn.execute(select(func.count()).select_from(entries)).scalar()
    report = run_review(engine, programmes, at("2027-05-31T00:00:00Z"), dry_run=True, clock=lambda: NOW)
    assert report.points_expired == {"as_of": "2027-05-31T00:00:00+00:00", "dry_run": True, "points": 10000 + 4000,
                                      "lots": 6, "clients": 2}
    with read_snapshot(engine) as conn:
        assert conn.execute(select(func.count()).select_from(entries)).scalar() == before
    assert set(lots_left(engine).values()) == {2000, 4000}


# --- commands ---------------------------------------------------------------------------------------------

def test_the_loop_from_the_command_line(db_url, tmp_path):
    cli_json("init", db_url=db_url)
    # The command reads the clock: points earned almost 24 months ago (but not before the programme began).
    today = datetime.now(UTC).replace(microsecond=0)
    moment = max(today - timedelta(days=700), datetime(2025, 1, 2, tzinfo=UTC))
    earned = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    within = f"{(moment.replace(year=moment.year + 2) - today).days + 2}d"
    events = [bought("p1", "C-1", earned, "payroll"), drawn("d1", "C-1", earned, "40000000"),
              repaid("r1", "C-1", earned), drawn("d2", "C-2", earned, "1000")]
    source = tmp_path / "events.jsonl"
    source.write_text(ndjson(*events))
    assert cli_json("ingest", str(source), db_url=db_url)["applied"] == 4

    soon = cli_json("points", "expiring", "--within", within, db_url=db_url)
    assert soon["points"] == 2000 + 4000 + 5 and {lot["client_id"] for lot in soon["lots"]} == {"C-1"}
    assert run_cli("points", "expiring", "--within", "soon", db_url=db_url).returncode == 2

    pin = cli_json("tier", "set", "C-2", "gold", "--until", (today + timedelta(days=90)).strftime("%Y-%m-%d"),
                   "--reason", "new strategic relationship", "--author", "ana", db_url=db_url)
    assert (pin["tier"], pin["moved"], pin["author"]) == ("gold", True, "ana")
    unknown = run_cli("tier", "set", "C-2", "platinum", "--until", "2099-01-01", "--reason", "x", db_url=db_url)
    assert unknown.returncode == 2 and "no tier 'platinum'" in unknown.stderr

    report_dir = tmp_path / "report"
    result = cli_json("review", "--report", str(report_dir), db_url=db_url)
    assert [p["client_id"] for p in result["pins"]] == ["C-2"]
    assert {Path_name(f) for f in result["report_files"]} >= {"summary.csv", "migration.csv", "report.html"}
    with open(report_dir / "pins.csv", newline="") as handle:
        assert [(row["client_id"], row["author"]) for row in csv.DictReader(handle)] == [("C-2", "ana")]
    assert "<svg" in (report_dir / "report.html").read_text()

    flags = cli_json("churn", db_url=db_url)
    # Nothing drawn for almost two years, against a window before that had drawdowns (C-2, pinned, is gold).
    assert [(f["client_id"], f["tier"], [s["id"] for s in f["signals"]]) for f in flags] == \
        [("C-1", "gold", ["dormant", "volume-drop"]), ("C-2", "gold", ["dormant", "volume-drop"])]
    assert cli_json("churn", "--tier", "silver", db_url=db_url) == []
    human = run_cli("churn", db_url=db_url)
    assert human.returncode == 0 and "dormant" in human.stdout and "C-1" in human.stdout
    assert cli_json("ledger", "verify", db_url=db_url)["ok"] is True
    again = run_cli("review", "--id", result["review_id"], db_url=db_url)
    assert again.returncode == 2 and "already finished" in again.stderr
    assert json.loads(run_cli("points", "expire", "--dry-run", "--json", db_url=db_url).stdout)["points"] == 0


def Path_name(text: str) -> str:  # noqa: N802 - reads like the attribute it stands for
    return text.rsplit("/", 1)[-1]


def test_a_pin_to_the_tier_the_client_has_still_stops_an_earlier_dated_review(engine, plain_programmes):
    programmes = plain_programmes  # downgrades at once: without the pin, the late review would move the client
    ingest(engine, programmes, drawn("d1", "C-1", "2025-02-01T00:00:00Z", "20000000"))
    assert run_review(engine, programmes, at("2025-04-01T00:00:00Z"), clock=lambda: NOW).changes  # silver
    pin_tier(engine, programmes, "C-1", "silver", at("2026-12-31T00:00:00Z"), "keep silver", "ana",
             clock=lambda: at("2026-03-05T00:00:00Z"))
    # A review as of a moment before the pin (a late catch-up) would have downgraded it: the pin stands.
    late = run_review(engine, programmes, at("2026-03-01T00:00:00Z"), clock=lambda: NOW)
    assert late.changes == [] and [s["reason"] for s in late.skipped] == ["a later tier decision exists"]
    assert client_profile(engine, programmes, "C-1", at("2026-08-01T00:00:00Z")).tier == "silver"


def test_new_client_protection_counts_from_the_first_onboarding(engine, plain_programmes, tmp_path):
    onboarded = [event(f"o{i}", "C-1", "client.onboarded", when, name="Acme", segment=segment)
                 for i, (when, segment) in enumerate([("2023-01-10T00:00:00Z", "transactional"),
                                                      ("2026-05-01T00:00:00Z", "strategic")])]
    ingest(engine, plain_programmes, *onboarded, drawn("d1", "C-1", "2025-06-01T00:00:00Z", "20000000"))
    run_review(engine, plain_programmes, at("2025-07-01T00:00:00Z"), clock=lambda: NOW)
    programmes = load_programmes(programme_variant(tmp_path, "  downgrade: {new_client_months: 6}\n"))
    later = run_review(engine, programmes, at("2026-06-30T00:00:00Z"), clock=lambda: NOW)
    # A re-onboarding (segment change) in May 2026 does not make it a new client again.
    assert [(c.from_tier, c.to_tier) for c in later.changes] == [("silver", "standard")] and later.held == []


def test_a_review_in_the_future_is_refused_before_anything_is_written(engine, programmes):
    with pytest.raises(ValueError, match="cannot look into the future"):
        run_review(engine, programmes, NOW + timedelta(minutes=5), clock=lambda: NOW)
    with read_snapshot(engine) as conn:
        assert conn.execute(select(func.count()).select_from(TierReview.__table__)).scalar() == 0
