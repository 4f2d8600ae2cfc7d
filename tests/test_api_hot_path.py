"""The benefits query's hot path (`api.hot_path`): a request in the plain form gets the answer FastAPI gives the same
request, and any other request, or one refused, FastAPI's own answer. The API keys `loyalty serve` keeps after
verifying them are admitted without a read for a few seconds, so a key revoked by another process is refused
once its verification is that old, never later; unknown and wrong keys are never kept."""
from __future__ import annotations

import hashlib

import pytest

from service.apikeys import Caller, KeyCache, authenticate, create_key, revoke_key
from storage.db import init_schema, make_engine
from tests.api_support import borrower_events, make_api

PROBLEM = "application/problem+json"


@pytest.fixture
def api(engine, programmes):
    api = make_api(engine, programmes)
    assert api.client.post("/v1/events", json=borrower_events()).json()["applied"] == 3
    return api


def test_a_plain_benefits_request_gets_the_answer_of_the_same_request_solved_by_fastapi(api):
    solved_at = api.clock().isoformat()  # an `at` sends the request through FastAPI's solving
    for params in ({}, {"product": "working_capital"}, {"product": "term_loan", "amount": "1000000"}):
        plain = api.client.get("/v1/clients/C-1/benefits", params=params)
        solved = api.client.get("/v1/clients/C-1/benefits", params={**params, "at": solved_at})
        assert plain.status_code == solved.status_code == 200, plain.text
        assert plain.json() == solved.json() and plain.headers["content-type"] == solved.headers["content-type"]


def test_other_requests_and_refused_ones_get_fastapis_answers(api):
    for client, query, headers, status, code in [
        ("C-1", "", {"Authorization": ""}, 401, "unauthenticated"),
        ("C-1", "", {"Authorization": "Bearer lk_nope_nope"}, 401, "invalid-key"),  # plain, refused
        ("C-404", "", {}, 404, "not-found"),  # plain, refused
        ("C-1", "?product=" + "x" * 65, {}, 422, "invalid-request"),
        ("C-1", "?amount=1&amount=" + "9" * 41, {}, 422, "invalid-request"),  # repeated: FastAPI reads the last one
        ("C-1", "?product=nope&product=working_capital", {}, 200, None),
        ("C-1", "?product=working_capital&unknown=1", {}, 200, None),
        ("C-1", "?product=payday", {}, 422, "invalid-input"),  # plain, refused
    ]:
        response = api.client.get(f"/v1/clients/{client}/benefits{query}", headers=headers)
        assert response.status_code == status, (query, response.text)
        if code:
            assert response.headers["content-type"] == PROBLEM and response.json()["type"] == f"/problems/{code}"
        else:
            assert response.json()["product"] == "working_capital"


class Ticks:
    """A monotonic clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    init_schema(engine)
    yield engine
    engine.dispose()


def test_a_revoked_key_is_refused_once_its_verification_is_as_old_as_the_bound(sqlite_engine):
    clock = Ticks()
    keys = KeyCache(5, clock=clock)
    key, record = create_key(sqlite_engine, "pricing", ["benefits:read"])
    assert authenticate(sqlite_engine, key, keys).key_id == record["id"]
    revoke_key(sqlite_engine, record["id"])
    clock.now = 4.9
    assert authenticate(sqlite_engine, key, keys) is not None  # verified 4.9 s ago: not read again
    assert authenticate(sqlite_engine, key) is None  # without the cache: refused at once
    clock.now = 5.0
    assert authenticate(sqlite_engine, key, keys) is None  # read again: revoked
    clock.now = 9.0
    assert authenticate(sqlite_engine, key, keys) is None  # and not kept


def test_only_verified_keys_are_kept_and_a_wrong_secret_never_matches_one(sqlite_engine):
    keys = KeyCache(5, clock=Ticks())
    key, _ = create_key(sqlite_engine, "pricing", ["benefits:read"])
    wrong = key[:-4] + "AAAA"
    assert authenticate(sqlite_engine, wrong, keys) is None and keys.get(key) is None
    assert authenticate(sqlite_engine, key, keys) is not None and keys.get(key) is not None
    assert keys.get(wrong) is None and authenticate(sqlite_engine, wrong, keys) is None
    assert keys.get("nonsense") is None and keys.get("lk_") is None


def _keep(keys: KeyCache, number: int) -> None:
    keys.keep(hashlib.sha256(f"secret{number}".encode()).hexdigest(), Caller(f"k{number}", "pricing", frozenset()))


def _kept(keys: KeyCache) -> list[int]:
    return [number for number in range(5) if keys.get(f"lk_k{number}_secret{number}") is not None]


def test_the_cache_holds_at_most_its_size_dropping_stale_entries_first_then_the_oldest():
    clock = Ticks()
    keys = KeyCache(5, size=2, clock=clock)
    for number in range(3):
        clock.now = number
        _keep(keys, number)
    assert _kept(keys) == [1, 2]
    clock.now = 3
    _keep(keys, 1)  # verified again: now the newest
    clock.now = 4
    _keep(keys, 3)
    assert _kept(keys) == [1, 3]
    clock.now = 8.5  # 3 is fresh, 1 is not: 1 goes
    _keep(keys, 4)
    assert _kept(keys) == [3, 4]


def test_a_cache_of_zero_seconds_keeps_nothing():
    keys = KeyCache(0)
    _keep(keys, 1)
    assert _kept(keys) == []
