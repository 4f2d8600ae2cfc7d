"""`loyalty explain`: why a client holds each entitlement, built from real history (ingest, reviews, quotes,
redemptions, reversals, pins) on SQLite and PostgreSQL, through the service, the CLI and the HTTP API."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from service import explain_answer as answers
from engine.loader import load_programmes
from engine.schema import Condition
from service.benefits import client_benefits
from service.errors import InputError, NotFoundError
from service.explain import condition_checks, explain_client, outlook, status_at
from service.ingest import Ingestor
from service.pins import pin_tier
from service.quotes import commit_quote, create_quote
from service.redemptions import redeem
from service.reversal import reverse_event
from service.review import run_review
from tests.api_support import borrower_events, make_api
from tests.conftest import SAMPLE, cli_json, event, ndjson, programme_variant, run_cli

NOW = datetime(2026, 11, 20, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ingest(engine, programmes, *events) -> None:
    report = Ingestor(engine, programmes, clock=lambda: NOW).ingest_lines(ndjson(*events).splitlines())
    assert report.rejected == 0, report.errors


def drawn(event_id: str, client: str, when: str, amount: str, product: str = "working_capital") -> dict:
    return event(event_id, client, "loan.drawn", when, loan_id="L-" + event_id, product=product, amount=amount,
                 currency="CNY", term_months=12)


def review(engine, programmes, when: str) -> str:
    return run_review(engine, programmes, at(when), clock=lambda: NOW).review_id


def explain(engine, programmes, client: str, when: str, entitlement: int | None = None) -> dict:
    return explain_client(engine, programmes, client, at(when), entitlement).model_dump(mode="json")


def by_rule(answer: dict, rule_id: str) -> list[dict]:
    return [e for e in answer["entitlements"] if e["rule_id"] == rule_id]


@pytest.fixture
def history(engine, plain_programmes):
    """C-1's year so far, under a policy that moves tiers only at reviews:

    - onboarded 2026-01-05; draws 60M on 2026-02-01 (large-drawdown-discount: 10 bps, single use, 180 days);
    - review 2026-02-15: silver (60M ≥ 10M; no repayment yet, so not gold);
    - repays on time 2026-03-01, refers a client 2026-03-10 (5 bps, single use);
    - review 2026-03-31: gold (its silver benefits revoked);
    - attends a client day 2026-04-10 as gold (gold-client-day-fast-track: a 24-hour lane, single use);
    - a 30M working-capital loan is quoted and booked 2026-04-20 (consumes the 10 bps and the 24-hour lane);
    - redeems fast-track-24h for 8,000 points 2026-04-21; the referral is reversed 2026-04-22.
    """
    programmes = plain_programmes
    ingest(engine, programmes,
           event("on", "C-1", "client.onboarded", "2026-01-05T09:00:00Z", name="Huaxin", segment="strategic"),
           drawn("draw", "C-1", "2026-02-01T10:00:00Z", "60000000.00"))
    silver_review = review(engine, programmes, "2026-02-15T00:00:00Z")
    ingest(engine, programmes,
           event("repay", "C-1", "repayment.made", "2026-03-01T10:00:00Z", loan_id="L-draw", amount="1000000",
                 due_date="2026-03-01", days_late=0),
           event("ref", "C-1", "referral.converted", "2026-03-10T10:00:00Z", referred_client_id="C-77"))
    gold_review = review(engine, programmes, "2026-03-31T00:00:00Z")
    ingest(engine, programmes, event("day", "C-1", "event.attended", "2026-04-10T14:00:00Z", kind="client_day"))
    booked = at("2026-04-20T09:00:00Z")
    quote = create_quote(engine, programmes, "C-1", "working_capital", "30000000", clock=lambda: booked)
    commit_quote(engine, quote.quote_id, "L-900", clock=lambda: booked + timedelta(minutes=5))
    redeem(engine, programmes, "C-1", "fast-track-24h", clock=lambda: at("2026-04-21T09:00:00Z"))
    reverse_event(engine, "ref", "referred client withdrew", clock=lambda: at("2026-04-22T09:00:00Z"))
    return {"programmes": programmes, "silver_review": silver_review, "gold_review": gold_review,
            "quote": quote.quote_id}


# --- rules, events and their values ------------------------------------------------------------------------

def test_a_rule_grant_names_the_rule_version_event_and_the_values_that_met_its_conditions(engine, history):
    answer = explain(engine, history["programmes"], "C-1", "2026-03-15T00:00:00Z")
    [discount] = by_rule(answer, "large-drawdown-discount")
    assert discount["status"] == "active" and discount["source"] == "rule"
    assert (discount["kind"], discount["bps"], discount["use"]) == ("rate_discount", 10, "single")
    assert discount["programme"] == {"id": "corporate-lending", "version": "2026.1"}
    assert discount["valid_to"] == "2026-07-31T10:00:00+00:00"  # 180 days
    rule = discount["rule"]
    assert rule["found"] and rule["description"].startswith("A drawdown of 50M CNY or more")
    assert rule["cap"] == {"per": "year", "times": 1} and rule["award"]["rate_discount"]["bps"] == 10
    assert [(c["attribute"], c["operator"], c["value"], c["met"]) for c in rule["conditions"]] == [
        ("amount", "gte", "60000000", True), ("product", "in", "working_capital", True)]
    assert rule["conditions"][0]["text"] == "amount 60,000,000.00 ≥ 50,000,000"
    assert rule["conditions"][1]["text"] == "product working_capital in [working_capital, term_loan]"
    [source] = discount["events"]
    assert (source["id"], source["type"], source["occurred_at"]) == ("draw", "loan.drawn", "2026-02-01T10:00:00+00:00")
    assert source["data"]["amount"] == "60000000" and source["reversed"] is None
    assert discount["history"][0] == {"entry_id": discount["id"], "at": "2026-02-01T10:00:00+00:00",
                                      "action": "granted", "text": "granted by rule large-drawdown-discount for event "
                                                                   "draw (corporate-lending 2026.1)"}
    # Held at the moment asked about; its history goes on to what the ledger recorded later.
    assert [step["action"] for step in discount["history"]] == ["granted", "consumed"]


def test_a_condition_on_the_client_shows_its_tier_when_the_event_occurred(engine, history):
    answer = explain(engine, history["programmes"], "C-1", "2026-04-15T00:00:00Z")
    [lane] = by_rule(answer, "gold-client-day-fast-track")
    assert lane["what"].startswith("fast-track approval: express_24h lane, 24 h SLA")
    assert [(c["on"], c["text"], c["met"]) for c in lane["rule"]["conditions"]] == [
        ("event", "kind client_day = client_day", True), ("client", "client tier gold ≥ gold (min_tier)", True)]


def test_it_lists_what_benefits_lists_and_what_was_held_then_but_used_up_since(engine, history):
    programmes = history["programmes"]
    now = explain_client(engine, programmes, "C-1", NOW).model_dump(mode="json")["entitlements"]
    assert {e["id"] for e in now} == {e.id for e in client_benefits(engine, programmes, "C-1", NOW).entitlements}
    # `benefits --at` an earlier moment leaves out what was consumed or reversed since; explain counts it as held then.
    then = explain(engine, programmes, "C-1", "2026-04-15T00:00:00Z")["entitlements"]
    listed = {e.id for e in client_benefits(engine, programmes, "C-1", at("2026-04-15T00:00:00Z")).entitlements}
    extra = {e["rule_id"]: e["history"][-1]["action"] for e in then if e["id"] not in listed}
    assert extra == {"large-drawdown-discount": "consumed", "referral": "reversed",
                     "gold-client-day-fast-track": "consumed"}
    assert all(e["status"] == "active" for e in then)


# --- tier decisions ------------------------------------------------------------------------------------------

def test_a_standing_benefit_is_explained_by_the_review_that_moved_the_client_with_its_metrics(engine, history):
    answer = explain(engine, history["programmes"], "C-1", "2026-05-01T00:00:00Z")
    standing = by_rule(answer, "tier:gold")
    assert {e["what"] for e in standing} >= {"10 bps off the interest rate on working_capital (standing)",
                                             "25% fee waiver (standing)"}
    decision = standing[0]["tier_decision"]
    assert decision == answer["tier"]["decision"]
    assert (decision["how"], decision["from_tier"], decision["tier"]) == ("review", "silver", "gold")
    assert decision["review"]["id"] == history["gold_review"] and decision["reasons_source"] == "recorded"
    assert decision["valid_from"] == "2026-03-31T00:00:00+00:00"
    checks = {(v["tier"], c["metric"]): c for v in decision["reasons"] for c in v["checks"]}
    assert checks[("gold", "loan_volume")]["value"] == "60000000" and checks[("gold", "loan_volume")]["met"]
    assert checks[("gold", "loan_volume")]["text"] == "loan_volume 60,000,000.00 ≥ 30,000,000"
    assert checks[("gold", "on_time_repayment_ratio")]["value"] == "1"
    assert not checks[("diamond", "loan_volume")]["met"]  # why it did not go higher
    upcoming = answer["tier"]["next_tier"]
    assert (upcoming["tier"], upcoming["qualifies"]) == ("diamond", False)
    volume = upcoming["requirement"]["items"][0]
    assert (volume["metric"], volume["gap"]) == ("loan_volume", "40000000")
    assert volume["text"] == "loan_volume 60,000,000.00 ≥ 100,000,000 (40,000,000.00 to go)"
    assert answer["tier"]["metrics"]["loan_volume"]["text"] == "60,000,000.00"


def test_a_pin_is_the_decision_with_its_author_and_metrics_recomputed(engine, plain_programmes):
    ingest(engine, plain_programmes, drawn("d", "C-2", "2026-02-01T10:00:00Z", "12000000"))
    pin_tier(engine, plain_programmes, "C-2", "gold", at("2026-12-31T00:00:00Z"), "strategic account", "ana",
             clock=lambda: at("2026-03-01T00:00:00Z"))
    answer = explain(engine, plain_programmes, "C-2", "2026-03-02T00:00:00Z")
    decision = by_rule(answer, "tier:gold")[0]["tier_decision"]
    assert (decision["how"], decision["from_tier"]) == ("pin", "standard")
    assert decision["pin"] == {"author": "ana", "reason": "strategic account", "until": "2026-12-31T00:00:00+00:00"}
    assert decision["reasons_source"] == "recomputed"
    [gold] = [v for v in decision["reasons"] if v["tier"] == "gold"]
    assert gold["qualifies"] is False
    assert gold["checks"][0]["text"] == "loan_volume 12,000,000.00 ≥ 30,000,000"


def test_an_instant_upgrade_names_the_activity_it_was_measured_with(engine, programmes):
    ingest(engine, programmes, drawn("d1", "C-3", "2026-02-01T10:00:00Z", "40000000"))
    ingest(engine, programmes, event("r1", "C-3", "repayment.made", "2026-03-01T10:00:00Z", loan_id="L-d1",
                                     amount="100000", due_date="2026-03-01", days_late=0))
    decision = explain(engine, programmes, "C-3", "2026-03-02T00:00:00Z")["tier"]["decision"]
    assert (decision["how"], decision["tier"], decision["latest_event"]["id"]) == ("instant_upgrade", "gold", "r1")
    assert decision["reasons"][0]["qualifies"] is True


def test_the_outlook_names_the_highest_tier_the_metrics_reach_and_when_the_policy_moves_the_client(
        engine, programmes, plain_programmes):
    # The sample in one batch: C-1001 drew 105M by April, all repaid on time, but its instant upgrade to diamond
    # came only with its next event (2026-05-20).
    report = Ingestor(engine, programmes, clock=lambda: NOW).ingest_lines(SAMPLE.read_text().splitlines())
    assert report.rejected == 0, report.errors
    tier = explain(engine, programmes, "C-1001", "2026-04-01T00:00:00Z")["tier"]
    assert (tier["current"], tier["qualified"], tier["next_tier"]["tier"]) == ("standard", "diamond", "silver")
    assert tier["outlook"] == {"action": "upgrade", "moves": [{"tier": "diamond", "when": "next_event"}],
                               "pinned_until": None,
                               "text": "qualifies for diamond: moves there with its next event (instant upgrade)"}
    answers.TierExplanation.model_validate(tier)
    after = explain(engine, programmes, "C-1001", "2026-06-01T00:00:00Z")["tier"]
    assert (after["current"], after["qualified"], after["outlook"]["action"]) == ("diamond", "diamond", "stay")
    # Without instant upgrades the review moves it; with gold alone instant, gold comes first, diamond after.
    plain = plain_programmes.for_moment(at("2026-04-01T00:00:00Z"))
    assert outlook(plain, "standard", "diamond", None)["text"] == "qualifies for diamond: moves there at the next review"


def test_the_outlook_follows_instant_upgrades_downgrade_limits_and_pins(tmp_path):
    policy = """  instant_upgrade: [gold]
  downgrade: {max_steps: 1, grace_days: 30, min_months_in_tier: 3, new_client_months: 6}
