"""Every wait is bounded: a frozen or locked database turns into a 503 (API) or exit 2 with one line (CLI)
within seconds, and the server bounds what a client can make it hold (headers, slow heads, connections).

The elapsed times asserted are generous upper bounds that only a hang breaks (the defaults answer in
2 to 10 s), not benchmarks.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from datetime import timedelta

import anyio
import httpx
import pytest
from anyio import to_thread
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app

from service.apikeys import create_key
from service.clock import utc_now
from service.ingest import Ingestor
from tests.api_support import borrower_events, make_api, serve
from tests.conftest import run_cli
from tests.waits_support import frozen_capable

BOUND = 15.0  # seconds: what "within seconds" must beat whatever the machine's load


def _seed(engine, programmes) -> str:
    """A borrower with activity and an admin key; returns the key."""
    events = borrower_events(onboarded=utc_now() - timedelta(days=40))
    Ingestor(engine, programmes).ingest_raw(list(enumerate(events)))
    return create_key(engine, "test", ["admin"])[0]


def _timed(call):  # noqa: ANN001, ANN202
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def _is_pg(db_url: str) -> bool:
    return db_url.startswith("postgresql")


def test_a_frozen_postgresql_is_a_quick_503_and_the_server_recovers(db_url, engine, programmes, tmp_path):
    if not _is_pg(db_url):
        pytest.skip("a frozen server is PostgreSQL's case; SQLite's is the held write lock (next test)")
    key = _seed(engine, programmes)
    headers = {"Authorization": f"Bearer {key}"}
    with frozen_capable(db_url) as (proxy, proxied), \
            serve(proxied, tmp_path / "server.log", "--request-timeout", "3") as server:
        client = httpx.Client(base_url=server.base, headers=headers, timeout=60)
        assert client.get("/v1/clients/C-1/benefits").status_code == 200
        proxy.freeze()
        ready, elapsed = _timed(lambda: client.get("/readyz"))
        assert ready.status_code == 503 and elapsed < BOUND, (ready.text, elapsed)
        assert client.get("/healthz").status_code == 200  # liveness: the process is fine, only the database is not
        # More requests than worker threads and pooled connections: none may queue behind the stuck ones.
        for _ in range(6):
            benefits, elapsed = _timed(lambda: client.get("/v1/clients/C-1/benefits"))
            assert benefits.status_code == 503 and elapsed < BOUND, (benefits.text, elapsed)
            assert benefits.headers["content-type"] == "application/problem+json"
            assert "Retry-After" in benefits.headers
        posted, elapsed = _timed(lambda: client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"},
                                                     headers={"Idempotency-Key": "frozen-1"}))
        assert posted.status_code == 503 and elapsed < BOUND, (posted.text, elapsed)
        proxy.thaw()
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not recover once the database answered"
            time.sleep(0.2)
        assert client.get("/v1/clients/C-1/benefits").status_code == 200


def test_a_locked_sqlite_is_a_quick_503_for_writes_while_reads_go_on(db_url, engine, programmes, tmp_path):
    if _is_pg(db_url):
        pytest.skip("SQLite's held write lock; PostgreSQL's frozen server is the test above")
    key = _seed(engine, programmes)
    headers = {"Authorization": f"Bearer {key}"}
    with serve(db_url, tmp_path / "server.log") as server:
        client = httpx.Client(base_url=server.base, headers=headers, timeout=60)
        locker = create_engine(db_url).raw_connection()
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock and does not let go
        try:
            posted, elapsed = _timed(lambda: client.post("/v1/clients/C-1/redemptions",
                                                         json={"reward_id": "fast-track-24h"}))
            assert posted.status_code == 503 and elapsed < BOUND, (posted.text, elapsed)
            keyed, elapsed = _timed(lambda: client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"},
                                                        headers={"Idempotency-Key": "locked-1"}))
            assert keyed.status_code == 503 and elapsed < BOUND, (keyed.text, elapsed)
            assert client.get("/healthz").status_code == 200  # WAL readers never wait for the writer
            assert client.get("/v1/clients/C-1/benefits").status_code == 200
        finally:
            locker.rollback()
            locker.close()
        retried = client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"},
                              headers={"Idempotency-Key": "locked-1"})
        assert retried.status_code == 201, retried.text
        assert client.get("/v1/clients/C-1/benefits").json()["points_balance"] == 11000 - 8000


def _one_line_error(result) -> None:  # noqa: ANN001
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error:") and "database" in lines[0], lines[0]


def test_the_cli_exits_2_with_one_line_when_the_database_is_frozen_or_locked(db_url, engine, programmes, tmp_path):
    _seed(engine, programmes)
    if _is_pg(db_url):
        with frozen_capable(db_url) as (proxy, proxied):
            proxy.freeze()
            for command in (("benefits", "C-1"), ("apikey", "list"), ("ingest", "examples/sample_events.jsonl")):
                result, elapsed = _timed(lambda c=command: run_cli(*c, db_url=proxied))
                _one_line_error(result)
                assert elapsed < BOUND + 5, elapsed  # the command's start-up included
                assert "127.0.0.1" in result.stderr and "running" in result.stderr
        return
    locker = create_engine(db_url).raw_connection()
    locker.execute("BEGIN IMMEDIATE")
    try:
        quick = {"LOYALTY_BATCH_LOCK_TIMEOUT": "2"}  # the default (15 s) works the same, slower
        env_free = _loyalty(db_url, "apikey", "create", "--name", "x", "--scope", "admin", env=quick)
        _one_line_error(env_free)  # a write through no particular handler: the top-level one
        assert "locked" in env_free.stderr
        ingest = _loyalty(db_url, "ingest", "examples/sample_events.jsonl", env=quick)
        _one_line_error(ingest)
    finally:
        locker.rollback()
        locker.close()


def _loyalty(db_url: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`loyalty --db URL ARGS` in a subprocess with `env` added to a LOYALTY_*-free environment."""
    script = Path(sys.executable).parent / "loyalty"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}, **env,
                   "COLUMNS": "200"}
    return subprocess.run([*command, "--db", db_url, *args], capture_output=True, text=True, env=environment,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)


