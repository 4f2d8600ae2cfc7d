"""Helpers for API tests: a controllable clock, an app with keys of each scope, and a client's starting activity."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.apikeys import create_key
from tests.conftest import ROOT, event

START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
HOLD = timedelta(minutes=10)


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = START):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        """Move time forward."""
        self.now += delta


@dataclass
class Api:
    """A test client authenticated with an admin key, and the keys to try others."""

    client: TestClient
    clock: FakeClock
    keys: dict[str, str]

    def as_(self, scope: str) -> dict[str, str]:
        """Headers authenticating with the key that has only `scope`."""
        return {"Authorization": f"Bearer {self.keys[scope]}"}


def make_api(engine, programmes) -> Api:
    """An app over `engine` with a fake clock and one key per scope (the default headers use admin)."""
    clock = FakeClock()
    app = create_app(engine, programmes, clock=clock, hold=HOLD)
    keys = {scope: create_key(engine, f"test {scope}", [scope])[0]
            for scope in ("admin", "events:write", "benefits:read", "quotes:write")}
    client = TestClient(app, headers={"Authorization": f"Bearer {keys['admin']}"})
    return Api(client, clock, keys)


def borrower_events(client_id: str = "C-1", onboarded: datetime = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)) -> list[dict]:
    """Onboarding, a 60M drawdown four weeks later (a single-use 10 bps discount for 180 days) and a referral
    the day after (5,000 points and a single-use 5 bps discount)."""
    def at(days: int) -> str:
        return (onboarded + timedelta(days=days)).isoformat().replace("+00:00", "Z")

    return [
        event(f"{client_id}-on", client_id, "client.onboarded", at(0), name="Huaxin", segment="strategic"),
        event(f"{client_id}-draw", client_id, "loan.drawn", at(27), loan_id="L-1",
              product="working_capital", amount="60000000.00", currency="CNY", term_months=12),
        event(f"{client_id}-ref", client_id, "referral.converted", at(28), referred_client_id="C-77"),
    ]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A `loyalty serve` process: its base URL, process (for its memory) and port."""

    base: str
    process: subprocess.Popen
    port: int

    def rss_mib(self) -> float:
        """The server's resident memory now."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@contextlib.contextmanager
def serve(db_url: str, log: Path, *options: str, rules: Path | None = None,
          env: dict[str, str] | None = None) -> Iterator[Server]:
    """`loyalty serve` in its own process on a free port with `options`, until the block ends; its environment
    is this one without LOYALTY_* variables, plus `env`."""
    port = free_port()
    script = Path(sys.executable).parent / "loyalty"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    where = ["--db", db_url, *(["--rules", str(rules)] if rules else [])]
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}, **(env or {})}
    with log.open("w") as sink:
        process = subprocess.Popen([*command, *where, "serve", "--port", str(port), *options],
                                   stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, env=environment)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            pytest.fail(f"the server did not start: {log.read_text()}")
        yield Server(base, process, port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def running_server(db_url: str, log: Path, *serve_options: str, rules: Path | None = None) -> Iterator[str]:
    """`serve`, yielding only its base URL."""
    with serve(db_url, log, *serve_options, rules=rules) as server:
        yield server.base


PROBLEM = "application/problem+json"


def assert_problem(response, status: int, code: str) -> dict:
    """The problem+json body of `response`, after checking its status, media type and problem type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == f"/problems/{code}" and body["status"] == status and body["detail"]
    return body
