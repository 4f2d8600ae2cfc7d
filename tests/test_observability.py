"""Operating the API: metrics that move by exactly the work done, request ids on every answer and log line,
JSON logs, liveness vs readiness, and docs that load with no internet."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from cli.logs import JsonLines, RequestIdFilter
from service.apikeys import create_key
from service.rules_watcher import RulesWatcher
from storage.db import RequestTransaction, after_commit, make_engine
from tests.api_support import HOLD, borrower_events, make_api, serve
from tests.conftest import RULES, event


def scrape(client: TestClient) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, by name and labels."""
    answer = client.get("/metrics", headers={"Authorization": ""})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def captured_logs():
    """The "loyalty" loggers' records as JSON lines, stamped with the request id as `serve` does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("loyalty")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_metrics_move_by_exactly_the_work_done(engine, programmes):
    api = make_api(engine, programmes)
    before = scrape(api.client)
    first, *rest = borrower_events()
    bad = event("C-1-bad", "C-1", "loan.drawn", "2026-03-01T10:00:00Z", loan_id="L-9", product="working_capital",
                amount="-5", currency="CNY", term_months=12)
    answer = api.client.post("/v1/events", json=[first, *rest, first, bad]).json()
    assert (answer["applied"], answer["duplicates"], answer["rejected"]) == (3, 1, 1)
    quote = api.client.post("/v1/clients/C-1/quotes", json={"product": "term_loan", "amount": "50000000"}).json()
    assert api.client.post(f"/v1/quotes/{quote['quote_id']}/commit").status_code == 200
    lapsed = api.client.post("/v1/clients/C-1/quotes", json={"product": "term_loan", "amount": "1000000"}).json()
    api.clock.advance(HOLD)
    assert api.client.post(f"/v1/quotes/{lapsed['quote_id']}/commit").status_code == 409
    assert api.client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"}).status_code == 201
    assert api.client.get("/v1/clients/C-1/benefits").status_code == 200
    after = scrape(api.client)

    assert moved(before, after, "loyalty_events_total", source="api", outcome="applied") == 3
    assert moved(before, after, "loyalty_events_total", source="api", outcome="duplicate") == 1
    assert moved(before, after, "loyalty_events_total", source="api", outcome="rejected") == 1
    assert moved(before, after, "loyalty_quotes_total", outcome="held") == 2
    assert moved(before, after, "loyalty_quotes_total", outcome="committed") == 1
    assert moved(before, after, "loyalty_quotes_total", outcome="expired") == 1
    assert moved(before, after, "loyalty_quotes_total", outcome="voided") == 0
    assert moved(before, after, "loyalty_redemptions_total", reward="fast-track-24h") == 1
    requests = "loyalty_http_request_duration_seconds_count"
    assert moved(before, after, requests, method="GET", route="/v1/clients/{client_id}/benefits", status="200") == 1
    assert moved(before, after, requests, method="POST", route="/v1/quotes/{quote_id}/commit", status="409") == 1
    assert moved(before, after, requests, method="GET", route="/metrics", status="200") == 1  # the first scrape
    assert after[("loyalty_programme_in_force", frozenset({"programme": "corporate-lending",
                                                            "version": "2026.1"}.items()))] == 1
    assert after[("loyalty_db_pool_connections_in_use", frozenset())] == before[
        ("loyalty_db_pool_connections_in_use", frozenset())]  # every connection went back to the pool


def test_the_request_id_is_on_every_answer_and_every_log_line_of_its_request(engine, programmes, captured_logs):
    app = create_app(engine, programmes, max_body_bytes=1000)

    @app.get("/boom")
    def boom() -> None:
        logging.getLogger("loyalty.test").warning("about to fail")
        raise RuntimeError("a fault nobody foresaw")

    key = create_key(engine, "pricing", ["benefits:read"])[0]
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    assert client.get("/healthz", headers={"X-Request-ID": "loan-sys:42.a_b-c"}).headers["x-request-id"] == \
        "loan-sys:42.a_b-c"
    for hostile in (b"x" * 129, "new\u2028line".encode(), b"a b", b"<script>", b""):
        echoed = client.get("/healthz", headers={"X-Request-ID": hostile}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), echoed  # replaced, never echoed
    too_large = client.post("/v1/events", content=b"[" + b" " * 2000 + b"]", headers={"X-Request-ID": "big-1"})
    assert too_large.status_code == 413 and too_large.headers["x-request-id"] == "big-1"  # the guard's own answer
    failed = client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "boom-1"
    assert client.get("/v1/clients/C-404/benefits", headers={"X-Request-ID": "read-1"}).status_code == 404

    lines = captured_logs()
    of_boom = [line for line in lines if line.get("request_id") == "boom-1"]
    assert [line["logger"] for line in of_boom] == ["loyalty.test", "loyalty.api", "loyalty.access"]
    assert "RuntimeError: a fault nobody foresaw" in of_boom[1]["exception"]  # one line, the traceback a field
    access = {line["request_id"]: line for line in lines if line["logger"] == "loyalty.access"}
    assert access["boom-1"]["status"] == 500 and access["boom-1"]["route"] == "/boom"
    assert access["big-1"] | {"duration_ms": 0, "timestamp": ""} == {
        "timestamp": "", "level": "INFO", "logger": "loyalty.access", "message": access["big-1"]["message"],
        "method": "POST", "route": "/v1/events", "status": 413, "duration_ms": 0, "request_id": "big-1",
        "api_key_id": None}
    read = access["read-1"]
    assert read["route"] == "/v1/clients/{client_id}/benefits" and read["api_key_id"] == key.split("_")[1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", read["timestamp"])
    assert key.split("_", 2)[2] not in json.dumps(lines)  # never the secret


def test_liveness_needs_no_database_and_readiness_says_what_is_missing(tmp_path, programmes):
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no schema: `loyalty init` never ran
    client = TestClient(create_app(engine, programmes))
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "2"
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.json()["type"] == "/problems/not-ready" and "loyalty init" in ready.json()["detail"]


def test_readiness_is_degraded_while_a_refused_rule_file_is_not_served(engine, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(RULES / "corporate_lending.yaml", rules)
    watcher = RulesWatcher(rules, settle=0)
    app = create_app(engine, watcher.current())
    app.state.rules_status = watcher.status
    client = TestClient(app)
    assert client.get("/readyz").json() == {"status": "ready"}
    before = scrape(client)
    (rules / "zz-broken.yaml").write_text("format: 1\nprogramme: [\n")
    watcher.refresh()
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "zz-broken.yaml" in ready.json()["reason"] and "2026.1" in ready.json()["reason"]
    after = scrape(client)
    assert moved(before, after, "loyalty_rule_files_refused_total") == 1
    assert after[("loyalty_rules_degraded", frozenset())] == 1
    (rules / "zz-broken.yaml").unlink()
    watcher.refresh()
    assert client.get("/readyz").json() == {"status": "ready"}
    assert scrape(client)[("loyalty_rules_degraded", frozenset())] == 0


def test_the_docs_load_only_assets_the_server_serves(engine, programmes):
    client = TestClient(create_app(engine, programmes))
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html) + re.findall(r"""url: ?["']([^"']+)""", html)
        assert len(urls) >= 2, html
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url} from elsewhere"
            assert client.get(url).status_code == 200, url


