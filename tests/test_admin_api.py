"""The admin API on SQLite and PostgreSQL: each endpoint answers what the CLI's `--json` prints for the same
state (both run here, the CLI in this process), a key without the `admin` scope gets 403, bad parameters 422
(all problem documents), a PUT sent twice with one Idempotency-Key applies once, and a review started over
HTTP finishes and its report is served."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from cli.main import app as cli_app
from service.activation import RuleVersions
from service.churn import FlaggedClient
from service.expiry import ExpiringAnswer
from service.pins import PinSetAnswer, PinEndedAnswer
from service.review import run_review
from service.review_jobs import ReviewJob, ReviewJobs
from tests.api_support import assert_problem, make_api
from tests.conftest import RULES, event

RUNNER = CliRunner()


def cli(db_url: str, *args: str) -> object:
    """A command's `--json` answer, run in this process as a person would run it (exit 0)."""
    result = RUNNER.invoke(cli_app, ["--db", db_url, "--rules", str(RULES), *args, "--json"],
                           env={"COLUMNS": "200", "LOYALTY_DATABASE_URL": None, "LOYALTY_RULES": None})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def without(answer: dict, *keys: str) -> dict:
    return {key: value for key, value in answer.items() if key not in keys}


def finished(api, location: str, seconds: float = 30.0) -> dict:
    """Poll a review's Location until it is no longer running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = api.client.get(location).json()
        if job["status"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"review {location} still running after {seconds} s")


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def today():
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def api(engine, programmes, today):
    """The API on the real clock (the CLI reads it too), with clients active almost two years ago: points that
    expire within weeks, and (after a review) churn flags."""
    api = make_api(engine, programmes)
    api.clock.now = today
    # Points earned almost 24 months ago (they expire after 24), but not before the programme began.
    earned = stamp(max(today - timedelta(days=700), datetime(2025, 1, 2, tzinfo=UTC)))
    events = [event("p1", "C-1", "product.purchased", earned, product="payroll")]
    for client in ("C-1", "C-2", "C-3"):  # C-2 and C-3 alike: one is pinned over HTTP, the other by the CLI
        amount = "40000000" if client == "C-1" else "1000"
        events.append(event(f"d-{client}", client, "loan.drawn", earned, loan_id=f"L-{client}",
                            product="working_capital", amount=amount, currency="CNY", term_months=12))
    assert api.client.post("/v1/events", json=events).json()["applied"] == 4
    return api


def test_each_admin_answer_is_the_cli_json_answer(api, db_url, today):
    until = (today + timedelta(days=90)).strftime("%Y-%m-%d")
    pin = {"tier": "gold", "until": f"{until}T00:00:00Z", "reason": "new strategic relationship", "author": "ana"}
    keyed = {"Idempotency-Key": "pin-C-2"}
    first = api.client.put("/v1/clients/C-2/pin", json=pin, headers=keyed)
    assert first.status_code == 200, first.text
    again = api.client.put("/v1/clients/C-2/pin", json=pin, headers=keyed)
    assert (again.status_code, again.headers.get("idempotent-replayed"), again.json()) == (200, "true", first.json())
    assert len(api.client.get("/v1/clients/C-2").json()["pins"]) == 1  # applied once
    by_cli = cli(db_url, "tier", "set", "C-3", "gold", "--until", until, "--reason", pin["reason"], "--author", "ana")
    PinSetAnswer.model_validate(first.json())
    assert without(first.json(), "client_id", "valid_from") == without(by_cli, "client_id", "valid_from")
    assert first.json()["moved"] is True and first.json()["from_tier"] == "standard"

    # A review started over HTTP runs off the request: 202 at once, its status and report at Location.
    api.clock.now = datetime.now(UTC)  # after the CLI's pin (it read the real clock)
    started = api.client.post("/v1/reviews", json={})
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    assert location == f"/v1/reviews/{started.json()['id']}" and started.json()["status"] in ("running", "finished")
    job = ReviewJob.model_validate(finished(api, location))
    assert job.status == "finished", job.error
    assert job.report.review_id == job.id and sorted(p["client_id"] for p in job.report.pins) == ["C-2", "C-3"]
    flagged = [flag["client_id"] for flag in job.report.churn["flagged"]]
    assert {"C-2", "C-3"} <= set(flagged)  # gold, and nothing drawn for almost two years

    # A dry run now (the state is what the review left) reports as `loyalty review --dry-run` does.
    dry = finished(api, api.client.post("/v1/reviews", json={"dry_run": True}).headers["location"])
    assert dry["status"] == "finished" and dry["id"].startswith("dry-run-") and dry["report"]["review_id"] is None
    by_cli = cli(db_url, "review", "--dry-run")
    assert without(dry["report"], "as_of", "points_expired") == without(by_cli, "as_of", "points_expired")

    churn = api.client.get("/v1/churn").json()
    assert [FlaggedClient.model_validate(flag).client_id for flag in churn] == flagged
    assert churn == cli(db_url, "churn")
    assert api.client.get("/v1/churn", params={"tier": "gold", "limit": 1}).json() == \
        cli(db_url, "churn", "--tier", "gold", "--limit", "1")
    assert api.client.get("/v1/churn", params={"history": True}).json() == cli(db_url, "churn", "--history")

    within = "40d"
    expiring = api.client.get("/v1/points/expiring", params={"within": within}).json()
    assert ExpiringAnswer.model_validate(expiring).points > 0
    assert expiring == cli(db_url, "points", "expiring", "--within", within)
    assert api.client.get("/v1/points/expiring", params={"within": "2w", "client": "C-2", "limit": 1}).json() == \
        cli(db_url, "points", "expiring", "--within", "2w", "--client", "C-2", "--limit", "1")

    versions = api.client.get("/v1/rules/versions").json()
    assert [v.state for v in RuleVersions.model_validate(versions).versions] == ["in force"]
    assert without(versions, "as_of") == without(cli(db_url, "rules", "versions"), "as_of")

    ended = api.client.delete("/v1/clients/C-2/pin", params={"reason": "relationship reviewed", "author": "bo"},
                              headers={"Idempotency-Key": "unpin-C-2"})
    assert ended.status_code == 200, ended.text
    by_cli = cli(db_url, "tier", "unset", "C-3", "--reason", "relationship reviewed", "--author", "bo")
    assert PinEndedAnswer.model_validate(ended.json()).pinned_tier == "gold"
    assert without(ended.json(), "client_id", "ended_at") == without(by_cli, "client_id", "ended_at")
    replayed = api.client.delete("/v1/clients/C-2/pin", params={"reason": "relationship reviewed", "author": "bo"},
                                 headers={"Idempotency-Key": "unpin-C-2"})
    assert replayed.headers.get("idempotent-replayed") == "true" and replayed.json() == ended.json()
    assert_problem(api.client.delete("/v1/clients/C-2/pin", params={"reason": "again"}), 404, "not-found")
    assert api.client.get("/v1/clients/C-2").json()["pin"] is None
    assert cli(db_url, "ledger", "verify")["ok"] is True


ENDPOINTS = [("put", "/v1/clients/C-1/pin", {"json": {"tier": "gold", "until": "2099-01-01T00:00:00Z",
                                                        "reason": "r"}}),
             ("delete", "/v1/clients/C-1/pin", {"params": {"reason": "r"}}),
             ("get", "/v1/churn", {}), ("get", "/v1/points/expiring", {}), ("post", "/v1/reviews", {"json": {}}),
             ("get", "/v1/reviews/review-1", {}), ("get", "/v1/rules/versions", {})]


def test_without_the_admin_scope_every_admin_endpoint_is_403(engine, programmes):
    api = make_api(engine, programmes)
    for scope in ("benefits:read", "events:write", "quotes:write"):
        for method, path, kwargs in ENDPOINTS:
            response = api.client.request(method.upper(), path, headers=api.as_(scope), **kwargs)
            assert assert_problem(response, 403, "missing-scope")["required_scope"] == "admin", (scope, path)
    assert_problem(api.client.get("/v1/churn", headers={"Authorization": ""}), 401, "unauthenticated")
    document = api.client.get("/openapi.json").json()["paths"]
    for method, path, _ in ENDPOINTS:
        operation = document[path.replace("C-1", "{client_id}").replace("review-1", "{review_id}")][method]
        assert operation["security"] and "admin" in operation["tags"]
        keyed = "Idempotency-Key" in {parameter["name"] for parameter in operation["parameters"]}
        assert keyed == (method != "get"), (method, path)


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), [
    ("get", "/v1/points/expiring", {"params": {"within": "soon"}}, "query.within"),
    ("get", "/v1/points/expiring", {"params": {"within": "4000d"}}, "query.within"),
    ("get", "/v1/points/expiring", {"params": {"within": "0d"}}, "query.within"),
    ("get", "/v1/points/expiring", {"params": {"within": "1234567d"}}, "query.within"),
    ("get", "/v1/points/expiring", {"params": {"limit": 0}}, "query.limit"),
    ("get", "/v1/churn", {"params": {"tier": "platinum"}}, "query.tier"),
    ("get", "/v1/churn", {"params": {"limit": 5000}}, "query.limit"),
    ("put", "/v1/clients/C-1/pin", {"json": {"tier": "gold", "until": "2099-01-01T00:00:00"}}, "body.until"),
    ("put", "/v1/clients/C-1/pin", {"json": {"tier": "gold", "until": "3000-01-01T00:00:00Z", "reason": "r"}},
     "body.until"),
    ("put", "/v1/clients/C-1/pin", {"json": {"tier": "gold", "until": "2099-01-01T00:00:00Z", "reason": " "}},
     "body.reason"),
    ("delete", "/v1/clients/C-1/pin", {}, "query.reason"),
    ("post", "/v1/reviews", {"json": {"review_id": "no spaces"}}, "body.review_id"),
    ("post", "/v1/reviews", {"json": {"as_of": "2026-01-01"}}, "body.as_of"),
    ("get", "/v1/reviews/bad%20id", {}, "path.review_id"),
])
def test_bad_parameters_are_422_problems_naming_the_field(engine, programmes, method, path, kwargs, field):
    api = make_api(engine, programmes)
    body = assert_problem(api.client.request(method.upper(), path, **kwargs), 422, "invalid-request")
    assert field in {error["field"] for error in body["errors"]}, body


def test_refusals_of_the_services_are_problems_too(api, engine, programmes, today):
    assert_problem(api.client.post("/v1/reviews", json={"as_of": stamp(today + timedelta(days=1))}), 422,
                   "invalid-input")
    assert_problem(api.client.put("/v1/clients/C-1/pin", json={"tier": "platinum", "until": "2099-01-01T00:00:00Z",
                                                               "reason": "r"}), 422, "invalid-input")
    assert_problem(api.client.put("/v1/clients/C-9/pin", json={"tier": "gold", "until": "2099-01-01T00:00:00Z",
                                                               "reason": "r"}), 404, "not-found")
    assert_problem(api.client.get("/v1/reviews/review-unknown"), 404, "not-found")
    # A refusal found once the review runs (no programme in force then) ends its job, with the reason.
    failed = finished(api, api.client.post("/v1/reviews", json={"as_of": "1999-01-01T00:00:00Z"})
                      .headers["location"])
    assert (failed["status"], failed["error_code"]) == ("failed", "invalid-input") and "1999" in failed["error"]
    # A review the database knows but this server process did not run (another worker, `loyalty review`) is
    # served from the database: its status, without its report.
    run_review(engine, programmes, review_id="review-elsewhere", clock=api.clock)
    elsewhere = api.client.get("/v1/reviews/review-elsewhere").json()
    assert (elsewhere["status"], elsewhere["report"]) == ("finished", None) and elsewhere["note"]


def test_a_review_past_its_time_bound_stops_and_its_id_finishes_it(api, engine):
    state = api.client.app.state
    state.review_jobs = ReviewJobs(max_seconds=0)  # stops at its first page boundary
    stopped = finished(api, api.client.post("/v1/reviews", json={}).headers["location"])
    assert (stopped["status"], stopped["error_code"], stopped["report"]) == ("failed", "review-stopped", None)
    assert api.client.get("/v1/clients/C-1").json()["tier"]  # the API still answers; the pages written are kept
    state.review_jobs = ReviewJobs()
    resumed = api.client.post("/v1/reviews", json={"review_id": stopped["id"]})
    assert resumed.status_code == 202 and resumed.json()["as_of"] is None  # the moment it was started with
    done = finished(api, resumed.headers["location"])
    assert done["status"] == "finished" and done["report"]["resumed"] is True
    assert (done["as_of"], done["report"]["review_id"]) == (stopped["as_of"], stopped["id"])
    assert done["report"]["clients"] == 3


def test_one_review_runs_at_a_time_and_the_server_stopping_stops_it(api):
    jobs = ReviewJobs()
    api.client.app.state.review_jobs = jobs
    jobs._running = "review-busy"  # as while a review runs on this server
    busy = assert_problem(api.client.post("/v1/reviews", json={}), 409, "review-running")
    assert "review-busy" in busy["detail"]
    jobs._running = None
    with api.client:  # the app's lifespan: at its end, running reviews are told to stop
        pass
    stopped = finished(api, api.client.post("/v1/reviews", json={}).headers["location"])
    assert (stopped["status"], stopped["error_code"]) == ("failed", "review-stopped")
