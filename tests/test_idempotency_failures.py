"""Idempotency after a failure: a key whose first attempt did not commit runs for real when retried, one
whose work committed replays it, and concurrent attempts with one key apply the work once. Both databases."""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import event, text

from service.apikeys import create_key
from service.clock import utc_now
from service.ingest import Ingestor
from tests.api_support import borrower_events, make_api, serve
from tests.waits_support import frozen_capable

REDEEM = {"reward_id": "fast-track-24h"}  # costs 8,000 of the borrower's 11,000 points
START_BALANCE, COST = 11000, 8000


def _balance(api) -> int:  # noqa: ANN001
    return api.client.get("/v1/clients/C-1/benefits").json()["points_balance"]


def _fail_when_the_answer_is_stored(engine) -> None:  # noqa: ANN001
    """Make the database refuse to store any idempotent answer: a failure after the route's work, in its transaction."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("CREATE TRIGGER answer_lost BEFORE UPDATE ON idempotency_record "
                                 "BEGIN SELECT RAISE(ABORT, 'the disk went away'); END")
        else:
            conn.exec_driver_sql("CREATE FUNCTION answer_lost() RETURNS trigger AS $$ BEGIN "
                                 "RAISE EXCEPTION 'the disk went away'; END $$ LANGUAGE plpgsql")
            conn.exec_driver_sql("CREATE TRIGGER answer_lost BEFORE UPDATE ON idempotency_record "
                                 "FOR EACH ROW EXECUTE FUNCTION answer_lost()")


def _heal(engine) -> None:  # noqa: ANN001
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER answer_lost" + ("" if engine.dialect.name == "sqlite"
                                                           else " ON idempotency_record"))


@pytest.fixture
def api(engine, programmes):
    api = make_api(engine, programmes)
    assert api.client.post("/v1/events", json=borrower_events()).status_code == 200
    return api


@pytest.mark.parametrize("route", ["redemption", "quote", "events"])
def test_a_first_attempt_that_failed_before_committing_is_run_for_real_by_its_retry(api, engine, route):
    requests = {
        "redemption": ("/v1/clients/C-1/redemptions", REDEEM),
        "quote": ("/v1/clients/C-1/quotes", {"product": "working_capital", "amount": "30000000"}),
        "events": ("/v1/events", [{"id": "late-survey", "client_id": "C-1", "type": "survey.answered",
                                   "occurred_at": "2026-03-02T10:00:00Z", "data": {"nps": 9}}]),
    }
    path, body = requests[route]
    headers = {"Idempotency-Key": f"retry-{route}"}
    _fail_when_the_answer_is_stored(engine)
    first = api.client.post(path, json=body, headers=headers)
    assert first.status_code == 503 and first.headers["Retry-After"], first.text
    # Nothing of the first attempt is left: not the work, not the key.
    assert _balance(api) == START_BALANCE
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM idempotency_record")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM quote")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM processed_event WHERE event_id = 'late-survey'")).scalar() == 0
    _heal(engine)
    retry = api.client.post(path, json=body, headers=headers)
    assert retry.status_code in (200, 201), retry.text
    assert "Idempotent-Replayed" not in retry.headers  # it ran for real
    again = api.client.post(path, json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == retry.json()
    if route == "redemption":
        assert _balance(api) == START_BALANCE - COST
    if route == "events":
        assert retry.json()["applied"] == 1


def test_a_failed_event_inside_a_keyed_batch_is_rejected_alone(api):
    """Ingest's fallback (one event at a time after a failed batch) works inside the request transaction."""
    good = {"id": "ok-1", "client_id": "C-1", "type": "survey.answered", "occurred_at": "2026-03-02T10:00:00Z",
            "data": {"nps": 9}}
    clash = {**good, "data": {"nps": 3}}  # same id, other content: a conflict, rejected alone
    answer = api.client.post("/v1/events", json=[good, clash, {**good, "id": "ok-2"}],
                             headers={"Idempotency-Key": "batch-1"})
    assert answer.status_code == 200, answer.text
    assert [r["status"] for r in answer.json()["results"]] == ["applied", "rejected", "applied"]


def test_concurrent_attempts_with_one_key_apply_the_work_once(api):
    def attempt(_: int) -> httpx.Response:
        return api.client.post("/v1/clients/C-1/redemptions", json=REDEEM, headers={"Idempotency-Key": "race-1"})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(attempt, range(4)))
    ran = [a for a in answers if a.status_code == 201 and "Idempotent-Replayed" not in a.headers]
    assert len(ran) == 1, [(a.status_code, a.text) for a in answers]
    for other in answers:
        assert other.status_code in (201, 409, 503), other.text
        if other.status_code == 201:
            assert other.json() == ran[0].json()
        else:
            assert other.headers["Retry-After"]
    assert _balance(api) == START_BALANCE - COST
    assert attempt(0).json() == ran[0].json()


