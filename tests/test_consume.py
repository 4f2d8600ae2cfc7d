"""`loyalty consume`: events from RabbitMQ applied exactly once through the ingest path, on both databases.

RabbitMQ is at $LOYALTY_TEST_AMQP_URL (default: the machine's broker, guest/guest). With CI=true a broker
that does not answer fails these tests; elsewhere they are skipped with the reason. Each test uses queues
of its own, deleted afterwards.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from brokers import ERROR_HEADER, FIELD_HEADER, QUEUE_HEADER
from brokers.rabbitmq import RabbitMQ, dead_letter_exchange, dead_letter_queue, publish
from cli.main import app
from demo.generator import generate
from service.consume import ConsumeOptions, consume
from service.ingest import Ingestor
from storage.db import init_schema, make_engine
from tests.api_support import serve
from tests.conftest import IN_CI, ROOT, cli_json, event, pg_database

AMQP_URL = os.environ.get("LOYALTY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
_broker_state: dict[str, str | None] = {}


def _broker_unavailable() -> str | None:
    if "reason" not in _broker_state:
        try:
            params = pika.URLParameters(AMQP_URL)
            params.socket_timeout = params.stack_timeout = 3
            params.connection_attempts = 1
            pika.BlockingConnection(params).close()
            _broker_state["reason"] = None
        except Exception as exc:
            _broker_state["reason"] = f"RabbitMQ at {AMQP_URL} does not answer: {type(exc).__name__} {exc}"
    return _broker_state["reason"]


@pytest.fixture
def amqp_url() -> str:
    """The test broker's URL; fails in CI and skips elsewhere when it does not answer."""
    reason = _broker_unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: RabbitMQ tests must run)")
        pytest.skip(f"{reason}; start it or set LOYALTY_TEST_AMQP_URL")
    return AMQP_URL


@pytest.fixture
def queue(amqp_url) -> Iterator[str]:
    """A queue name of this test's own; the queue, its dead-letter queue and exchange are deleted afterwards."""
    name = f"test.consume.{uuid.uuid4().hex[:10]}"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for queue_name in (name, dead_letter_queue(name)):
        channel.queue_delete(queue_name)
    channel.exchange_delete(dead_letter_exchange(name, None))
    connection.close()


@pytest.fixture
def database(request, tmp_path) -> Iterator[str]:
    """A fresh database with its schema: SQLite or PostgreSQL (request.param)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'loyalty.db'}"
        _init(url)
        yield url
        return
    with pg_database() as url:
        _init(url)
        yield url


def _init(url: str) -> None:
    engine = make_engine(url)
    init_schema(engine)
    engine.dispose()


BOTH = pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
POSTGRESQL = pytest.mark.parametrize("database", ["postgresql"], indirect=True)


def _events(count: int) -> list[bytes]:
    """`count` events of the demo portfolio, oldest first, as message bodies."""
    clients = count // 80 + 2  # about 110 events a client over 18 months, fewer for some
    events = generate(clients, 18)[:count]
    assert len(events) == count
    return [json.dumps(e).encode() for e in events]


def _processed(url: str) -> tuple[int, int]:
    """(rows, distinct event ids) in processed_event."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(text("SELECT count(*), count(DISTINCT event_id) FROM processed_event")).one())
    finally:
        engine.dispose()