def test_metrics_of_worker_processes_add_up(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR (`serve --workers N`), a scrape answered by one worker shows them all."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(code: str) -> str:
        done = subprocess.run([sys.executable, "-c", f"from service import telemetry\n{code}"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    worker("telemetry.QUOTES.labels('held').inc(2)\ntelemetry.POOL_IN_USE.inc(3)")
    worker("telemetry.QUOTES.labels('held').inc(5)\ntelemetry.POOL_IN_USE.inc(4)\ntelemetry.process_exited()")
    text = worker("import sys\nsys.stdout.write(telemetry.exposition()[0].decode())")
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("loyalty_quotes_total", frozenset({"outcome": "held"}.items()))] == 7
    assert samples[("loyalty_db_pool_connections_in_use", frozenset())] == 3  # the exited worker's 4 is gone


def test_a_served_request_logs_one_json_line_with_its_fields(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'loyalty.db'}"
    engine = make_engine(db_url)
    from storage.db import init_schema

    init_schema(engine)
    key = create_key(engine, "pricing", ["benefits:read"])[0]
    log = tmp_path / "server.log"
    with serve(db_url, log, env={"LOYALTY_LOG_FORMAT": "json"}) as server:
        answer = httpx.get(f"{server.base}/v1/clients/C-1/benefits", headers={"Authorization": f"Bearer {key}",
                                                                            "X-Request-ID": "smoke-1"})
        assert answer.status_code == 404 and answer.headers["x-request-id"] == "smoke-1"
        assets = re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', httpx.get(f"{server.base}/docs").text)
        for asset in assets:  # whole files: a file response is not cut off by a disconnect nobody made
            served = httpx.get(server.base + asset)
            assert served.status_code == 200 and len(served.content) == int(served.headers["content-length"]) > 1000
        assert len(assets) == 3
    lines = [line for line in log.read_text().splitlines() if not line.startswith("serving ")]
    records = [json.loads(line) for line in lines]  # every log line is one JSON object
    request = next(record for record in records if record.get("request_id") == "smoke-1")
    assert request["route"] == "/v1/clients/{client_id}/benefits" and request["status"] == 404
    assert request["api_key_id"] == key.split("_")[1] and request["method"] == "GET"
    assert {"uvicorn.error"} <= {record["logger"] for record in records}
    assert {record["route"] for record in records if record.get("route", "").startswith("/docs")} == {
        "/docs", "/docs-assets"}
    assert key.split("_", 2)[2] not in log.read_text()


def test_a_count_waits_for_the_request_transaction_and_vanishes_with_its_rollback(engine):
    ran: list[str] = []
    rolled_back = RequestTransaction(engine)
    with rolled_back.ambient():
        after_commit(lambda: ran.append("rolled back"))
    rolled_back.rollback()
    committed = RequestTransaction(engine)
    with committed.ambient():
        after_commit(lambda: ran.append("committed"))
        assert ran == []  # not before the commit
    committed.commit()
    after_commit(lambda: ran.append("no request transaction"))  # the caller's own transactions have ended
    assert ran == ["committed", "no request transaction"]