def test_a_committed_first_attempt_whose_answer_was_lost_replays(db_url, engine, programmes, tmp_path):
    events = borrower_events(onboarded=utc_now() - timedelta(days=40))
    Ingestor(engine, programmes).ingest_raw(list(enumerate(events)))
    key = create_key(engine, "test", ["admin"])[0]
    body = b'{"reward_id": "fast-track-24h"}'
    with serve(db_url, tmp_path / "server.log") as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:  # the caller dies before the answer
            sock.sendall(b"POST /v1/clients/C-1/redemptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + key.encode() + b"\r\nIdempotency-Key: lost-1\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
        # The retry goes once the first attempt was answered (its access line is logged): sent sooner, the retry
        # may claim the key first and run, and the first attempt replay it instead (also once, but not this case).
        deadline = time.monotonic() + 30
        while "/redemptions 201" not in (tmp_path / "server.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        client = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        retry = client.post("/v1/clients/C-1/redemptions", content=body,
                            headers={"Idempotency-Key": "lost-1", "content-type": "application/json"})
        assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true", retry.text
        assert client.get("/v1/clients/C-1/benefits").json()["points_balance"] == START_BALANCE - COST


def test_a_database_frozen_during_the_first_attempt_lets_the_retry_apply_once(db_url, engine, programmes, tmp_path):
    if not db_url.startswith("postgresql"):
        pytest.skip("a frozen server is PostgreSQL's case; SQLite's lost answer is the trigger test above")
    events = borrower_events(onboarded=utc_now() - timedelta(days=40))
    Ingestor(engine, programmes).ingest_raw(list(enumerate(events)))
    key = create_key(engine, "test", ["admin"])[0]
    with frozen_capable(db_url) as (proxy, proxied), \
            serve(proxied, tmp_path / "server.log", "--request-timeout", "3") as server:
        client = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        proxy.freeze()
        first = client.post("/v1/clients/C-1/redemptions", json=REDEEM, headers={"Idempotency-Key": "frozen-2"})
        assert first.status_code == 503 and first.headers["Retry-After"], first.text
        proxy.thaw()
        deadline = time.monotonic() + 60
        while True:
            retry = client.post("/v1/clients/C-1/redemptions", json=REDEEM, headers={"Idempotency-Key": "frozen-2"})
            if retry.status_code not in (409, 503) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert retry.status_code == 201, retry.text
        assert client.get("/v1/clients/C-1/benefits").json()["points_balance"] == START_BALANCE - COST
        replay = client.post("/v1/clients/C-1/redemptions", json=REDEEM, headers={"Idempotency-Key": "frozen-2"})
        assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == retry.json()


def test_a_keyed_post_holds_one_pooled_connection_at_a_time(api, engine):
    """The key is authenticated once, before its transaction opens: the route does not take a second
    connection while the first is held (30 such requests at once would otherwise wait on each other)."""
    held = {"now": 0, "most": 0}

    def out(*_) -> None:  # noqa: ANN002
        held["now"] += 1
        held["most"] = max(held["most"], held["now"])

    def back(*_) -> None:  # noqa: ANN002
        held["now"] -= 1

    event.listen(engine, "checkout", out)
    event.listen(engine, "checkin", back)
    try:
        answer = api.client.post("/v1/clients/C-1/redemptions", json=REDEEM, headers={"Idempotency-Key": "one-conn"})
    finally:
        event.remove(engine, "checkout", out)
        event.remove(engine, "checkin", back)
    assert answer.status_code == 201, answer.text
    assert held["most"] == 1, held


def test_a_locked_table_is_a_database_error_not_a_key_in_use(db_url, programmes):
    """Only another attempt with the same key is reported as the key in use; a lock held on a table (a schema
    change, a stuck writer) is the database not answering in time: 503, and the retry runs."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's lock timeout; SQLite's held write lock is a 503 in test_bounded_waits")
    from storage.db import API, init_schema, make_engine

    engine = make_engine(db_url, role=API)
    init_schema(engine)
    api = make_api(engine, programmes)
    with engine.connect() as holder, holder.begin():
        holder.exec_driver_sql("LOCK TABLE idempotency_record IN ACCESS EXCLUSIVE MODE")
        locked = api.client.post("/v1/events", json=borrower_events(), headers={"Idempotency-Key": "fresh-1"})
    assert locked.status_code == 503 and locked.headers["Retry-After"], locked.text
    retry = api.client.post("/v1/events", json=borrower_events(), headers={"Idempotency-Key": "fresh-1"})
    assert retry.status_code == 200 and "Idempotent-Replayed" not in retry.headers and retry.json()["applied"] > 0
    engine.dispose()
