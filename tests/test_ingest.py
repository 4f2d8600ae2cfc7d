"""Ingest, reversal and the ledger, through the service layer, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from engine.loader import load_programmes
from service.benefits import client_benefits
from service.errors import NotFoundError
from service.ingest import Ingestor
from service.reversal import reverse_event
from storage import clients as client_store
from storage import ledger
from storage.db import write_transaction
from storage.models import Client, Entitlement
from tests.conftest import RULES, SAMPLE, event, ndjson

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def ingest(engine, programmes, text_: str, batch_size: int = 500):
    return Ingestor(engine, programmes, clock=lambda: NOW, batch_size=batch_size).ingest_lines(text_.splitlines())


def balance(engine, client_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(Client.__table__.c.points_balance)
                            .where(Client.__table__.c.client_id == client_id)).scalar_one()


def verify(engine) -> list[str]:
    with engine.connect() as conn:
        return ledger.verify(conn)


def drawn(event_id: str, client: str, at: str, amount: str, product: str = "working_capital") -> dict:
    return event(event_id, client, "loan.drawn", at, loan_id="L-" + event_id, product=product, amount=amount,
                 currency="CNY", term_months=12)


def deposit(event_id: str, client: str, at: str, month: str, average: str) -> dict:
    return event(event_id, client, "deposit.reported", at, month=month, average_balance=average)


def test_sample_portfolio_balances_match_the_rules(engine, programmes):
    report = ingest(engine, programmes, SAMPLE.read_text())
    assert report.as_dict() == {"applied": 18, "duplicates": 0, "rejected": 0, "errors": []}
    # C-1001: 6000 + 4500 (drawdowns) + 257 (5.15M repaid on time) + 2000 (250M deposit capped at 2000)
    #         + 2000 (cross-sell) + 5000 (referral) + 200 (survey) + 500 (client day)
    assert balance(engine, "C-1001") == 20457
    # C-1002: 800 (8M drawn) + 0 (late repayment) + 300 (forum) + 200 (survey)
    assert balance(engine, "C-1002") == 1300
    assert verify(engine) == []


def test_the_same_file_twice_changes_nothing(engine, programmes):
    ingest(engine, programmes, SAMPLE.read_text())
    with engine.connect() as conn:
        before = ledger.client_entries(conn, "C-1001")
    report = ingest(engine, programmes, SAMPLE.read_text())
    assert (report.applied, report.duplicates, report.rejected) == (0, 18, 0)
    with engine.connect() as conn:
        assert ledger.client_entries(conn, "C-1001") == before


def test_same_id_different_content_is_a_conflict_and_keeps_the_original(engine, programmes):
    ingest(engine, programmes, ndjson(drawn("e1", "C-1", "2026-03-01T00:00:00Z", "10000000")))
    report = ingest(engine, programmes, ndjson(drawn("e1", "C-1", "2026-03-01T00:00:00Z", "90000000")))
    assert report.rejected == 1 and "conflict" in report.errors[0]["error"]
    assert balance(engine, "C-1") == 1000


def test_duplicates_inside_one_file(engine, programmes):
    first = drawn("e1", "C-1", "2026-03-01T00:00:00Z", "10000000")
    changed = drawn("e1", "C-1", "2026-03-01T00:00:00Z", "20000000")
    report = ingest(engine, programmes, ndjson(first, first, changed))
    assert (report.applied, report.duplicates, report.rejected) == (1, 1, 1)
    assert report.errors[0]["line"] == 3


def test_bad_lines_are_rejected_with_line_numbers_and_good_lines_applied(engine, programmes):
    good = [drawn(f"g{i}", "C-1", "2026-03-01T00:00:00Z", "10000000") for i in range(3)]
    lines = [
        json.dumps(good[0]),
        '{"id": "broken", ',
        json.dumps(event("b2", "C-1", "loan.repaid", "2026-03-01T00:00:00Z")),
        json.dumps({**drawn("b3", "C-1", "2026-03-01T00:00:00Z", "1"), "occurred_at": "2026-03-01T00:00:00"}),
        json.dumps(drawn("b4", "C-1", "2026-03-01T00:00:00Z", "-100")),
        json.dumps(drawn("b5", "C-1", "2026-03-01T00:00:00Z", "100", product="mortgage")),
        json.dumps(event("b6", "C-1", "survey.answered", "2026-03-01T00:00:00Z", nps="high")),
        "",
        json.dumps(good[1]),
        json.dumps(drawn("b9", "C-1", "2019-03-01T00:00:00Z", "100")),
        json.dumps(good[2]),
    ]
    report = ingest(engine, programmes, "\n".join(lines), batch_size=2)
    assert (report.applied, report.rejected) == (4, 6)
    by_line = {e["line"]: e for e in report.errors}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7]
    assert "not valid JSON" in by_line[2]["error"]
    assert "unknown event type 'loan.repaid'" in by_line[3]["error"]
    assert "no time zone" in by_line[4]["error"]
    assert "greater than zero" in by_line[5]["error"] and by_line[5]["id"] == "b4"
    assert "unknown value 'mortgage'" in by_line[6]["error"]
    assert "data.nps" in by_line[7]["error"]
    assert balance(engine, "C-1") == 3000  # the 2019 drawdown is history: applied, earns nothing
    assert verify(engine) == []


@pytest.mark.parametrize("batch_size", [1, 500])
def test_caps_hold_across_batches_and_runs(engine, programmes, batch_size):
    deposits = [deposit("d1", "C-1", "2026-03-10T00:00:00Z", "2026-02", "150000000"),
                deposit("d2", "C-1", "2026-03-20T00:00:00Z", "2026-02", "150000000"),
                deposit("d3", "C-1", "2026-04-02T00:00:00Z", "2026-03", "150000000")]
    surveys = [event(f"s{i}", "C-1", "survey.answered", f"2026-0{i + 1}-01T00:00:00Z", nps=8) for i in range(3)]
    ingest(engine, programmes, ndjson(*deposits[:1]), batch_size)
    ingest(engine, programmes, ndjson(*deposits[1:], *surveys), batch_size)
    with engine.connect() as conn:
        entries = ledger.client_entries(conn, "C-1")
    by_event = {e["event_id"]: e["points"] for e in entries}
    # March cap 2,000: 1,500 then only 500; April starts afresh. Surveys: at most two a year.
    assert (by_event["d1"], by_event["d2"], by_event["d3"]) == (1500, 500, 1500)
    assert next(e for e in entries if e["event_id"] == "d2")["detail"]["capped_from"] == 1500
    assert sorted(k for k in by_event if k.startswith("s")) == ["s0", "s1"]
    assert balance(engine, "C-1") == 1500 + 500 + 1500 + 400


def test_events_are_evaluated_under_the_tier_in_force_when_they_occurred(engine, programmes):
    ingest(engine, programmes, ndjson(drawn("e0", "C-1", "2026-01-01T00:00:00Z", "10000")))
    with write_transaction(engine) as conn:
        client_store.insert_tier_assignments(conn, [{
            "client_id": "C-1", "tier": "gold", "valid_from": datetime(2026, 4, 1, tzinfo=UTC),
            "reason": "test", "programme_id": "corporate-lending", "programme_version": "2026.1",
            "created_at": NOW}])
    # Arriving late, in reverse order: each is evaluated as of its own time.
    ingest(engine, programmes, ndjson(drawn("after", "C-1", "2026-04-02T00:00:00Z", "10000000"),
                                      drawn("before", "C-1", "2026-03-31T23:59:59Z", "10000000")))
    with engine.connect() as conn:
        points = {e["event_id"]: e["points"] for e in ledger.client_entries(conn, "C-1")}
    assert points["before"] == 1000 and points["after"] == 1500


def test_onboarding_sets_segment_and_tenure_for_later_rules(engine, programmes):
    onboard = event("o1", "C-9", "client.onboarded", "2025-01-01T00:00:00Z", name="Zhou Textiles",
                    segment="special_assistance")
    repay = lambda i, at: event(f"r{i}", "C-9", "repayment.made", at, loan_id="L", amount="100000",
                                due_date=at[:10], days_late=0)
    ingest(engine, programmes, ndjson(onboard, repay(1, "2025-12-31T00:00:00Z"), repay(2, "2026-01-02T00:00:00Z")))
    with engine.connect() as conn:
        grants = [e for e in ledger.client_entries(conn, "C-9") if e["reason"] == "grant"]
    assert [(g["event_id"], g["kind"], g["detail"]) for g in grants] == [("r2", "fee_waiver", {"fee_waiver_pct": 50})]


def test_benefits_show_tier_points_discounts_and_provenance(engine, programmes):
    ingest(engine, programmes, ndjson(drawn("big", "C-1", "2026-03-01T00:00:00Z", "60000000"),
                                      event("ref", "C-1", "referral.converted", "2026-03-02T00:00:00Z",
                                            referred_client_id="C-2")))
    answer = client_benefits(engine, programmes, "C-1", datetime(2026, 3, 5, tzinfo=UTC), "working_capital").model_dump(
        mode="json")
    assert answer["tier"] == "standard" and answer["points_balance"] == 6000 + 5000
    # Two single-use discounts (10 and 5 bps): only the larger applies to one loan.
    assert answer["rate_discount_bps"] == 10
    assert answer["rate_discount_bps_by_product"]["term_loan"] == 10
    assert answer["rate_discount_bps_by_product"]["trade_finance"] == 0
    assert answer["fast_track_sla_hours"] is None
    kinds = {(e["rule_id"], e["event_id"], e["programme_version"]) for e in answer["entitlements"]}
    assert kinds == {("large-drawdown-discount", "big", "2026.1"), ("referral", "ref", "2026.1")}
    later = client_benefits(engine, programmes, "C-1", datetime(2026, 12, 1, tzinfo=UTC), "working_capital").model_dump(
        mode="json")
    assert later["rate_discount_bps"] == 5  # the 180-day grant has expired, the 365-day one has not
    with pytest.raises(NotFoundError):
        client_benefits(engine, programmes, "C-404", NOW)


def test_standing_tier_benefits_of_the_lowest_tier_are_granted_through_the_ledger(engine, tmp_path):
    text_ = (RULES / "corporate_lending.yaml").read_text().replace(
        "      points_multiplier: 1\n", "      points_multiplier: 1\n      fee_waiver_pct: 5\n"
        "      rate_discount_bps: {trade_finance: 3}\n", 1)
    (tmp_path / "p.yaml").write_text(text_)
    programmes = load_programmes(tmp_path / "p.yaml")
    ingest(engine, programmes, ndjson(drawn("e1", "C-1", "2026-03-01T00:00:00Z", "10000")))
    answer = client_benefits(engine, programmes, "C-1", NOW, "trade_finance").model_dump(
        mode="json")
    assert answer["rate_discount_bps"] == 3 and answer["fee_waiver_pct"] == 5
    assert {e["rule_id"] for e in answer["entitlements"]} == {"tier:standard"}


def test_reversal_compensates_everything_once(engine, programmes):
    ingest(engine, programmes, ndjson(drawn("keep", "C-1", "2026-03-01T00:00:00Z", "10000000"),
                                      event("ref", "C-1", "referral.converted", "2026-03-02T00:00:00Z",
                                            referred_client_id="C-2")))
    first = reverse_event(engine, "ref", "referred client withdrew", clock=lambda: NOW).model_dump(mode="json")
    assert first["status"] == "reversed" and len(first["entries"]) == 2
    again = reverse_event(engine, "ref", clock=lambda: NOW).model_dump(mode="json")
    assert again == {"event_id": "ref", "status": "already_reversed", "entries": [], "skipped": [], "points_written_off": 0}
    assert balance(engine, "C-1") == 1000
    with engine.connect() as conn:
        entries = ledger.client_entries(conn, "C-1")
        statuses = dict(conn.execute(select(Entitlement.__table__.c.rule_id, Entitlement.__table__.c.status)).all())
    reversing = [e for e in entries if e["reason"] == "reverse"]
    originals = {e["id"]: e for e in entries if e["event_id"] == "ref" and e["reason"] != "reverse"}
    assert sorted(e["reverses_entry_id"] for e in reversing) == sorted(originals)
    for entry in reversing:
        assert entry["points"] == -originals[entry["reverses_entry_id"]]["points"]
        assert entry["bps"] == -originals[entry["reverses_entry_id"]]["bps"]
    assert statuses["referral"] == "reversed"
    assert verify(engine) == []
    with pytest.raises(NotFoundError):
        reverse_event(engine, "no-such-event")


def test_a_reversed_event_frees_its_cap(engine, programmes):
    surveys = [event(f"s{i}", "C-1", "survey.answered", f"2026-0{i + 1}-01T00:00:00Z", nps=8) for i in range(3)]
    ingest(engine, programmes, ndjson(*surveys[:2]))
    reverse_event(engine, "s0")
    ingest(engine, programmes, ndjson(surveys[2]))
    assert balance(engine, "C-1") == 400


def test_the_ledger_refuses_update_and_delete(engine, programmes):
    ingest(engine, programmes, ndjson(drawn("e1", "C-1", "2026-03-01T00:00:00Z", "10000000")))
    for statement in ("UPDATE ledger_entry SET points = 999999", "DELETE FROM ledger_entry",
                      "DELETE FROM processed_event"):
        with pytest.raises(DBAPIError, match="append-only"):
            with write_transaction(engine) as conn:
                conn.execute(text(statement))
    assert balance(engine, "C-1") == 1000 and verify(engine) == []


def test_verify_detects_projections_that_disagree_with_the_entries(engine, programmes):
    ingest(engine, programmes, ndjson(drawn("e1", "C-1", "2026-03-01T00:00:00Z", "60000000")))
    with write_transaction(engine) as conn:
        conn.execute(text("UPDATE client SET points_balance = points_balance + 1"))
        conn.execute(text("UPDATE entitlement SET status = 'consumed', bps = 40"))
    problems = verify(engine)
    assert any("points balance 6001 but entries sum to 6000" in p for p in problems)
    assert any("status consumed but entries say active" in p for p in problems)
    assert any("bps is 40" in p for p in problems)


def test_an_expression_failing_at_run_time_rejects_only_that_event(engine, tmp_path):
    text_ = (RULES / "corporate_lending.yaml").read_text().replace(
        "points: event.amount / 10000", "points: event.amount / 10000 - 100")
    (tmp_path / "p.yaml").write_text(text_)
    programmes = load_programmes(tmp_path / "p.yaml")
    report = ingest(engine, programmes, ndjson(drawn("small", "C-1", "2026-03-01T00:00:00Z", "10000"),
                                               drawn("big", "C-1", "2026-03-01T00:00:00Z", "10000000")))
    assert report.applied == 1 and report.errors[0]["id"] == "small"
    assert "points cannot be negative" in report.errors[0]["error"]
    assert balance(engine, "C-1") == 900
    with engine.connect() as conn:
        assert client_store.processed_hashes(conn, ["small", "big"]).keys() == {"big"}


def test_a_late_event_sees_the_segment_in_force_when_it_occurred(engine, programmes):
    onboard = event("o1", "C-9", "client.onboarded", "2025-01-01T00:00:00Z", name="Zhou", segment="special_assistance")
    resegment = event("o2", "C-9", "client.onboarded", "2026-06-01T00:00:00Z", name="Zhou", segment="strategic")
    late = event("r1", "C-9", "repayment.made", "2026-03-01T00:00:00Z", loan_id="L", amount="100000",
                 due_date="2026-03-01", days_late=0)
    after = event("r2", "C-9", "repayment.made", "2026-07-01T00:00:00Z", loan_id="L", amount="100000",
                  due_date="2026-07-01", days_late=0)
    ingest(engine, programmes, ndjson(onboard, resegment))
    ingest(engine, programmes, ndjson(late, after))
    with engine.connect() as conn:
        grants = [e["event_id"] for e in ledger.client_entries(conn, "C-9") if e["reason"] == "grant"]
    assert grants == ["r1"]  # special assistance in March, strategic by July


def test_same_amount_spelt_differently_is_a_duplicate(engine, programmes):
    ingest(engine, programmes, ndjson(drawn("e1", "C-1", "2026-03-01T00:00:00Z", "100000.50")))
    report = ingest(engine, programmes, ndjson(drawn("e1", "C-1", "2026-03-01T00:00:00Z", "100000.5")))
    assert report.duplicates == 1


def test_very_large_amounts_fit_on_every_database(engine, programmes):
    report = ingest(engine, programmes, ndjson(drawn("huge", "C-1", "2026-03-01T00:00:00Z", "99999999999999.99",
                                                     product="project_finance")))
    assert report.applied == 1
    assert balance(engine, "C-1") == 9_999_999_999


def test_an_event_whose_evaluation_fails_unexpectedly_is_rejected_alone_and_logged(engine, programmes, monkeypatch,
                                                                                     caplog):
    import service.ingest as ingest_module

    real = ingest_module.evaluate

    def fragile(programme, event_, client):
        if event_.id == "bad":
            raise KeyError("simulated evaluation bug")
        return real(programme, event_, client)

    monkeypatch.setattr(ingest_module, "evaluate", fragile)
    report = ingest(engine, programmes, ndjson(*(drawn(i, "C-1", "2026-03-01T00:00:00Z", "10000000")
                                                 for i in ("a", "bad", "c"))))
    assert (report.applied, report.rejected) == (2, 1)
    assert report.errors == [{"line": 2, "id": "bad", "error": "internal error (logged)"}]
    assert "simulated evaluation bug" in caplog.text  # the traceback is in the log, never in the answer
    assert balance(engine, "C-1") == 2000 and verify(engine) == []


def test_an_event_that_cannot_be_stored_is_rejected_alone(engine, programmes, monkeypatch):
    import service.ingest as ingest_module

    real = ingest_module.client_store.insert_processed

    def fragile(conn, rows):
        if any(row["event_id"] == "bad" for row in rows):
            raise KeyError("simulated storage bug")
        return real(conn, rows)

    monkeypatch.setattr(ingest_module.client_store, "insert_processed", fragile)
    report = ingest(engine, programmes, ndjson(*(drawn(i, "C-1", "2026-03-01T00:00:00Z", "10000000")
                                                 for i in ("a", "bad", "c"))))
    assert (report.applied, report.rejected) == (2, 1)
    assert report.errors == [{"line": 2, "id": "bad", "error": "could not be stored (KeyError): 'simulated storage bug'"}]
    assert balance(engine, "C-1") == 2000 and verify(engine) == []


def test_lines_that_are_not_utf8_are_rejected_alone(engine, programmes):
    good = ndjson(drawn("a", "C-1", "2026-03-01T00:00:00Z", "10000000")).encode()
    lines = [b"\xef\xbb\xbf" + good, b'{"id": "\xff"}\n', good.replace(b'"a"', b'"b"')]
    report = Ingestor(engine, programmes, clock=lambda: NOW).ingest_lines(lines)
    assert (report.applied, report.rejected) == (2, 1)
    assert report.errors[0]["line"] == 2 and "not UTF-8" in report.errors[0]["error"]


def test_verify_detects_forged_provenance(engine, programmes):
    ingest(engine, programmes, ndjson(drawn("e1", "C-1", "2026-03-01T00:00:00Z", "60000000")))
    with write_transaction(engine) as conn:
        conn.execute(text("UPDATE entitlement SET programme_version = '9999.9', event_id = 'forged'"))
    problems = verify(engine)
    assert any("programme_version is '9999.9'" in p for p in problems)
    assert any("event_id is 'forged'" in p for p in problems)


def test_history_from_before_the_programme_counts_for_metrics_and_earns_nothing(engine, programmes):
    report = ingest(engine, programmes, ndjson(
        event("o", "C-1", "client.onboarded", "2021-05-01T00:00:00Z", name="Old", segment="strategic"),
        drawn("old", "C-1", "2024-12-31T23:59:59Z", "50000000"),
        drawn("new", "C-1", "2025-01-01T00:00:00Z", "10000000")))
    assert report.applied == 3
    with engine.connect() as conn:
        entries = ledger.client_entries(conn, "C-1")
    assert {e["event_id"] for e in entries} == {"new"}
    from service.profile import client_profile

    profile = client_profile(engine, programmes, "C-1", datetime(2025, 6, 1, tzinfo=UTC)).model_dump(mode="json")
    assert profile["metrics"]["loan_volume"] == "60000000" and profile["metrics"]["tenure_months"] == "49"


def test_events_from_the_future_are_rejected(engine, programmes):
    report = ingest(engine, programmes, ndjson(drawn("typo", "C-1", "2036-04-10T14:00:00Z", "100000"),
                                               drawn("ok", "C-1", "2026-11-30T00:00:00Z", "100000")))
    assert report.applied == 1 and report.errors[0]["id"] == "typo" and "in the future" in report.errors[0]["error"]