def test_the_cli_says_so_when_a_setting_is_not_a_duration(db_url, engine):
    result = _loyalty(db_url, "apikey", "list", env={"LOYALTY_BATCH_LOCK_TIMEOUT": "soon"})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "LOYALTY_BATCH_LOCK_TIMEOUT='soon'" in result.stderr and "Traceback" not in result.stderr


# --- the HTTP server's own bounds (one database is enough: no database is involved) ------------------------

@pytest.fixture
def sqlite_server(tmp_path, engine, db_url):
    if _is_pg(db_url):
        pytest.skip("the HTTP server's limits do not depend on the database")
    with serve(db_url, tmp_path / "server.log", "--head-timeout", "2", "--max-connections", "20") as server:
        yield server


def _receive_all(sock: socket.socket, limit: float = BOUND) -> bytes:
    sock.settimeout(limit)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return b"".join(chunks)


def test_oversized_headers_get_431_and_the_server_memory_stays_flat(sqlite_server):
    before = sqlite_server.rss_mib()
    for _ in range(4):  # the campaign's attack: 64 MB header lines
        with socket.create_connection(("127.0.0.1", sqlite_server.port)) as sock:
            answer = b""
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                line = b"a" * (1024 * 1024)
                for _ in range(64):
                    sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed the connection: what we want
            answer = _receive_all(sock)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"\r\n"
    with socket.create_connection(("127.0.0.1", sqlite_server.port)) as sock:
        sock.sendall(many)
        assert _receive_all(sock).startswith(b"HTTP/1.1 431")
    assert sqlite_server.rss_mib() - before < 40, (before, sqlite_server.rss_mib())
    assert httpx.get(f"{sqlite_server.base}/healthz").status_code == 200


def test_a_slow_request_head_is_cut_off_after_the_bound(sqlite_server):
    with socket.create_connection(("127.0.0.1", sqlite_server.port)) as idle, \
            socket.create_connection(("127.0.0.1", sqlite_server.port)) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        answer = b""
        try:
            for index in range(int(BOUND * 4)):  # a header byte every quarter second, never finishing
                slow.sendall(b"X-Slow-%d: y\r\n" % index)
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _receive_all(slow, 1)
        elapsed = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408") or answer == b"", answer[:200]
        assert elapsed < BOUND, elapsed
        assert _receive_all(idle, BOUND) == b""  # a connection that sends nothing is closed too


