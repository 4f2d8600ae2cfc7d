"""Webhooks end to end, on SQLite and PostgreSQL: notices made through the product (events with an instant
upgrade, a committed quote, a review) reach a real HTTP receiver on 127.0.0.1, signed (verified with the
`standardwebhooks` package), in order per client, each id once after deduplication, through failures, a
receiver down for a while, a dispatcher process killed mid-delivery and two dispatchers at once; replay,
disabling after persistent failure, and the CLI's --json answers equal to the API's."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app as cli_app
from rewards.notices import TYPES
from service.dispatch import Dispatcher, DispatchSettings
from service.review import run_review
from storage.db import read_snapshot
from storage.outbox import records
from tests.api_support import FakeClock, borrower_events, make_api
from tests.conftest import IN_CI, ROOT, event

RUNNER = CliRunner()
FAST = DispatchSettings(timeout=1.0, lease=2.0, concurrency=4, backoff_base=0.05, backoff_cap=0.2)


class Receiver:
    """A webhook receiver on 127.0.0.1: verifies each delivery's signature, answers 500 to its first
    `failures`, can be taken down (connection refused) and brought back on the same port; `hold` makes it
    keep the next request waiting until released."""

    def __init__(self, failures: int = 0, answer: int = 204):
        self.failures, self.answer = failures, answer
        self.secret: str | None = None
        self.received: list[dict] = []  # verified envelopes, with their webhook-id, in arrival order
        self.problems: list[str] = []
        self.arrivals: dict[str, datetime] = {}  # webhook-id -> first arrival
        self.hits = 0
        self.holding = threading.Event()  # set when a held request has arrived
        self.release = threading.Event()
        self.hold = False
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.placeholder: socket.socket | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/loyalty"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (the kill test): nothing to verify
                    return
                with receiver.lock:
                    receiver.hits += 1
                    failing = receiver.hits <= receiver.failures
                    held = receiver.hold
                    receiver.hold = False
                if held:
                    receiver.holding.set()
                    receiver.release.wait(30)
                    return  # no answer: the connection closes
                if failing:
                    self.send_response(500)
                    self.end_headers()
                    return
                try:
                    payload = Webhook(receiver.secret).verify(body, dict(self.headers))
                except WebhookVerificationError as exc:
                    receiver.problems.append(str(exc))
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.received.append({**payload, "id": self.headers["webhook-id"]})
                    receiver.arrivals.setdefault(self.headers["webhook-id"], datetime.now(UTC))
                self.send_response(receiver.answer)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        if self.placeholder is not None:
            self.placeholder.close()
            self.placeholder = None
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop answering: connections are refused. The port stays bound (not listening), so no other test's
        server can take it meanwhile and receive this one's retries."""
        self.server.shutdown()
        self.server.server_close()
        self.placeholder = socket.socket()
        self.placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.placeholder.bind(("127.0.0.1", self.port))

    def close(self) -> None:
        """Stop for good, the port released."""
        self.release.set()
        if self.placeholder is None:
            self.down()
        self.placeholder.close()

    def ids(self) -> list[str]:
        return [item["id"] for item in self.received]


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def loyalty(db_url: str, *args: str, code: int = 0) -> dict:
    """A command in process with --json: its parsed answer (its exit status checked)."""
    result = RUNNER.invoke(cli_app, ["--db", db_url, *args, "--json"])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def subscribe(api, receiver: Receiver, events: list[str] | None = None) -> dict:
    answer = api.client.post("/v1/webhooks", json={"url": receiver.url, "events": events or ["*"],
                                                   "description": "test receiver"})
    assert answer.status_code == 201, answer.text
    receiver.secret = answer.json()["secret"]
    return answer.json()