def _depth(url: str, queue_name: str) -> int:
    """Messages ready in a queue."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(queue_name, passive=True).method.message_count
    finally:
        connection.close()


def _exists(url: str, queue_name: str) -> bool:
    """Whether the queue was declared."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(queue_name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def _dead_letters(url: str, queue_name: str) -> list[tuple[bytes, dict]]:
    """The messages of `queue_name`'s dead-letter queue (taken off it), with their headers."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel, found = connection.channel(), []
    while True:
        method, properties, body = channel.basic_get(dead_letter_queue(queue_name), auto_ack=True)
        if method is None:
            break
        found.append((body, properties.headers or {}))
    connection.close()
    return found


def _consumer(db_url: str, amqp_url: str, queue_name: str, log: Path, *options: str,
              env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m cli consume` as its own process, the broker URL in its environment (not on its command line)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")},
           "LOYALTY_DATABASE_URL": db_url, "LOYALTY_CONSUME_URL": amqp_url, **(env or {})}
    with log.open("a") as sink:
        return subprocess.Popen([sys.executable, "-m", "cli", "consume", "--queue", queue_name, "--json", *options],
                                stdout=subprocess.PIPE, stderr=sink, env=env, cwd=ROOT, text=True)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize(("database", "count"), [("postgresql", 100_000), ("sqlite", 5_000)], indirect=["database"])
def test_a_consumer_killed_three_times_applies_every_event_exactly_once(database, amqp_url, queue, count, tmp_path):
    # Published while the consumers run (as a source system would), which also keeps the test short.
    publisher = threading.Thread(target=publish, args=(amqp_url, queue, _events(count)))
    publisher.start()
    _wait_for(lambda: _exists(amqp_url, queue), 30, "the queue")
    log = tmp_path / "consume.log"
    for kill in range(1, 4):  # kill -9 at about a quarter, a half and three quarters of the way
        process = _consumer(database, amqp_url, queue, log, "--batch", "1000", "--prefetch", "2000")
        try:
            target = count * kill // 4
            _wait_for(lambda target=target, process=process: _processed(database)[0] >= target or
                      process.poll() is not None, 240, f"{target} events applied")
            assert process.poll() is None, log.read_text()
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    publisher.join(timeout=120)
    assert not publisher.is_alive()
    # The last one drains the queue: what the killed ones applied but had not acknowledged comes again.
    process = _consumer(database, amqp_url, queue, log, "--until-idle", "2")
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, log.read_text()
    summary = json.loads(out)
    assert summary["dead_lettered"] == 0 and summary["failures"] == 0
    assert _processed(database) == (count, count)  # each event once, none lost
    assert _depth(amqp_url, queue) == 0 and _depth(amqp_url, dead_letter_queue(queue)) == 0
    verified = cli_json("ledger", "verify", db_url=database)
    assert verified == {"ok": True, "problems": []}


@BOTH
def test_rejected_messages_go_to_the_dead_letter_queue_with_their_reason_and_the_rest_of_the_batch_is_applied(
        database, amqp_url, queue, tmp_path):
    good = [event(f"E-{n}", "C-1", "loan.drawn", f"2026-03-0{n}T10:00:00Z", loan_id=f"L-{n}",
                  product="working_capital", amount="1000000", currency="CNY", term_months=12) for n in range(1, 4)]
    conflicting = {**good[0], "data": {**good[0]["data"], "amount": "2000000"}}  # E-1 again, other content
    bad_value = event("E-9", "C-1", "loan.drawn", "2026-03-09T10:00:00Z", loan_id="L-9", product="working_capital",
                      amount="lots", currency="CNY", term_months=12)
    bodies = [json.dumps(good[0]).encode(), b"{not json", json.dumps(good[1]).encode(), json.dumps(bad_value).encode(),
              json.dumps(conflicting).encode(), b"", json.dumps(good[2]).encode(), json.dumps(good[1]).encode(),
              b'{"id": "E-\xff"}']
    publish(amqp_url, queue, bodies)
    result = CliRunner().invoke(app, ["--db", database, "consume", amqp_url, "--queue", queue, "--until-idle", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {k: summary[k] for k in ("consumed", "applied", "duplicates", "dead_lettered", "batches")} == {
        "consumed": 9, "applied": 3, "duplicates": 1, "dead_lettered": 5, "batches": 1}
    assert _processed(database) == (3, 3)
    dead = {body: headers for body, headers in _dead_letters(amqp_url, queue)}
    assert set(dead) == {b"{not json", json.dumps(bad_value).encode(), json.dumps(conflicting).encode(), b"",
                         b'{"id": "E-\xff"}'}
    assert "not UTF-8" in dead[b'{"id": "E-\xff"}'][ERROR_HEADER]
    assert "not valid JSON" in dead[b"{not json"][ERROR_HEADER]
    assert dead[json.dumps(bad_value).encode()][FIELD_HEADER] == "data.amount"
    assert dead[json.dumps(conflicting).encode()][ERROR_HEADER].startswith("conflict: event id 'E-1'")
    assert "empty message" in dead[b""][ERROR_HEADER]
    assert {headers[QUEUE_HEADER] for headers in dead.values()} == {queue}
    assert _depth(amqp_url, queue) == 0  # all settled: nothing comes again


@BOTH
def test_two_consumers_on_one_queue_apply_each_event_once(database, amqp_url, queue, tmp_path):
    count = 3000
    publish(amqp_url, queue, _events(count))
    options = ("--batch", "100", "--prefetch", "200", "--until-idle", "2")
    consumers = [_consumer(database, amqp_url, queue, tmp_path / f"consumer{n}.log", *options) for n in (1, 2)]
    summaries = [json.loads(process.communicate(timeout=240)[0]) for process in consumers]
    assert [process.returncode for process in consumers] == [0, 0]
    assert all(summary["consumed"] > 0 for summary in summaries)  # the queue was shared
    assert sum(summary["applied"] for summary in summaries) == count
    assert sum(summary["consumed"] for summary in summaries) == count
    assert _processed(database) == (count, count)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_sigterm_stops_a_consumer_after_its_batch_and_it_prints_the_counts(database, amqp_url, queue, tmp_path):
    publish(amqp_url, queue, _events(300))
    process = _consumer(database, amqp_url, queue, tmp_path / "consume.log")  # runs until stopped
    _wait_for(lambda: _processed(database)[0] == 300 and _depth(amqp_url, queue) == 0, 60, "the events")
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=15)
    assert process.returncode == 0, (tmp_path / "consume.log").read_text()
    summary = json.loads(out)
    assert (summary["consumed"], summary["applied"], summary["queue"]) == (300, 300, queue)


@POSTGRESQL
def test_a_quiet_queue_flushes_a_partial_batch_within_the_bound(database, amqp_url, queue, programmes):
    engine = make_engine(database)
    broker = RabbitMQ(amqp_url, queue, prefetch=2000)
    stop = threading.Event()
    options = ConsumeOptions(queue=queue, batch=1000, flush_seconds=0.2)
    worker = threading.Thread(target=consume, args=(broker, lambda: RabbitMQ(amqp_url, queue, 2000),
                                                    Ingestor(engine, programmes, batch_size=1000), options, stop))
    worker.start()
    try:
        publish(amqp_url, queue, _events(5))
        sent = time.monotonic()
        _wait_for(lambda: _processed(database)[0] == 5, 10, "the partial batch")
        elapsed = time.monotonic() - sent
        assert elapsed < 2.0, elapsed  # 0.2 s of quiet, then one small transaction (a loaded machine: margin)
        _wait_for(lambda: _depth(amqp_url, queue) == 0, 5, "the acknowledgement")
    finally:
        stop.set()
        worker.join(timeout=10)
        engine.dispose()
    assert not worker.is_alive()


@POSTGRESQL
def test_a_database_outage_acknowledges_nothing_and_the_batch_is_applied_once_it_is_back(
        database, amqp_url, queue, tmp_path):
    count = 200
    publish(amqp_url, queue, _events(count))
    blocker = create_engine(database)
    log = tmp_path / "consume.log"
    with blocker.connect() as conn:
        conn.execute(text("LOCK TABLE processed_event IN ACCESS EXCLUSIVE MODE"))  # ingest cannot write
        env_process = _consumer(database, amqp_url, queue, log, "--until-idle", "3",
                                env={"LOYALTY_BATCH_LOCK_TIMEOUT": "1"})
        _wait_for(lambda: "the database failed" in log.read_text(), 30, "the consumer to report the failure")
        conn.rollback()
    blocker.dispose()
    out, _ = env_process.communicate(timeout=60)
    assert env_process.returncode == 0, log.read_text()
    summary = json.loads(out)
    # Had the failed batch been acknowledged, its events would be missing: all were delivered again and applied.
    assert summary["failures"] >= 1 and summary["applied"] == count
    assert "nothing of it is acknowledged" in log.read_text()
    assert _processed(database) == (count, count)


def test_consume_says_what_is_wrong_without_printing_the_password(tmp_path):
    db = f"sqlite:///{tmp_path / 'loyalty.db'}"
    _init(db)
    runner = CliRunner()
    result = runner.invoke(app, ["--db", db, "consume", "amqp://loyalty:s3cret-pw@127.0.0.1:1/%2F", "--json"])
    assert result.exit_code == 2
    message = json.loads(result.stdout)["error"]
    assert "cannot consume from amqp://loyalty:***@127.0.0.1:1/%2F" in message and "s3cret-pw" not in message
    result = runner.invoke(app, ["--db", db, "consume", "amqp://x@h/", "--batch", "500", "--prefetch", "100"])
    assert result.exit_code == 2 and "--prefetch 100 is below --batch 500" in result.output
    result = runner.invoke(app, ["--db", db, "consume", "amqp://u:pw@h:99999999/", "--json"])
    assert result.exit_code == 2 and "the URL is not valid: Port out of range" in json.loads(result.stdout)["error"]
    result = runner.invoke(app, ["--db", db, "consume", "http://h/", "--json"])
    assert result.exit_code == 2 and "amqp://" in json.loads(result.stdout)["error"]
    result = runner.invoke(app, ["--db", db, "serve", "--workers", "2", "--consume", "amqp://x@h/"])
    assert result.exit_code == 2 and "loyalty consume" in result.output


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_serve_consumes_in_a_thread_and_counts_the_messages(database, amqp_url, queue, tmp_path):
    publish(amqp_url, queue, _events(50) + [b"nonsense"])
    with serve(database, tmp_path / "serve.log", "--consume", amqp_url, "--queue", queue) as server:
        _wait_for(lambda: _processed(database)[0] == 50 and _depth(amqp_url, queue) == 0, 30, "the events")
        import httpx

        metrics = httpx.get(f"{server.base}/metrics", timeout=5).text
    assert f'loyalty_broker_messages_total{{outcome="applied",queue="{queue}"}} 50.0' in metrics
    assert f'loyalty_broker_messages_total{{outcome="dead_lettered",queue="{queue}"}} 1.0' in metrics
    assert 'loyalty_events_total{outcome="applied",source="broker"} 50.0' in metrics
    assert server.process.returncode == 0  # SIGTERM: the server, then the consumer, stopped in order
    assert "guest:guest" not in (tmp_path / "serve.log").read_text()