def test_requests_beyond_the_connection_cap_get_503_and_the_server_keeps_answering(sqlite_server):
    sockets = [socket.create_connection(("127.0.0.1", sqlite_server.port)) for _ in range(25)]
    try:
        with socket.create_connection(("127.0.0.1", sqlite_server.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _receive_all(sock, 5).startswith(b"HTTP/1.1 503")
    finally:
        for sock in sockets:
            sock.close()
    deadline = time.monotonic() + BOUND
    while httpx.get(f"{sqlite_server.base}/healthz").status_code != 200:  # the server notices the closes
        assert time.monotonic() < deadline
        time.sleep(0.1)


# --- abandoned work is counted while, and only while, a thread still does it (no database needed) ----------

def test_work_abandoned_before_or_during_its_thread_is_counted_only_while_it_runs():
    from api import deadlines

    cleaned: list[str] = []

    async def scenario() -> None:
        limiter = to_thread.current_default_thread_limiter()
        tokens, limiter.total_tokens = limiter.total_tokens, 1
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(to_thread.run_sync, time.sleep, 0.5)  # holds the only worker thread
                await anyio.sleep(0.05)
                for _ in range(3):  # time out while waiting for a thread: nothing was left running
                    with pytest.raises(deadlines.DeadlineExceeded):
                        await deadlines.in_thread(lambda: "never run", 0.05, cleanup=cleaned.append)
            with pytest.raises(deadlines.DeadlineExceeded):  # times out while running: left behind, counted
                await deadlines.in_thread(lambda: time.sleep(0.3) or "late", 0.05, cleanup=cleaned.append)
            assert deadlines.backlog.count == before + 1
            await anyio.sleep(0.6)  # the thread finishes: its result is cleaned up and the count taken off
        finally:
            limiter.total_tokens = tokens

    before = deadlines.backlog.count
    anyio.run(scenario)
    assert deadlines.backlog.count == before
    assert cleaned == ["late"]


def test_pipelined_requests_with_bodies_are_not_taken_for_oversized_heads(sqlite_server):
    body = b'{"pad": "' + b"x" * (40 * 1024) + b'"}'  # larger than the head bound (32 KiB)
    request = (b"POST /v1/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", sqlite_server.port)) as sock:
        sock.settimeout(BOUND)
        sock.sendall(request + body + request)  # the second head arrives while the first is answered
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):
            first += sock.recv(65536)
        sock.sendall(body)  # the second body comes after the first answer
        second = b""
        while b"\r\n\r\n" not in second or not second.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            second += chunk
    assert first.startswith(b"HTTP/1.1 401"), first[:200]
    assert second.startswith(b"HTTP/1.1 401"), second[:200]


def test_a_post_without_a_key_that_times_out_says_it_may_still_be_applied(engine, programmes):
    """Its work runs in the route's own transactions and is left to finish: the 503 must not promise
    that nothing happened (a keyed POST's is rolled back instead: tests/test_idempotency_failures.py)."""
    api = make_api(engine, programmes)
    assert api.client.post("/v1/events", json=borrower_events()).status_code == 200
    app = create_app(engine, programmes, clock=api.clock, request_seconds=1)
    with TestClient(app, headers={"Authorization": f"Bearer {api.keys['admin']}"}) as client:
        locker = engine.raw_connection()  # another writer holds the borrower (SQLite: the write lock)
        try:
            locker.cursor().execute("BEGIN IMMEDIATE" if engine.dialect.name == "sqlite"
                                    else "SELECT 1 FROM client WHERE client_id = 'C-1' FOR UPDATE")
            answer = client.post("/v1/clients/C-1/redemptions", json={"reward_id": "fast-track-24h"})
        finally:
            locker.rollback()
            locker.close()
        assert answer.status_code == 503 and answer.headers["Retry-After"], answer.text
        assert "may still be applied" in answer.json()["detail"] and "Idempotency-Key" in answer.json()["detail"]
        deadline = time.monotonic() + BOUND
        while client.get("/v1/clients/C-1/benefits").json()["points_balance"] != 11000 - 8000:
            assert time.monotonic() < deadline, "the work left behind was not applied"
            time.sleep(0.1)


@pytest.mark.parametrize("command", [("rules", "test"),
                                     ("simulate", "rules/corporate_lending.yaml", "--events", "examples/sample_events.jsonl")])
def test_a_bad_setting_read_by_any_command_is_one_line_and_exit_2(command, monkeypatch):
    """These commands make their scratch engines in services, far from the CLI's own database set-up."""
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    result = CliRunner().invoke(app, list(command), env={"LOYALTY_BATCH_LOCK_TIMEOUT": "abc", "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "LOYALTY_BATCH_LOCK_TIMEOUT='abc'" in lines[0], result.stderr