"""
    programme = load_programmes(programme_variant(tmp_path, review_policy=policy)).for_moment(NOW)
    both = outlook(programme, "standard", "diamond", None)
    assert both["moves"] == [{"tier": "gold", "when": "next_event"}, {"tier": "diamond", "when": "next_review"}]
    assert both["text"] == ("qualifies for diamond: moves to gold with its next event (instant upgrade), then to "
                            "diamond at the next review")
    assert outlook(programme, "gold", "diamond", None)["moves"] == [{"tier": "diamond", "when": "next_review"}]
    down = outlook(programme, "diamond", "standard", None)
    assert (down["action"], down["moves"]) == ("downgrade", [])
    assert down["text"].startswith("qualifies only for standard: a review may move it down to gold (at most 1 tier ")
    pin = {"tier": "gold", "until": at("2026-12-31T00:00:00Z")}
    pinned = outlook(programme, "gold", "diamond", pin)
    assert (pinned["action"], pinned["moves"], pinned["pinned_until"]) == ("pinned", [], "2026-12-31T00:00:00+00:00")
    assert outlook(programme, "retired-tier", "gold", None) is None


# --- history: consumed, revoked, reversed, expired, redeemed ---------------------------------------------------

def test_a_consumed_entitlement_names_the_quote_and_loan_that_used_it(engine, history):
    programmes = history["programmes"]
    granted = by_rule(explain(engine, programmes, "C-1", "2026-04-01T00:00:00Z"), "large-drawdown-discount")[0]
    assert not by_rule(explain(engine, programmes, "C-1", "2026-05-01T00:00:00Z"), "large-drawdown-discount")
    answer = explain(engine, programmes, "C-1", "2026-05-01T00:00:00Z", granted["id"])
    assert answer["entitlement_id"] == granted["id"]
    [item] = answer["entitlements"]
    assert (item["status"], item["status_since"]) == ("consumed", "2026-04-20T09:05:00+00:00")
    consumed = item["history"][1]
    assert consumed["action"] == "consumed" and consumed["entry_id"] > item["id"]
    assert consumed["text"] == f"consumed by quote {history['quote']} (loan L-900)"


def test_a_revoked_tier_benefit_names_the_move_that_ended_it(engine, history):
    programmes = history["programmes"]
    silver = by_rule(explain(engine, programmes, "C-1", "2026-03-15T00:00:00Z"), "tier:silver")
    assert len(silver) == 4  # 5 bps on working capital and trade finance, the priority lane, a 10% fee waiver
    assert silver[0]["tier_decision"]["review"]["id"] == history["silver_review"]
    [item] = explain(engine, programmes, "C-1", "2026-05-01T00:00:00Z", silver[0]["id"])["entitlements"]
    assert (item["status"], item["status_since"]) == ("revoked", "2026-03-31T00:00:00+00:00")
    revoked = item["history"][-1]
    assert revoked["action"] == "revoked" and "silver → gold" in revoked["text"]
    assert history["gold_review"] in revoked["text"]
    assert item["tier_decision"]["tier"] == "silver"  # why it was granted, even now that it is gone


def test_a_reversed_entitlement_and_its_event_say_when_and_why(engine, history):
    programmes = history["programmes"]
    referral = by_rule(explain(engine, programmes, "C-1", "2026-04-15T00:00:00Z"), "referral")[0]
    [item] = explain(engine, programmes, "C-1", "2026-05-01T00:00:00Z", referral["id"])["entitlements"]
    assert (item["status"], item["status_since"]) == ("reversed", "2026-04-22T09:00:00+00:00")
    assert item["history"][-1]["text"] == "reversed with event ref: referred client withdrew"
    assert item["events"][0]["reversed"] == {"at": "2026-04-22T09:00:00+00:00", "reason": "referred client withdrew"}


def test_an_expired_entitlement_lapses_without_an_entry(engine, history):
    programmes = history["programmes"]
    redeemed = by_rule(explain(engine, programmes, "C-1", "2026-05-01T00:00:00Z"), "redeem:fast-track-24h")[0]
    [item] = explain(engine, programmes, "C-1", "2026-08-01T00:00:00Z", redeemed["id"])["entitlements"]
    assert (item["status"], item["status_since"]) == ("expired", "2026-07-20T09:00:00+00:00")  # 90 days
    assert item["history"][-1] == {"entry_id": None, "at": "2026-07-20T09:00:00+00:00", "action": "expired",
                                   "text": "validity ended (no entry: it lapses by itself)"}


def test_history_is_in_order_of_time_when_a_reversal_comes_after_the_expiry(engine, programmes):
    ingest(engine, programmes, drawn("d5", "C-5", "2026-01-01T10:00:00Z", "60000000.00"))
    [discount] = by_rule(explain(engine, programmes, "C-5", "2026-01-02T00:00:00Z"), "large-drawdown-discount")
    reverse_event(engine, "d5", "booked in error", clock=lambda: at("2026-08-01T09:00:00Z"))  # after its 180 days
    [item] = explain(engine, programmes, "C-5", "2026-09-01T00:00:00Z", discount["id"])["entitlements"]
    assert (item["status"], item["status_since"]) == ("expired", "2026-06-30T10:00:00+00:00")
    assert [(step["action"], step["at"]) for step in item["history"]] == [
        ("granted", "2026-01-01T10:00:00+00:00"), ("expired", "2026-06-30T10:00:00+00:00"),
        ("reversed", "2026-08-01T09:00:00+00:00")]


def test_a_redeemed_entitlement_shows_the_reward_and_its_cost_and_points_add_up(engine, history):
    programmes = history["programmes"]
    answer = explain(engine, programmes, "C-1", "2026-05-01T00:00:00Z")
    [item] = by_rule(answer, "redeem:fast-track-24h")
    assert item["source"] == "redemption"
    assert item["redemption"]["name"] == "One 24-hour approval" and item["redemption"]["points"] == 8000
    assert item["rule"]["description"] == "catalogue reward: One 24-hour approval"
    points = answer["points"]
    # Earned: 6,000 (draw, standard) + 60 (repayment, silver ×1.2) + 6,000 (referral, ×1.2) + 750 (client day, ×1.5).
    # The reversal takes the referral's 6,000 back, but 1,190 of them were spent: written off.
    assert (points["earned"], points["redeemed"], points["reversed"], points["adjusted"]) == (12810, -8000, -6000, 1190)
    assert points["balance"] == 0 == client_benefits(engine, programmes, "C-1", NOW).points_balance
    assert {r["rule_id"]: r["points"] for r in points["earned_by_rule"]}["drawdown-points"] == 6000
    assert points["redeemed_by_reward"] == [{"reward": "fast-track-24h", "points": -8000, "entries": 1}]
    before = explain(engine, programmes, "C-1", "2026-04-15T00:00:00Z")["points"]
    assert (before["balance"], before["redeemed"], before["reversed"]) == (12810, 0, 0)


# --- errors ------------------------------------------------------------------------------------------------

def test_unknown_clients_and_entitlements_and_other_clients_entitlements_are_not_found(engine, programmes):
    ingest(engine, programmes, *borrower_events("C-1"), *borrower_events("C-2"))
    theirs = explain(engine, programmes, "C-2", "2026-06-01T00:00:00Z")["entitlements"][0]["id"]
    with pytest.raises(NotFoundError, match="no client 'C-404'"):
        explain(engine, programmes, "C-404", "2026-06-01T00:00:00Z")
    with pytest.raises(NotFoundError, match="no entitlement 99999"):
        explain(engine, programmes, "C-1", "2026-06-01T00:00:00Z", 99999)
    with pytest.raises(NotFoundError, match=f"entitlement {theirs} is not client C-1's"):
        explain(engine, programmes, "C-1", "2026-06-01T00:00:00Z", theirs)
    with pytest.raises(InputError, match="no time zone"):
        explain_client(engine, programmes, "C-1", datetime(2026, 6, 1))


# --- pure pieces ---------------------------------------------------------------------------------------------

def test_conditions_follow_the_matching_core_for_absent_attributes():
    def checks(operators: dict, value: object, kind: str = "integer") -> list[tuple[str, bool]]:
        return [(c["text"], c["met"]) for c in
                condition_checks("event", "csat", Condition.model_validate(operators), kind, value, "CNY")]

    assert checks({"ne": 3}, None) == [("csat (absent) ≠ 3", True)]
    assert checks({"gte": 3}, None) == [("csat (absent) ≥ 3", False)]
    assert checks({"exists": False}, None) == [("csat absent (exists: false)", True)]
    assert checks({"gte": 3, "lt": 5}, 4) == [("csat 4 ≥ 3", True), ("csat 4 < 5", True)]
    assert checks({"lt": "10000000.01"}, "10000000.01", "money") == [("csat 10,000,000.01 < 10,000,000.01", False)]


def test_status_at_a_moment_ends_at_the_first_of_consumption_revocation_reversal_or_expiry():
    start, end = at("2026-01-01T00:00:00Z"), at("2026-03-01T00:00:00Z")
    grant = {"valid_from": start, "valid_to": end}
    used = {"reason": "consume", "valid_from": at("2026-02-01T00:00:00Z"), "created_at": at("2026-02-01T00:00:00Z")}
    undone = {"reason": "reverse", "valid_from": start, "created_at": at("2026-01-15T00:00:00Z")}
    assert status_at(grant, [], at("2025-12-31T00:00:00Z")) == ("not_yet_granted", None)
    assert status_at(grant, [used], at("2026-01-31T00:00:00Z")) == ("active", None)
    assert status_at(grant, [used], at("2026-02-01T00:00:00Z")) == ("consumed", used["valid_from"])
    assert status_at(grant, [], end) == ("expired", end)
    # A reversal counts from when it was written, not from the moment of the grant it cancels.
    assert status_at(grant, [undone], at("2026-01-10T00:00:00Z")) == ("active", None)
    assert status_at(grant, [used, undone], end) == ("reversed", undone["created_at"])


# --- through the CLI and the HTTP API --------------------------------------------------------------------------

def test_explain_end_to_end_through_the_cli(db_url):
    cli_json("init", db_url=db_url)
    cli_json("ingest", str(SAMPLE), db_url=db_url)
    moment = "2026-05-21T00:00:00Z"
    answer = cli_json("explain", "C-1001", "--at", moment, db_url=db_url)
    [discount] = by_rule(answer, "large-drawdown-discount")
    assert discount["events"][0]["id"] == "evt-0004" and discount["programme"]["version"] == "2026.1"
    assert answer["tier"]["current"] == "diamond" and answer["points"]["balance"] == 20457
    text = run_cli("explain", "C-1001", "--at", moment, db_url=db_url)
    assert text.returncode == 0, text.stderr
    for expected in (f"entitlement {discount['id']}: 10 bps off the interest rate on working_capital, term_loan",
                     "why: large-drawdown-discount, programme corporate-lending 2026.1",
                     "✓ amount 60,000,000.00 ≥ 50,000,000", "event evt-0004 loan.drawn at 2026-01-12 10:00:00",
                     "by instant upgrade", "✓ loan_volume 105,000,000.00 ≥ 100,000,000", "points 20,457"):
        assert expected in text.stdout, expected
    one = run_cli("explain", "C-1001", "--entitlement", str(discount["id"]), db_url=db_url)
    assert one.returncode == 0 and "history:" in one.stdout and one.stdout.count("entitlement ") == 1
    other = run_cli("explain", "C-1002", "--entitlement", str(discount["id"]), db_url=db_url)
    assert other.returncode == 2 and f"entitlement {discount['id']} is not client C-1002's" in other.stderr
    unknown = run_cli("explain", "C-404", "--json", db_url=db_url)
    assert unknown.returncode == 2 and "no client 'C-404'" in json.loads(unknown.stdout)["error"]
    naive = run_cli("explain", "C-1001", "--at", "2026-05-21T00:00:00", db_url=db_url)
    assert naive.returncode == 2 and "no time zone" in naive.stderr
    # A plain date is 00:00 UTC, with or without a Z; the outlook says diamond comes with the next event.
    for day in ("2026-04-01", "2026-04-01Z"):
        dated = run_cli("explain", "C-1001", "--at", day, db_url=db_url)
        assert dated.returncode == 0, dated.stderr
        assert "as of 2026-04-01 00:00:00 UTC" in dated.stdout
        assert "outlook: qualifies for diamond: moves there with its next event (instant upgrade)" in dated.stdout
        assert "next review" not in dated.stdout


def test_the_help_teaches_with_examples():
    result = run_cli("explain", "--help")
    assert result.returncode == 0 and "loyalty explain C-1001 --entitlement 12" in result.stdout


def test_explain_over_http_matches_its_documented_schema(engine, programmes):
    api = make_api(engine, programmes)
    api.client.post("/v1/events", json=borrower_events("C-1") + borrower_events("C-2"))
    reader = api.as_("benefits:read")
    response = api.client.get("/v1/clients/C-1/explanation", headers=reader)
    assert response.status_code == 200, response.text
    body = answers.ExplanationAnswer.model_validate(response.json())
    [discount] = [e for e in body.entitlements if e.rule_id == "large-drawdown-discount"]
    assert discount.rule.conditions[0].text == "amount 60,000,000.00 ≥ 50,000,000"
    assert response.json() == explain_client(engine, programmes, "C-1", api.clock()).model_dump(mode="json")
    single = api.client.get("/v1/clients/C-1/explanation", headers=reader,
                            params={"entitlement": discount.id, "at": "2026-03-01T00:00:00Z"}).json()
    assert single["entitlement_id"] == discount.id and len(single["entitlements"]) == 1
    answers.ExplanationAnswer.model_validate(single)
    theirs = api.client.get("/v1/clients/C-2/explanation").json()["entitlements"][0]["id"]
    for path, params, status in (("/v1/clients/C-404/explanation", {}, 404),
                                 ("/v1/clients/C-1/explanation", {"entitlement": theirs}, 404),
                                 ("/v1/clients/C-1/explanation", {"entitlement": 0}, 422),
                                 ("/v1/clients/C-1/explanation", {"at": "2026-03-01T00:00:00"}, 422)):
        failed = api.client.get(path, params=params)
        assert failed.status_code == status and failed.headers["content-type"] == "application/problem+json", path
    assert api.client.get("/v1/clients/C-1/explanation", headers=api.as_("quotes:write")).status_code == 403
    operation = api.client.get("/openapi.json").json()["paths"]["/v1/clients/{client_id}/explanation"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ExplanationAnswer")
