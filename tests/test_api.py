"""The HTTP API through FastAPI's TestClient, on SQLite and PostgreSQL: every endpoint and error status,
quotes and their holds, redemptions, idempotency keys, and the problem+json error format."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from api.problems import problem_response
from api.request_context import reset_request_id, set_request_id
from rewards.kinds import Status
from service.benefits import BenefitsAnswer
from service.ingest import EventsAnswer
from service.ledger_page import LedgerPage
from service.profile import ProfileAnswer
from service.quotes import QuoteAnswer
from service.redemptions import RedemptionAnswer, RewardAnswer
from service.reversal import ReversalAnswer
from storage import ledger
from storage.db import read_snapshot, write_transaction
from tests.api_support import HOLD, PROBLEM, assert_problem, borrower_events, make_api
from tests.conftest import cli_json, event


@pytest.fixture
def api(engine, programmes):
    """The API with client C-1 already active."""
    api = make_api(engine, programmes)
    response = api.client.post("/v1/events", json=borrower_events())
    assert response.json()["applied"] == 3
    return api


def consumed(engine, entitlement_id: int) -> list[dict]:
    with read_snapshot(engine) as conn:
        return [e for e in ledger.client_entries(conn, "C-1") if e["reason"] == "consume"
                and e["entitlement_id"] == entitlement_id]


def assert_consistent(engine) -> None:
    with read_snapshot(engine) as conn:
        assert ledger.verify(conn) == []


# --- keys and scopes --------------------------------------------------------------------------------

def test_health_needs_no_key_and_names_the_programme(api):
    body = api.client.get("/healthz", headers={"Authorization": ""}).json()
    assert body["status"] == "ok" and body["programme"]["id"] == "corporate-lending"
    from service.version import package_version  # the one version string, from pyproject.toml as installed

    assert body["version"] == package_version() == api.client.get("/openapi.json").json()["info"]["version"]


def test_missing_wrong_and_revoked_keys_are_401_and_a_missing_scope_is_403(api, engine, db_url):
    bare = {"Authorization": ""}
    response = api.client.get("/v1/clients/C-1/benefits", headers=bare)
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = api.keys["benefits:read"][:-4] + "AAAA"
    assert_problem(api.client.get("/v1/clients/C-1/benefits", headers={"Authorization": f"Bearer {wrong}"}),
                   401, "invalid-key")
    assert_problem(api.client.get("/v1/clients/C-1/benefits", headers={"Authorization": "Bearer nonsense"}),
                   401, "invalid-key")
    reader = api.as_("benefits:read")
    assert api.client.get("/v1/clients/C-1/benefits", headers=reader).status_code == 200
    assert api.client.get("/v1/clients/C-1/benefits", headers={"X-API-Key": api.keys["benefits:read"]}).status_code == 200
    denied = assert_problem(api.client.post("/v1/clients/C-1/quotes", headers=reader,
                                            json={"product": "working_capital", "amount": "100"}), 403, "missing-scope")
    assert denied["required_scope"] == "quotes:write"
    assert_problem(api.client.post("/v1/events", headers=api.as_("quotes:write"), json=borrower_events()),
                   403, "missing-scope")
    key_id = api.keys["benefits:read"].split("_")[1]
    assert cli_json("apikey", "revoke", key_id, db_url=db_url)["revoked_at"]
    assert_problem(api.client.get("/v1/clients/C-1/benefits", headers=reader), 401, "invalid-key")


# --- events and reversals ---------------------------------------------------------------------------

def test_event_batch_reports_each_item_and_applies_the_good_ones(api):
    original = borrower_events()[1]
    batch = [
        event("e-new", "C-1", "product.purchased", "2026-03-01T10:00:00Z", product="payroll"),
        original,  # same id, same content
        {**original, "data": {**original["data"], "amount": "1.00"}},  # same id, other content
        event("e-bad", "C-1", "loan.drawn", "2026-03-01T10:00:00", loan_id="L", product="working_capital",
              amount="1", currency="CNY", term_months=1),  # naive timestamp
        "not an object",
    ]
    body = api.client.post("/v1/events", json=batch).json()
    assert (body["applied"], body["duplicates"], body["rejected"]) == (1, 1, 3)
    statuses = [(r["index"], r["id"], r["status"]) for r in body["results"]]
    assert statuses == [(0, "e-new", "applied"), (1, "C-1-draw", "duplicate"), (2, "C-1-draw", "rejected"),
                        (3, "e-bad", "rejected"), (4, None, "rejected")]
    assert "different content" in body["results"][2]["error"]
    assert "time zone" in body["results"][3]["error"]
    single = api.client.post("/v1/events", json=event("e-one", "C-1", "survey.answered", "2026-03-02T10:00:00Z", nps=9))
    assert single.json()["results"] == [{"index": 0, "id": "e-one", "status": "applied", "error": None}]
    assert api.client.get("/v1/clients/C-1/benefits").json()["points_balance"] == 11000 + 2000 + 200


def test_event_batches_must_hold_one_to_a_thousand_json_events(api):
    assert_problem(api.client.post("/v1/events", json=[]), 422, "batch-size")
    too_many = [event(f"x{i}", "C-1", "survey.answered", "2026-03-02T10:00:00Z", nps=9) for i in range(1001)]
    assert_problem(api.client.post("/v1/events", json=too_many), 422, "batch-size")
    assert_problem(api.client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"}),
                   422, "invalid-request")


def test_oversized_bodies_are_refused_before_reading_them(api):
    assert_problem(api.client.post("/v1/events", content=b"[" + b" " * (3 * 1024 * 1024) + b"]",
                                   headers={"content-type": "application/json"}), 413, "body-too-large")


def test_reversal_writes_compensating_entries_once(api):
    first = api.client.post("/v1/events/C-1-ref/reversal", json={"reason": "referral fell through"})
    assert first.status_code == 200 and first.json()["status"] == "reversed" and first.json()["entries"]
    again = api.client.post("/v1/events/C-1-ref/reversal", json={"reason": "referral fell through"})
    assert again.json() == {"event_id": "C-1-ref", "status": "already_reversed", "entries": [], "skipped": [],
                            "points_written_off": 0}
    assert api.client.get("/v1/clients/C-1/benefits").json()["points_balance"] == 6000
    assert_problem(api.client.post("/v1/events/nope/reversal"), 404, "not-found")


# --- benefits, profile, ledger ----------------------------------------------------------------------

def test_benefits_match_the_cli_and_price_the_amount(api, db_url):
    params = {"product": "working_capital", "amount": "30000000", "at": "2026-06-01T09:00:00Z"}
    body = api.client.get("/v1/clients/C-1/benefits", params=params).json()
    assert body["rate_discount_bps"] == 10 and body["interest_saved_per_year"] == "30000.00"
    assert [e["rule_id"] for e in body["entitlements"]] == ["large-drawdown-discount", "referral"]
    assert body["entitlements"][0]["event_id"] == "C-1-draw" and body["entitlements"][0]["ledger_entry_id"]
    cli = cli_json("benefits", "C-1", "--product", "working_capital", "--amount", "30000000", "--at",
                   "2026-06-01T09:00:00Z", db_url=db_url)
    assert cli == body


def test_benefits_errors_say_what_to_fix(api):
    assert_problem(api.client.get("/v1/clients/C-404/benefits"), 404, "not-found")
    bad = assert_problem(api.client.get("/v1/clients/C-1/benefits", params={"product": "working_capitol"}),
                         422, "invalid-input")
    assert "did you mean 'working_capital'" in bad["detail"]
    assert_problem(api.client.get("/v1/clients/C-1/benefits", params={"at": "2026-06-01T09:00:00"}), 422, "invalid-input")
    assert_problem(api.client.get("/v1/clients/C-1/benefits", params={"product": "term_loan", "amount": "1.001"}),
                   422, "invalid-input")
    assert_problem(api.client.get("/v1/clients/C-1/benefits", params={"amount": "100"}), 422, "invalid-input")
    assert_problem(api.client.get("/v1/nowhere"), 404, "http-error")


def test_client_profile_shows_tier_and_history(api):
    body = api.client.get("/v1/clients/C-1").json()
    assert body["tier"] == "standard" and body["segment"] == "strategic" and body["points_balance"] == 11000
    assert [row["tier"] for row in body["tier_history"]] == ["standard"]
    assert_problem(api.client.get("/v1/clients/C-404"), 404, "not-found")
    assert_problem(api.client.get("/v1/clients/C-1", params={"at": "0001-01-01T00:00:00Z"}), 422, "invalid-input")


def test_ledger_pages_cover_every_entry_once(api):
    everything = api.client.get("/v1/clients/C-1/ledger", params={"limit": 500}).json()
    assert everything["next_cursor"] is None
    seen, cursor = [], None
    while True:
        page = api.client.get("/v1/clients/C-1/ledger", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen.extend(entry["id"] for entry in page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [entry["id"] for entry in everything["entries"]] and len(seen) == len(set(seen)) >= 4
    assert "next_cursor" in assert_problem(api.client.get("/v1/clients/C-1/ledger", params={"cursor": "abc"}),
                                           422, "invalid-input")["detail"]
    assert_problem(api.client.get("/v1/clients/C-1/ledger", params={"limit": 0}), 422, "invalid-request")
    assert_problem(api.client.get("/v1/clients/C-404/ledger"), 404, "not-found")


# --- quotes -----------------------------------------------------------------------------------------

def quote(api, amount: str = "30000000", product: str = "working_capital", **kwargs):
    return api.client.post("/v1/clients/C-1/quotes", json={"product": product, "amount": amount}, **kwargs)


def test_a_quote_holds_its_single_use_discount_until_committed_and_it_is_consumed_once(api, engine):
    first = quote(api)
    assert first.status_code == 201
    held = first.json()
    assert held["status"] == "held" and held["rate_discount_bps"] == 10 and held["interest_saved_per_year"] == "30000.00"
    discount = held["held_entitlement_ids"]
    assert len(discount) == 1 and held["entitlements_used"][0]["rule_id"] == "large-drawdown-discount"
    # While held, another application gets the next single-use discount, and benefits show the hold.
    second = quote(api).json()
    assert second["rate_discount_bps"] == 5 and second["held_entitlement_ids"] != discount
    listed = {e["id"]: e for e in api.client.get("/v1/clients/C-1/benefits").json()["entitlements"]}
    assert listed[discount[0]]["reserved_by_quote"] == held["quote_id"]
    assert quote(api).json()["rate_discount_bps"] == 0  # both single-use discounts are spoken for

    committed = api.client.post(f"/v1/quotes/{held['quote_id']}/commit", json={"loan_id": "L-900"})
    assert committed.status_code == 200 and committed.json()["status"] == "committed"
    assert committed.json()["loan_id"] == "L-900"
    entries = consumed(engine, discount[0])
    assert len(entries) == 1 and entries[0]["detail"]["quote_id"] == held["quote_id"]
    again = assert_problem(api.client.post(f"/v1/quotes/{held['quote_id']}/commit"), 409, "quote-committed")
    assert "L-900" in again["detail"]
    assert_problem(api.client.post(f"/v1/quotes/{held['quote_id']}/void"), 409, "quote-committed")
    assert discount[0] not in {e["id"] for e in api.client.get("/v1/clients/C-1/benefits").json()["entitlements"]}
    assert len(consumed(engine, discount[0])) == 1
    assert_consistent(engine)


def test_void_releases_the_hold_and_resolves_once(api):
    held = quote(api).json()
    voided = api.client.post(f"/v1/quotes/{held['quote_id']}/void")
    assert voided.status_code == 200 and voided.json()["status"] == "voided"
    assert quote(api).json()["held_entitlement_ids"] == held["held_entitlement_ids"]
    assert_problem(api.client.post(f"/v1/quotes/{held['quote_id']}/void"), 409, "quote-voided")
    assert_problem(api.client.post(f"/v1/quotes/{held['quote_id']}/commit"), 409, "quote-voided")
    assert api.client.get(f"/v1/quotes/{held['quote_id']}").json()["status"] == "voided"


def test_an_expired_hold_releases_itself_and_cannot_be_committed(api, engine):
    held = quote(api).json()
    api.clock.advance(HOLD)
    assert api.client.get(f"/v1/quotes/{held['quote_id']}").json()["status"] == "expired"
    assert quote(api).json()["held_entitlement_ids"] == held["held_entitlement_ids"]  # free again
    expired = assert_problem(api.client.post(f"/v1/quotes/{held['quote_id']}/commit"), 409, "quote-expired")
    assert expired["expired_at"] == held["expires_at"]
    assert consumed(engine, held["held_entitlement_ids"][0]) == []


def test_committing_after_the_held_discount_was_reversed_is_refused(api, engine):
    held = quote(api).json()
    api.client.post("/v1/events/C-1-draw/reversal", json={"reason": "drawdown booked in error"})
    withdrawn = assert_problem(api.client.post(f"/v1/quotes/{held['quote_id']}/commit"), 409, "entitlement-withdrawn")
    assert withdrawn["entitlement_ids"] == held["held_entitlement_ids"]
    assert_consistent(engine)


def test_quote_input_errors(api):
    assert_problem(quote(api, product="working_capitol"), 422, "invalid-input")
    float_amount = api.client.post("/v1/clients/C-1/quotes", json={"product": "working_capital", "amount": 1.5})
    assert "not a float" in assert_problem(float_amount, 422, "invalid-request")["detail"]
    assert_problem(quote(api, amount="-5"), 422, "invalid-input")
    assert_problem(api.client.post("/v1/clients/C-1/quotes", json={"product": "term_loan", "amount": "1", "x": 1}),
                   422, "invalid-request")
    assert_problem(api.client.post("/v1/clients/C-404/quotes", json={"product": "term_loan", "amount": "1"}),
                   404, "not-found")
    assert_problem(api.client.post("/v1/quotes/q_nope/commit"), 404, "not-found")
    assert_problem(api.client.get("/v1/quotes/q_nope"), 404, "not-found")


# --- redemptions ------------------------------------------------------------------------------------

def test_redemption_spends_points_and_grants_a_single_use_reward(api, engine):
    catalogue = {item["id"]: item for item in api.client.get("/v1/catalogue").json()}
    assert catalogue["rate-cut-5"]["points"] == 20000
    short = assert_problem(api.client.post("/v1/clients/C-1/redemptions", json={"reward_id": "rate-cut-5"}),
                           409, "insufficient-points")
    assert (short["balance"], short["cost"]) == (11000, 20000) and "11,000" in short["detail"]
    tier = assert_problem(api.client.post("/v1/clients/C-1/redemptions", json={"reward_id": "rate-cut-10"}),
                          409, "tier-too-low")
    assert tier["min_tier"] == "silver"
    redeemed = api.client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"})
    assert redeemed.status_code == 201
    body = redeemed.json()
    assert (body["points_spent"], body["points_balance"]) == (8000, 3000)
    granted = body["entitlements"][0]
    assert (granted["rule_id"], granted["use"], granted["detail"]["sla_hours"]) == ("redeem:fast-track-24h", "single", 24)
    assert_problem(api.client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"}),
                   409, "insufficient-points")
    assert api.client.get("/v1/clients/C-1/benefits").json()["points_balance"] == 3000
    # The redeemed benefit is priced into the next quote and held by it.
    priced = quote(api).json()
    assert priced["fast_track_sla_hours"] == 24 and granted["id"] in priced["held_entitlement_ids"]
    unknown = assert_problem(api.client.post("/v1/clients/C-1/redemptions", json={"reward_id": "rate-cut5"}),
                             404, "not-found")
    assert "did you mean 'rate-cut-5'" in unknown["detail"]
    assert_consistent(engine)


# --- idempotency keys -------------------------------------------------------------------------------

def test_same_key_same_body_replays_and_different_body_conflicts(api):
    headers = {"Idempotency-Key": "app-42-price"}
    first = quote(api, headers=headers)
    replay = api.client.post("/v1/clients/C-1/quotes", headers=headers,
                             json={"amount": "30000000", "product": "working_capital"})  # same JSON, other order
    assert replay.status_code == 201 and replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert_problem(quote(api, amount="1", headers=headers), 409, "idempotency-key-reused")
    # Another caller's identical key is its own.
    other = api.client.post("/v1/clients/C-1/quotes", json={"product": "working_capital", "amount": "30000000"},
                            headers={**headers, **api.as_("quotes:write")})
    assert other.status_code == 201 and other.json()["quote_id"] != first.json()["quote_id"]


def test_a_retried_redemption_spends_once(api, engine):
    api.client.post("/v1/events", json=[event("x-sell", "C-1", "product.purchased", "2026-03-01T10:00:00Z",
                                              product="fx_hedging")])
    headers = {"Idempotency-Key": "redeem-1"}
    responses = [api.client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"}, headers=headers)
                 for _ in range(3)]
    assert {r.json()["points_balance"] for r in responses} == {13000 - 8000}
    assert api.client.get("/v1/clients/C-1/benefits").json()["points_balance"] == 5000
    conflict = api.client.post(f"/v1/quotes/{quote(api).json()['quote_id']}/commit", headers={"Idempotency-Key": "c"})
    assert api.client.post(conflict.url.path, headers={"Idempotency-Key": "c"}).json() == conflict.json()
    assert_consistent(engine)


def test_errors_are_replayed_too_but_auth_failures_are_not_stored(api):
    headers = {"Idempotency-Key": "k-404"}
    missing = api.client.post("/v1/clients/C-404/quotes", json={"product": "term_loan", "amount": "1"}, headers=headers)
    replay = api.client.post("/v1/clients/C-404/quotes", json={"product": "term_loan", "amount": "1"}, headers=headers)
    assert missing.status_code == replay.status_code == 404 and replay.headers["idempotent-replayed"] == "true"
    assert_problem(api.client.post("/v1/quotes/x/void", headers={"Idempotency-Key": "", **api.as_("quotes:write")}),
                   400, "bad-idempotency-key")


def test_the_openapi_document_describes_every_endpoint(api):
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {"/v1/events", "/v1/events/{event_id}/reversal", "/v1/clients/{client_id}/benefits",
            "/v1/clients/{client_id}/quotes", "/v1/quotes/{quote_id}/commit", "/v1/quotes/{quote_id}/void",
            "/v1/clients/{client_id}/redemptions", "/v1/clients/{client_id}/ledger", "/v1/clients/{client_id}",
            "/healthz"} <= set(paths)
    assert api.client.get("/docs").status_code == 200


def test_the_database_itself_refuses_a_second_consumption(api, engine):
    held = quote(api).json()
    api.client.post(f"/v1/quotes/{held['quote_id']}/commit")
    with read_snapshot(engine) as conn:
        entitlement = next(e for e in ledger.held_entitlements_of_all(conn)["C-1"] if e.status == Status.ACTIVE)
    with write_transaction(engine) as conn:  # a first consumption of another entitlement is fine
        ledger.append(conn, [ledger.consume_entry(entitlement, api.clock(), api.clock(), {"quote_id": "manual"})])
    with pytest.raises(IntegrityError), write_transaction(engine) as conn:
        ledger.append(conn, [ledger.consume_entry(entitlement, api.clock(), api.clock(), {"quote_id": "again"})])
    assert len(consumed(engine, entitlement.id)) == 1


def test_a_quote_made_on_a_host_whose_clock_runs_ahead_still_holds(api):
    api.clock.advance(timedelta(minutes=2))
    ahead = quote(api).json()
    api.clock.advance(timedelta(minutes=-2))
    behind = quote(api).json()
    assert set(ahead["held_entitlement_ids"]).isdisjoint(behind["held_entitlement_ids"])


def test_a_revoked_key_gets_401_not_its_stored_response(api, db_url):
    writer = api.as_("quotes:write")
    headers = {**writer, "Idempotency-Key": "k-revoked"}
    assert quote(api, headers=headers).status_code == 201
    cli_json("apikey", "revoke", api.keys["quotes:write"].split("_")[1], db_url=db_url)
    assert_problem(quote(api, headers=headers), 401, "invalid-key")


def test_a_key_used_for_another_request_is_refused_after_its_first_one_committed(api):
    first = api.client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"},
                            headers={"Idempotency-Key": "k-used"})
    assert first.status_code == 201
    response = api.client.post("/v1/clients/C-1/quotes", json={"product": "working_capital", "amount": "1"},
                               headers={"Idempotency-Key": "k-used"})
    assert_problem(response, 409, "idempotency-key-reused")
    assert api.client.get("/v1/clients/C-1/benefits").json()["points_balance"] == 11000 - 8000


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/clients/C-1/ledger", {"cursor": "²"}),
    ("/v1/clients/C-1/ledger", {"cursor": "99999999999999999999"}),
    ("/v1/clients/C-1/benefits", {"at": "0001-01-01T00:00:00+14:00"}),
    ("/v1/clients/C-1", {"at": "2026-06-01T00:00:00"}),
    ("/v1/clients/C-%00/benefits", {}),
    ("/v1/quotes/q%00", {}),
])
def test_odd_input_is_a_4xx_not_a_server_error(api, path, params):
    response = api.client.get(path, params=params)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM, response.text


def test_every_success_answer_matches_its_documented_schema(api):
    checks = [
        (EventsAnswer, api.client.post("/v1/events", json=[event("x", "C-1", "survey.answered",
                                                                          "2026-03-02T10:00:00Z", nps=9)])),
        (BenefitsAnswer, api.client.get("/v1/clients/C-1/benefits",
                                                params={"product": "term_loan", "amount": "1000000"})),
        (ProfileAnswer, api.client.get("/v1/clients/C-1")),
        (LedgerPage, api.client.get("/v1/clients/C-1/ledger", params={"limit": 2})),
    ]
    held = quote(api)
    checks += [(QuoteAnswer, held), (QuoteAnswer, api.client.get(f"/v1/quotes/{held.json()['quote_id']}")),
               (QuoteAnswer, api.client.post(f"/v1/quotes/{held.json()['quote_id']}/commit", json={"loan_id": "L"})),
               (QuoteAnswer, api.client.post(f"/v1/quotes/{quote(api).json()['quote_id']}/void")),
               (RedemptionAnswer, api.client.post("/v1/clients/C-1/redemptions",
                                                          json={"reward_id": "fast-track-24h"})),
               (ReversalAnswer, api.client.post("/v1/events/C-1-ref/reversal"))]
    for model, response in checks:
        assert response.status_code in (200, 201), response.text
        model.model_validate(response.json())  # extra or missing fields fail
    for reward in api.client.get("/v1/catalogue").json():
        RewardAnswer.model_validate(reward)
    paths = api.client.get("/openapi.json").json()["paths"]
    assert "201" in paths["/v1/clients/{client_id}/quotes"]["post"]["responses"]


def test_a_problem_document_carries_the_request_id_of_its_request():
    token = set_request_id("req-42")
    try:
        within = json.loads(problem_response(409, "quote-expired", "request a new quote", "/v1/quotes/q/commit").body)
    finally:
        reset_request_id(token)
    assert within["request_id"] == "req-42" and within["instance"] == "/v1/quotes/q/commit"
    assert "request_id" not in json.loads(problem_response(409, "quote-expired", "request a new quote").body)
