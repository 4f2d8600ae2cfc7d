"""The transactional outbox: every decision worth acting on is written as a notice, with its schema, in
the transaction of the change that caused it, and in order per client (both databases)."""
from __future__ import annotations

from datetime import UTC, datetime

import jsonschema
import pytest
from sqlalchemy import func, select

import storage.lots
from rewards.notices import TYPES, json_schemas
from service.expiry import expire_points
from service.expiry_notices import announce_expiring
from service.ingest import Ingestor
from service.quotes import commit_quote, create_quote
from service.redemptions import redeem
from service.reversal import reverse_event
from service.review import run_review
from storage import outbox
from storage.db import read_snapshot
from storage.models import OutboxEvent
from tests.api_support import borrower_events
from tests.conftest import event, ndjson

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def ingest(engine, programmes, *events, clock=lambda: NOW):
    report = Ingestor(engine, programmes, clock=clock).ingest_lines(ndjson(*events).splitlines())
    assert report.rejected == 0, report.errors


def drawn(event_id, client, at, amount):
    return event(event_id, client, "loan.drawn", at, loan_id="L-" + event_id, product="working_capital",
                 amount=amount, currency="CNY", term_months=12)


def repaid(event_id, client, at):
    return event(event_id, client, "repayment.made", at, loan_id="L", amount="100000", due_date=at[:10], days_late=0)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def notices(engine, client_id: str | None = None) -> list[dict]:
    with read_snapshot(engine) as conn:
        return outbox.records(conn, client_id)


def types(records: list[dict]) -> list[str]:
    return [r["type"] for r in records]


def assert_valid(records: list[dict]) -> None:
    """Each record's data fits its type's published JSON Schema, and ids are unique."""
    schemas = json_schemas()
    for record in records:
        assert record["version"] == schemas[record["type"]]["version"]
        jsonschema.validate(record["data"], schemas[record["type"]]["schema"])
    assert len({r["id"] for r in records}) == len(records)


def test_tier_moves_grace_and_churn_are_announced_in_order(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-1", "2025-03-01T00:00:00Z", "40000000"),
           repaid("r1", "C-1", "2025-04-01T00:00:00Z"))
    upgrade = [r for r in notices(engine, "C-1") if r["type"] == "tier.changed"]
    assert [(r["data"]["from_tier"], r["data"]["to_tier"], r["data"]["direction"], r["data"]["reason"])
            for r in upgrade] == [("standard", "gold", "up", "instant upgrade: qualifies for gold")]
    assert upgrade[0]["occurred_at"] == at("2025-04-01T00:00:00.000001Z")
    granted = [r["data"]["rule_id"] for r in notices(engine, "C-1") if r["type"] == "entitlement.granted"]
    assert "tier:gold" in granted

    ingest(engine, programmes, drawn("d2", "C-1", "2026-02-01T00:00:00Z", "12000000"),
           event("s1", "C-1", "survey.answered", "2026-03-01T00:00:00Z", nps=3))
    run_review(engine, programmes, at("2026-06-30T00:00:00Z"), clock=lambda: NOW)  # gold kept 30 days: grace
    run_review(engine, programmes, at("2026-07-31T00:00:00Z"), clock=lambda: NOW)  # grace over: down to silver
    records = notices(engine, "C-1")
    assert_valid(records)
    later = [r for r in records if r["occurred_at"] >= at("2026-06-30T00:00:00Z")]
    assert types(later)[:2] == ["grace.started", "churn.flagged"]
    grace = later[0]["data"]
    assert (grace["tier"], grace["until"]) == ("gold", "2026-07-30T00:00:00Z")
    assert {s["id"] for s in later[1]["data"]["signals"]} >= {"unhappy"}
    down = next(r for r in later if r["type"] == "tier.changed")
    assert (down["data"]["from_tier"], down["data"]["to_tier"], down["data"]["direction"]) == ("gold", "silver", "down")
    assert down["data"]["review_id"] and any(check["tier"] == "gold" for check in down["data"]["checks"])
    assert "grace.ended" in types(later)
    revoked = [r["data"]["rule_id"] for r in later if r["type"] == "entitlement.revoked"]
    assert revoked and set(revoked) == {"tier:gold"}
    # Per client, the order of the records is the order in which the changes were made.
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)