def make_notices(api, engine, programmes, clients: int = 3) -> None:
    """Notices through the product: clients onboarded with a 60M drawdown and a referral (entitlements
    granted), a repayment that upgrades them at once (tier changed), a quote committed (an entitlement
    consumed, the quote committed), and a review a year on (grace periods, downgrades)."""
    for number in range(1, clients + 1):
        client = f"C-{number}"
        items = borrower_events(client) + [
            event(f"{client}-draw2", client, "loan.drawn", "2026-03-01T09:00:00Z", loan_id="L-2",
                  product="working_capital", amount="45000000.00", currency="CNY", term_months=12),
            event(f"{client}-repaid", client, "repayment.made", "2026-03-15T09:00:00Z", loan_id="L-2",
                  amount="1000000", due_date="2026-03-15", days_late=0)]
        answer = api.client.post("/v1/events", json=items)
        assert answer.status_code == 200 and answer.json()["rejected"] == 0, answer.text
    held = api.client.post("/v1/clients/C-1/quotes", json={"product": "working_capital", "amount": "30000000"})
    assert held.status_code == 201, held.text
    assert api.client.post(f"/v1/quotes/{held.json()['quote_id']}/commit", json={"loan_id": "L-9"}).status_code == 200
    run_review(engine, programmes, datetime(2027, 5, 31, tzinfo=UTC), clock=lambda: datetime(2027, 6, 1, tzinfo=UTC))


def outbox(engine) -> list[dict]:
    with read_snapshot(engine) as conn:
        return records(conn, limit=100_000)


def assert_in_order_per_client(receiver: Receiver, notices: list[dict]) -> None:
    """Each client's notices, first arrivals only (a receiver deduplicating by id), in the outbox's order."""
    expected, seen, arrived = defaultdict(list), set(), defaultdict(list)
    for notice in notices:
        expected[notice["client_id"]].append(notice["id"])
    for item in receiver.received:
        if item["id"] not in seen:
            seen.add(item["id"])
            arrived[item["data"]["client_id"]].append(item["id"])
    assert dict(arrived) == dict(expected)


def drain(dispatcher: Dispatcher, engine, until_done: float = 30.0) -> None:
    """Run passes until no delivery is pending (or fail after `until_done` seconds)."""
    deadline = time.monotonic() + until_done
    while time.monotonic() < deadline:
        dispatcher.run_once()
        with read_snapshot(engine) as conn:
            pending = conn.exec_driver_sql("SELECT count(*) FROM webhook_delivery WHERE status = 'pending'").scalar()
            unrouted = conn.exec_driver_sql("SELECT count(*) FROM outbox_event WHERE routed_at IS NULL").scalar()
        if not pending and not unrouted:
            return
        time.sleep(0.05)
    pytest.fail(f"deliveries still pending after {until_done} s")


def test_every_notice_arrives_signed_in_order_once_after_failures_and_downtime(engine, programmes, db_url, receiver):
    api = make_api(engine, programmes)
    subscription = subscribe(api, receiver)
    receiver.failures = 4  # its first answers are 500s
    make_notices(api, engine, programmes)
    notices = outbox(engine)
    assert {"tier.changed", "entitlement.granted", "entitlement.consumed", "quote.committed"} <= \
        {notice["type"] for notice in notices}
    dispatcher = Dispatcher(engine, FAST)
    try:
        dispatcher.route()
        dispatcher.deliver_due()  # the first heads of line: 500s
        time.sleep(0.25)
        dispatcher.deliver_due()  # one more 500, then successes
        receiver.down()  # then it is down for a while: connection refused
        for _ in range(5):
            dispatcher.run_once()
            time.sleep(0.1)
        assert len(receiver.received) < len(notices)
        receiver.up()
        drain(dispatcher, engine)
    finally:
        dispatcher.close()

    assert receiver.problems == []  # every signature verified
    assert set(receiver.ids()) == {notice["id"] for notice in notices}
    assert_in_order_per_client(receiver, notices)
    first = receiver.received[0]
    assert set(first) == {"id", "type", "timestamp", "data", "version"} and first["version"] == TYPES[first["type"]][0]

    # The delivery log kept every attempt: the 500s, the refused connections, the successes.
    log = loyalty(db_url, "webhooks", "deliveries", "--subscription", subscription["id"], "--limit", "1000")
    assert len(log["deliveries"]) == len(notices) and {d["status"] for d in log["deliveries"]} == {"delivered"}
    attempts = [a for d in log["deliveries"] for a in d["log"]]
    assert sum(a["status_code"] == 500 for a in attempts) == 4
    assert any(a["status_code"] is None and "Connect" in a["error"] for a in attempts)
    assert sum(a["status_code"] == 204 for a in attempts) == len(notices)
    # The CLI's answers are the API's.
    api_log = api.client.get(f"/v1/webhooks/{subscription['id']}/deliveries", params={"limit": 1000})
    assert api_log.status_code == 200 and api_log.json() == log
    assert api.client.get("/v1/webhooks").json() == loyalty(db_url, "webhooks", "list")
    listed = loyalty(db_url, "webhooks", "list")["subscriptions"]
    assert [(s["id"], s["pending"], s["secret"], s["failing_since"]) for s in listed] == \
        [(subscription["id"], 0, None, None)]

    # Replay: one delivery through the API, then a time range through the CLI; they arrive again.
    one = log["deliveries"][-1]
    replayed = api.client.post(f"/v1/webhook-deliveries/{one['id']}/replay")
    assert replayed.status_code == 200 and replayed.json() == {"replayed": 1, "delivery_ids": [one["id"]]}
    dispatcher = Dispatcher(engine, FAST)
    try:
        drain(dispatcher, engine)
        assert Counter(receiver.ids())[one["message_id"]] == 2
        ranged = loyalty(db_url, "webhooks", "replay", "--subscription", subscription["id"], "--since", "2026-01-01")
        assert ranged["replayed"] == len(notices)
        drain(dispatcher, engine)
    finally:
        dispatcher.close()
    counts = Counter(receiver.ids())
    assert counts[one["message_id"]] == 3 and all(counts[n["id"]] == 2 for n in notices if n["id"] != one["message_id"])


