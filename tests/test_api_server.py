"""The API as a loan system meets it: `loyalty serve` in its own process, real HTTP on loopback, keys made
with `loyalty apikey create`, on SQLite and PostgreSQL. Includes the races on single-use discounts."""
from __future__ import annotations

import time
from datetime import timedelta
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.clock import utc_now
from storage.db import make_engine, write_transaction
from tests.api_support import borrower_events as dated_events
from tests.api_support import running_server
from tests.conftest import cli_json, run_cli

HOLD_SECONDS = 2


def borrower_events() -> list[dict]:
    """The borrower's activity, dated a few weeks before now so its discounts are still valid."""
    return dated_events(onboarded=utc_now() - timedelta(days=40))


@pytest.fixture
def server(db_url, tmp_path):
    """A running server on a fresh database: (base URL, admin key, log file)."""
    assert run_cli("init", db_url=db_url).returncode == 0
    key = cli_json("apikey", "create", "--name", "loan-origination", "--scope", "admin", db_url=db_url)["key"]
    log = tmp_path / "server.log"
    with running_server(db_url, log, "--hold-seconds", str(HOLD_SECONDS)) as base:
        yield base, key, log


def http(server) -> httpx.Client:
    base, key, _ = server
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def consume_entries(client: httpx.Client, client_id: str) -> list[dict]:
    entries = client.get(f"/v1/clients/{client_id}/ledger", params={"limit": 500}).json()["entries"]
    return [entry for entry in entries if entry["reason"] == "consume"]


def test_a_loan_system_session_over_http(server, db_url):
    base, key, log = server
    with http(server) as client:
        applied = client.post("/v1/events", json=borrower_events())
        assert applied.status_code == 200 and applied.json()["applied"] == 3
        benefits = client.get("/v1/clients/C-1/benefits", params={"product": "working_capital", "amount": "30000000"})
        assert benefits.json()["rate_discount_bps"] == 10
        quote = client.post("/v1/clients/C-1/quotes", json={"product": "working_capital", "amount": "30000000"},
                            headers={"Idempotency-Key": "app-1"})
        assert quote.status_code == 201
        retried = client.post("/v1/clients/C-1/quotes", json={"product": "working_capital", "amount": "30000000"},
                              headers={"Idempotency-Key": "app-1"})
        assert retried.json()["quote_id"] == quote.json()["quote_id"]
        committed = client.post(f"/v1/quotes/{quote.json()['quote_id']}/commit", json={"loan_id": "L-77"})
        assert committed.status_code == 200
        assert len(consume_entries(client, "C-1")) == 1
        redeemed = client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"})
        assert redeemed.status_code == 201 and redeemed.json()["points_balance"] == 3000
        profile = client.get("/v1/clients/C-1").json()
        assert profile["points_balance"] == 3000
        refused = httpx.get(f"{base}/v1/clients/C-1", headers={"Authorization": f"Bearer {key[:-3]}xyz"})
        assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
    assert cli_json("ledger", "verify", db_url=db_url) == {"ok": True, "problems": []}
    text = log.read_text()
    assert "POST /v1/clients/{client_id}/quotes 201" in text  # requests are logged (route templates) ...
    assert key not in text and key[:-3] not in text  # ... keys never are


def test_twenty_parallel_commits_of_one_quote_consume_the_discount_once(server, db_url):
    with http(server) as client:
        client.post("/v1/events", json=borrower_events()[:2])  # one single-use discount
        quote = client.post("/v1/clients/C-1/quotes", json={"product": "term_loan", "amount": "50000000"}).json()
        assert len(quote["held_entitlement_ids"]) == 1
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(lambda _: client.post(f"/v1/quotes/{quote['quote_id']}/commit"), range(20)))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] + [409] * 19, [r.text for r in responses if r.status_code not in (200, 409)]
        assert {r.json()["type"] for r in responses if r.status_code == 409} == {"/problems/quote-committed"}
        consumed = consume_entries(client, "C-1")
        assert [entry["entitlement_id"] for entry in consumed] == quote["held_entitlement_ids"]
    assert cli_json("ledger", "verify", db_url=db_url)["ok"] is True


def test_twenty_parallel_quotes_for_one_discount_hold_it_once_and_commit_it_once(server, db_url):
    with http(server) as client:
        client.post("/v1/events", json=borrower_events()[:2])
        with ThreadPoolExecutor(20) as pool:
            quotes = list(pool.map(lambda _: client.post("/v1/clients/C-1/quotes", json={
                "product": "working_capital", "amount": "10000000"}), range(20)))
        assert [q.status_code for q in quotes] == [201] * 20
        holders = [q.json() for q in quotes if q.json()["held_entitlement_ids"]]
        assert len(holders) == 1 and holders[0]["rate_discount_bps"] == 10
        assert sorted(q.json()["rate_discount_bps"] for q in quotes) == [0] * 19 + [10]
        with ThreadPoolExecutor(20) as pool:
            commits = list(pool.map(lambda q: client.post(f"/v1/quotes/{q.json()['quote_id']}/commit"), quotes))
        assert [c.status_code for c in commits] == [200] * 20
        assert len(consume_entries(client, "C-1")) == 1
    assert cli_json("ledger", "verify", db_url=db_url)["ok"] is True


def test_a_hold_expires_by_itself(server):
    with http(server) as client:
        client.post("/v1/events", json=borrower_events()[:2])
        quote = client.post("/v1/clients/C-1/quotes", json={"product": "term_loan", "amount": "1000000"}).json()
        time.sleep(HOLD_SECONDS + 0.2)
        assert client.get(f"/v1/quotes/{quote['quote_id']}").json()["status"] == "expired"
        late = client.post(f"/v1/quotes/{quote['quote_id']}/commit")
        assert late.status_code == 409 and late.json()["type"] == "/problems/quote-expired"
        again = client.post("/v1/clients/C-1/quotes", json={"product": "term_loan", "amount": "1000000"}).json()
        assert again["held_entitlement_ids"] == quote["held_entitlement_ids"]
        assert consume_entries(client, "C-1") == []


def test_a_read_waiting_on_a_lock_does_not_stall_other_requests(server, db_url):
    base, key, _ = server
    with http(server) as client:
        client.post("/v1/events", json=borrower_events())
    engine = make_engine(db_url)
    lock = "LOCK TABLE entitlement IN ACCESS EXCLUSIVE MODE" if engine.dialect.name == "postgresql" else None
    with ThreadPoolExecutor(1) as pool:
        with write_transaction(engine) as conn:
            if lock:
                conn.exec_driver_sql(lock)  # what a migration takes; SQLite readers are never blocked (WAL)
            waiting = pool.submit(httpx.get, f"{base}/v1/clients/C-1/benefits",
                                  headers={"Authorization": f"Bearer {key}"}, timeout=30)
            time.sleep(0.3)
            started = time.perf_counter()
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            assert time.perf_counter() - started < 1.0
        assert waiting.result().status_code == 200
    engine.dispose()