def test_quotes_redemptions_expiry_and_reversals_are_announced(engine, programmes):
    ingest(engine, programmes, *borrower_events(), clock=lambda: datetime(2026, 2, 10, tzinfo=UTC))
    clock = lambda: datetime(2026, 2, 11, tzinfo=UTC)  # noqa: E731
    held = create_quote(engine, programmes, "C-1", "working_capital", "30000000", clock=clock)
    commit_quote(engine, held.quote_id, "L-900", clock=clock)
    records = notices(engine, "C-1")
    committed = next(r for r in records if r["type"] == "quote.committed")["data"]
    assert (committed["quote_id"], committed["loan_id"], committed["amount_minor"], committed["currency"]) == \
        (held.quote_id, "L-900", 3_000_000_000, "CNY")
    assert committed["entitlement_ids"] == held.held_entitlement_ids
    consumed = [r["data"] for r in records if r["type"] == "entitlement.consumed"]
    assert [c["entitlement_id"] for c in consumed] == held.held_entitlement_ids

    redeem(engine, programmes, "C-1", "fast-track-24h", clock=clock)
    made = next(r for r in notices(engine, "C-1") if r["type"] == "redemption.made")["data"]
    assert (made["reward_id"], made["points"]) == ("fast-track-24h", 8000)

    reverse_event(engine, "C-1-ref", "entered twice", clock=clock)
    reversed_ = [r["data"]["rule_id"] for r in notices(engine, "C-1") if r["type"] == "entitlement.reversed"]
    assert reversed_  # the referral's single-use discount went with its event
    assert_valid(notices(engine))


def test_points_expired_are_announced(engine, programmes):
    ingest(engine, programmes, event("p1", "C-1", "product.purchased", "2025-01-10T00:00:00Z", product="payroll"))
    later = datetime(2027, 2, 1, tzinfo=UTC)
    expire_points(engine, programmes, later, clock=lambda: later)
    [expired] = [r for r in notices(engine, "C-1") if r["type"] == "points.expired"]
    assert expired["data"]["points"] > 0 and expired["occurred_at"] == at("2027-01-10T00:00:00Z")
    assert_valid([expired])


def test_a_batch_that_fails_leaves_no_notice(engine, programmes, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    ingest(engine, programmes, *borrower_events())
    before = notices(engine)
    monkeypatch.setattr(storage.lots, "record", fail)  # after the batch's notices, before its commit
    report = Ingestor(engine, programmes, clock=lambda: NOW).ingest_lines(
        ndjson(*borrower_events("C-2")).splitlines())
    assert report.applied == 0
    assert notices(engine) == before
    with read_snapshot(engine) as conn:
        assert conn.execute(select(func.count()).select_from(OutboxEvent.__table__)).scalar_one() == len(before)


@pytest.mark.parametrize("type_", sorted(TYPES))
def test_every_type_publishes_a_schema(type_):
    schema = json_schemas()[type_]
    assert schema["version"] >= 1 and "client_id" in schema["schema"]["properties"]


def test_points_about_to_expire_are_announced_once_per_lot_and_window(engine, programmes):
    ingest(engine, programmes, event("p1", "C-1", "product.purchased", "2025-01-10T00:00:00Z", product="payroll"),
           event("p2", "C-1", "product.purchased", "2025-01-30T00:00:00Z", product="insurance"))
    # The shipped programme warns 30 and 7 days ahead; the lots expire 2027-01-10 and 2027-01-30.
    assert announce_expiring(engine, programmes, clock=lambda: datetime(2026, 12, 1, tzinfo=UTC)) == 0
    assert announce_expiring(engine, programmes, clock=lambda: datetime(2026, 12, 15, tzinfo=UTC)) == 1
    assert announce_expiring(engine, programmes, clock=lambda: datetime(2026, 12, 16, tzinfo=UTC)) == 1  # the same lot: no second notice
    assert announce_expiring(engine, programmes, clock=lambda: datetime(2027, 1, 5, tzinfo=UTC)) == 2
    warned = [(r["data"]["event_id"], r["data"]["within_days"], r["data"]["expires_at"])
              for r in notices(engine, "C-1") if r["type"] == "points.expiring"]
    assert warned == [("p1", 30, "2027-01-10T00:00:00Z"), ("p1", 7, "2027-01-10T00:00:00Z"),
                      ("p2", 30, "2027-01-30T00:00:00Z")]
    assert_valid(notices(engine))