def test_a_dispatcher_killed_mid_delivery_loses_nothing(engine, programmes, db_url, receiver):
    api = make_api(engine, programmes)
    subscribe(api, receiver)
    make_notices(api, engine, programmes, clients=2)
    notices = outbox(engine)
    receiver.hold = True  # the first delivery is still in flight when its dispatcher dies
    process = subprocess.Popen([sys.executable, "-m", "cli", "--db", db_url, "dispatch", "--timeout", "1",
                                "--lease", "2", "--interval", "100ms", "--json"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")})
    try:
        assert receiver.holding.wait(30), "the dispatcher process sent nothing"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    receiver.release.set()
    killed_lease = time.monotonic()
    dispatcher = Dispatcher(engine, FAST)
    try:
        drain(dispatcher, engine)
    finally:
        dispatcher.close()
    assert time.monotonic() - killed_lease >= 1.0  # the killed one's delivery waited for its lease to lapse
    assert receiver.problems == []
    assert set(receiver.ids()) == {notice["id"] for notice in notices}
    assert_in_order_per_client(receiver, notices)


def test_two_dispatchers_share_the_work_without_sending_twice(engine, programmes, receiver):
    api = make_api(engine, programmes)
    subscribe(api, receiver)
    make_notices(api, engine, programmes, clients=12)
    notices = outbox(engine)
    dispatchers = [Dispatcher(engine, FAST, name=f"replica-{n}") for n in (1, 2)]
    errors: list[BaseException] = []

    def work(dispatcher: Dispatcher) -> None:
        try:
            drain(dispatcher, engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in dispatchers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for dispatcher in dispatchers:
            dispatcher.close()
    assert errors == []
    assert sorted(receiver.ids()) == sorted(notice["id"] for notice in notices)  # each exactly once
    assert_in_order_per_client(receiver, notices)
    with read_snapshot(engine) as conn:
        senders = {row[0] for row in conn.exec_driver_sql("SELECT DISTINCT dispatcher FROM webhook_attempt")}
    assert senders == {"replica-1", "replica-2"}


def test_persistent_failure_fails_deliveries_then_disables_the_subscription(engine, programmes, db_url, receiver):
    api = make_api(engine, programmes)
    subscription = subscribe(api, receiver, ["entitlement.granted"])
    receiver.failures = 10**6  # always 500
    make_notices(api, engine, programmes, clients=1)
    clock = FakeClock(datetime.now(UTC))
    settings = DispatchSettings(timeout=1.0, lease=2.0, backoff_base=1, backoff_cap=60,
                                retry_for=timedelta(hours=1), disable_after=timedelta(minutes=90))
    dispatcher = Dispatcher(engine, settings, clock=clock)
    try:
        for _ in range(4):  # every 30 minutes, by the clock the test controls
            dispatcher.run_once()
            clock.advance(timedelta(minutes=30))
        [listed] = loyalty(db_url, "webhooks", "list")["subscriptions"]
        assert listed["disabled_at"] is not None and "every attempt failed since" in listed["disabled_reason"]
        assert "HTTP 500" in listed["disabled_reason"] and listed["failed"] >= 1
        failed = loyalty(db_url, "webhooks", "deliveries", "--status", "failed")["deliveries"]
        assert failed and all(d["attempts"] >= 3 and d["last_status_code"] == 500 for d in failed)
        hits = receiver.hits
        clock.advance(timedelta(hours=1))
        dispatcher.run_once()
        assert receiver.hits == hits  # disabled: nothing is sent

        # Enabled again, with the receiver fixed: what waited is sent, in order.
        receiver.failures = 0
        enabled = api.client.post(f"/v1/webhooks/{subscription['id']}/enable").json()
        assert enabled["disabled_at"] is None and enabled["pending"] >= 1
        dispatcher.run_once()
        assert loyalty(db_url, "webhooks", "list")["subscriptions"][0]["pending"] == 0
    finally:
        dispatcher.close()


def test_410_gone_disables_at_once(engine, programmes, db_url):
    gone = Receiver(answer=410)
    try:
        api = make_api(engine, programmes)
        subscription = subscribe(api, gone)
        make_notices(api, engine, programmes, clients=1)
        dispatcher = Dispatcher(engine, FAST)
        try:
            dispatcher.run_once()
        finally:
            dispatcher.close()
        assert len(gone.received) == 1  # one attempt, then nothing more
        [listed] = loyalty(db_url, "webhooks", "list")["subscriptions"]
        assert listed["id"] == subscription["id"] and "410 Gone" in listed["disabled_reason"]
        assert loyalty(db_url, "webhooks", "remove", subscription["id"]) == {"id": subscription["id"], "removed": True}
        assert api.client.get("/v1/webhooks").json() == {"subscriptions": []}
    finally:
        gone.close()


def test_bad_subscriptions_are_refused_with_the_reason(engine, programmes, db_url):
    api = make_api(engine, programmes)
    for body, words in [({"url": "ftp://x", "events": ["*"]}, "http(s)"),
                        ({"url": "https://crm.example.com/h", "events": ["tier.chnged"]}, "did you mean 'tier.changed'"),
                        ({"url": "https://crm.example.com/h", "events": ["*"], "secret": "whsec_c2hvcnQ="}, "24 to 64"),
                        ({"url": "https://crm.example.com/h\x00", "events": ["*"]}, "printable")]:
        answer = api.client.post("/v1/webhooks", json=body)
        assert answer.status_code == 422 and words in answer.json()["detail"], answer.text
        cli = loyalty(db_url, "webhooks", "add", body["url"], "--events", ",".join(body["events"]),
                      *(["--secret", body["secret"]] if "secret" in body else []), code=2)
        assert words in cli["error"]
    reader = api.client.get("/v1/webhooks", headers=api.as_("benefits:read"))
    assert reader.status_code == 403 and reader.json()["required_scope"] == "admin"
    assert api.client.delete("/v1/webhooks/whk_nope").status_code == 404
    assert loyalty(db_url, "webhooks", "replay", "999", code=2)["error"].startswith("no webhook delivery 999")


def test_every_notice_type_is_documented_as_an_openapi_webhook(tmp_path, programmes):
    from storage.db import init_schema, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'loyalty.db'}")
    init_schema(engine)
    from fastapi.testclient import TestClient

    document = TestClient(create_app(engine, programmes)).get("/openapi.json").json()
    engine.dispose()
    assert set(document["webhooks"]) == set(TYPES)
    for name, (version, _model) in TYPES.items():
        body = document["webhooks"][name]["post"]["requestBody"]["content"]["application/json"]["schema"]
        schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
        assert schema["properties"]["type"]["const"] == name and schema["properties"]["version"]["const"] == version
        assert set(schema["required"]) == {"type", "version", "timestamp", "data"}
    types = json.loads(RUNNER.invoke(cli_app, ["webhooks", "types", "--json"]).stdout)["types"]
    assert set(types) == set(TYPES) and types["tier.changed"]["data_schema"]["properties"]["to_tier"]


def test_dispatch_stops_on_sigterm(db_url, engine, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "cli", "--db", db_url, "dispatch", "--interval", "100ms"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")})
    try:
        line = process.stderr.readline()
        assert "running" in line, line
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_serve_dispatch_sends_from_the_server_process(receiver, tmp_path):
    """`loyalty serve --dispatch`: events posted to the API reach the receiver with no other process; the
    latency from the notice's commit to its receipt is measured (printed with -s). On SQLite only: the server
    takes seconds to start on a busy machine, and the dispatcher is the one tested on both databases above."""
    from service.apikeys import create_key
    from service.webhooks import add_subscription
    from storage.db import init_schema, make_engine
    from tests.api_support import serve

    db_url = f"sqlite:///{tmp_path / 'loyalty.db'}"
    engine = make_engine(db_url)
    init_schema(engine)
    key, _ = create_key(engine, "test", ["admin"])
    receiver.secret = add_subscription(engine, receiver.url, ["*"]).secret
    with serve(db_url, tmp_path / "serve.log", "--dispatch") as server:
        for number in range(1, 6):
            for item in borrower_events(f"C-{number}"):
                answer = httpx.post(f"{server.base}/v1/events", json=[item], headers={"X-API-Key": key}, timeout=10)
                assert answer.status_code == 200 and answer.json()["rejected"] == 0, answer.text
        notices = outbox(engine)
        deadline = time.monotonic() + 20
        while len(set(receiver.ids())) < len(notices) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the round that sent the last one commits its outcomes, then counts them
        metrics = httpx.get(f"{server.base}/metrics", timeout=5).text
    assert f'loyalty_webhook_deliveries_total{{outcome="delivered"}} {len(notices)}.0' in metrics
    assert receiver.problems == [] and set(receiver.ids()) == {notice["id"] for notice in notices}
    assert_in_order_per_client(receiver, notices)
    delays = sorted((receiver.arrivals[n["id"]] - n["created_at"]).total_seconds() * 1000 for n in notices)
    p50, p99 = delays[len(delays) // 2], delays[min(len(delays) - 1, round(len(delays) * 0.99))]
    print(f"\n{db_url.split(':')[0]}: {len(notices)} notices, commit to receipt p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    engine.dispose()


RABBIT_URL = os.environ.get("LOYALTY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def rabbit_connection():
    """A connection to the test RabbitMQ; fails in CI and skips elsewhere when it does not answer."""
    import pika

    parameters = pika.URLParameters(RABBIT_URL)
    parameters.socket_timeout = parameters.stack_timeout = 3
    parameters.connection_attempts = 1
    try:
        return pika.BlockingConnection(parameters)
    except Exception as exc:
        reason = f"RabbitMQ at {RABBIT_URL} does not answer: {type(exc).__name__} {exc}"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: RabbitMQ tests must run)")
        pytest.skip(f"{reason}; start it or set LOYALTY_TEST_AMQP_URL")


def test_notices_are_published_to_a_rabbitmq_exchange_with_confirms(engine, programmes, db_url):
    broker = rabbit_connection()
    channel = broker.channel()
    exchange, nowhere = f"loyalty.test.{uuid.uuid4().hex[:8]}", f"loyalty.test.{uuid.uuid4().hex[:8]}"
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, routing_key="#")
    dispatcher = None
    try:
        api = make_api(engine, programmes)
        added = api.client.post("/v1/webhooks", json={"url": f"{RABBIT_URL}?exchange={exchange}", "events": ["*"]})
        assert added.status_code == 201 and ":***@" in added.json()["url"], added.text  # the password is not shown
        secret = added.json()["secret"]
        lost = api.client.post("/v1/webhooks", json={"url": f"{RABBIT_URL}?exchange={nowhere}",
                                                     "events": ["quote.committed"]}).json()
        make_notices(api, engine, programmes, clients=3)
        notices = outbox(engine)
        dispatcher = Dispatcher(engine, FAST)
        dispatcher.run_once()

        messages = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            headers = {key: value.decode() if isinstance(value, bytes) else value
                       for key, value in properties.headers.items()}
            payload = Webhook(secret).verify(body, headers)  # signed as a webhook is
            assert method.routing_key == payload["type"] and properties.delivery_mode == 2
            messages.append({**payload, "id": properties.message_id})
        received = Receiver.__new__(Receiver)  # only its `received`, for the order check
        received.received = messages
        assert sorted(m["id"] for m in messages) == sorted(n["id"] for n in notices)  # each once
        assert_in_order_per_client(received, notices)
        # An exchange no queue is bound to returns the message: the delivery stays pending, with the reason.
        [stuck] = loyalty(db_url, "webhooks", "deliveries", "--subscription", lost["id"])["deliveries"]
        assert stuck["status"] == "pending" and "no queue is bound" in stuck["last_error"]
    finally:
        if dispatcher is not None:
            dispatcher.close()
        channel.exchange_delete(exchange)
        channel.exchange_delete(nowhere)
        broker.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([str(Path(__file__))]))
