"""`loyalty serve --workers N`: every option from its LOYALTY_* variable, read alike by the command and by the
factory each worker runs; and the single-use, idempotency and hold guarantees across four worker processes on
PostgreSQL, with the requests shown to reach several of them."""
from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner
from uvicorn.config import STARTUP_FAILURE

from api.factory import create_app_from_env
from api.limits import ServeSettings
from cli.main import app
from service.clock import utc_now
from service.errors import SettingError
from tests.api_support import borrower_events, serve
from tests.conftest import cli_json, run_cli

WORKERS = 4
HOLD_SECONDS = 3
NAMES = [f.name for f in fields(ServeSettings)]


def _valid_values() -> dict[str, str]:
    """A value other than the default for every setting, at an edge of its bounds where it has some."""
    values = {}
    for name in NAMES:
        setting, default = ServeSettings.setting(name), getattr(ServeSettings(), name)
        if isinstance(default, bool):
            values[setting.env] = "true"
        elif isinstance(default, int):
            values[setting.env] = str(int(setting.high))
        elif isinstance(default, float):
            values[setting.env] = str(setting.low)
        else:
            values[setting.env] = {"host": "0.0.0.0", "log_level": "debug"}[name]
    return values


def _bad_value(name: str) -> str:
    setting, default = ServeSettings.setting(name), getattr(ServeSettings(), name)
    if isinstance(default, bool):
        return "maybe"
    if isinstance(default, (int, float)):
        return str(int(setting.high) + 1)
    return "loud"  # the log level; any host is a host


def test_every_serve_option_is_read_from_its_variable_by_the_command_and_the_factory_alike(monkeypatch):
    environment = _valid_values()
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    command = typer.main.get_command(app).commands["serve"]
    parsed = command.make_context("serve", [])  # parses options and variables; runs nothing
    from_cli = ServeSettings(**{name: value for name, value in parsed.params.items() if name != "as_json"})
    from_env = ServeSettings.from_env(environment)
    assert from_cli == from_env
    assert all(getattr(from_env, name) != getattr(ServeSettings(), name) for name in NAMES)
    assert ServeSettings.from_env(from_env.to_env()) == from_env  # what `serve` hands its workers reads back whole


@pytest.mark.parametrize("name", [name for name in NAMES if name != "host"])
def test_a_bad_value_names_its_variable_in_the_command_and_the_factory(name):
    variable, value = ServeSettings.setting(name).env, _bad_value(name)
    result = CliRunner().invoke(app, ["serve"], env={variable: value, "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert variable in result.output and "Traceback" not in result.output
    with pytest.raises(SettingError, match=f"^{variable}='{value}' is not valid: "):
        ServeSettings.from_env({variable: value})


@pytest.mark.parametrize("variable, value, reason", [
    ("LOYALTY_WORKERS", "0", "LOYALTY_WORKERS='0' is not valid: "),
    ("LOYALTY_RULES", "/nonexistent/rules", "the rules at /nonexistent/rules do not load: "),
    ("LOYALTY_DATABASE_URL", "mysql://loyalty@db/loyalty", "--db (or LOYALTY_DATABASE_URL) 'mysql://loyalty@db/loyalty' is not a supported database URL"),
])
def test_a_worker_that_cannot_start_says_why_in_one_line_and_exits_as_a_failed_start(variable, value, reason,
                                                                                     monkeypatch, caplog):
    for name in [name for name in os.environ if name.startswith("LOYALTY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    logging.getLogger("loyalty.api").addHandler(caplog.handler)  # whatever another test did to propagation
    try:
        with pytest.raises(SystemExit) as stopped:
            create_app_from_env()
    finally:
        logging.getLogger("loyalty.api").removeHandler(caplog.handler)
    assert stopped.value.code == STARTUP_FAILURE  # uvicorn's supervisor then stops rather than restart it
    [message] = {record.getMessage() for record in caplog.records}  # the same record may come by two handlers
    assert message.startswith(f"this server process cannot start: {reason}") and "\n" not in message
    assert all(record.exc_info is None for record in caplog.records)


# --- four worker processes on PostgreSQL --------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The processes `pid`'s main thread started (uvicorn's supervisor starts its workers from it)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _workers_holding_connections(server_pid: int, port: int) -> set[int]:
    """The server's child processes that hold an established TCP connection on `port` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            columns = line.split()
            if int(columns[1].rsplit(":", 1)[1], 16) == port and columns[3] == "01":  # local port, ESTABLISHED
                inodes.add(columns[9])
    holders = set()
    for child in _children(server_pid):
        for descriptor in Path(f"/proc/{child}/fd").iterdir():
            try:
                target = os.readlink(descriptor)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                holders.add(child)
    return holders


def _wait_for_workers(log: Path, count: int) -> None:
    for _ in range(600):
        if log.read_text().count("Application startup complete") >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"{count} workers did not start: {log.read_text()}")


def _at_once(server, requests: int, send) -> tuple[list[httpx.Response], set[int]]:  # noqa: ANN001
    """`send(client)` run by `requests` threads at once, each client on its own connection; the responses, and the
    worker processes that served them (found while the kept-alive connections are still open)."""
    clients = [httpx.Client(base_url=server.base, timeout=30) for _ in range(requests)]
    try:
        with ThreadPoolExecutor(requests) as pool:
            responses = list(pool.map(send, clients))
        return responses, _workers_holding_connections(server.process.pid, server.port)
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_four_workers_keep_single_use_idempotency_and_holds_across_processes(db_url, tmp_path):
    assert run_cli("init", db_url=db_url).returncode == 0
    key = cli_json("apikey", "create", "--name", "loan-origination", "--scope", "admin", db_url=db_url)["key"]
    auth = {"Authorization": f"Bearer {key}"}
    log = tmp_path / "server.log"
    # Kept-alive connections stay open for the whole test, so each one's worker can be found afterwards.
    with serve(db_url, log, "--workers", str(WORKERS), "--hold-seconds", str(HOLD_SECONDS),
               "--keep-alive", "300") as server:
        _wait_for_workers(log, WORKERS)
        workers = _children(server.process.pid)
        metrics_dirs = {re.search(rb"PROMETHEUS_MULTIPROC_DIR=([^\0]*)", Path(f"/proc/{pid}/environ").read_bytes())
                        .group(1) for pid in workers if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}
        assert len(metrics_dirs) == 1  # every worker writes its metrics to the one private directory
        with httpx.Client(base_url=server.base, headers=auth, timeout=30) as client:
            events = borrower_events("C-1", onboarded=utc_now() - timedelta(days=40))[:2]  # one single-use discount
            events += borrower_events("C-2", onboarded=utc_now() - timedelta(days=40))[:2]
            assert client.post("/v1/events", json=events).json()["applied"] == 4
            quote = client.post("/v1/clients/C-1/quotes", json={"product": "term_loan", "amount": "50000000"}).json()
            assert len(quote["held_entitlement_ids"]) == 1

        # Twenty commits of one quote, over twenty connections spread over the workers: one consumes it.
        commits, serving = _at_once(server, 20, lambda c: c.post(f"/v1/quotes/{quote['quote_id']}/commit", headers=auth))
        assert sorted(r.status_code for r in commits) == [200] + [409] * 19, [r.text for r in commits]
        assert {r.json()["type"] for r in commits if r.status_code == 409} == {"/problems/quote-committed"}
        assert len(serving) >= 2, f"all twenty connections went to one of the workers {workers}"

        # The same Idempotency-Key twenty times at once, to several workers: one quote, nineteen replays.
        body = {"product": "working_capital", "amount": "10000000"}
        keyed = {**auth, "Idempotency-Key": "application-881"}
        quotes, serving = _at_once(server, 20, lambda c: c.post("/v1/clients/C-2/quotes", json=body, headers=keyed))
        assert [q.status_code for q in quotes] == [201] * 20, [q.text for q in quotes]
        assert len({q.json()["quote_id"] for q in quotes}) == 1 and len(serving) >= 2
        assert sum(q.headers.get("Idempotent-Replayed") != "true" for q in quotes) == 1
        held = quotes[0].json()["held_entitlement_ids"]
        with httpx.Client(base_url=server.base, headers=auth, timeout=30) as client:
            assert len(held) == 1 and client.post("/v1/clients/C-2/quotes", json=body).json()["held_entitlement_ids"] == []

            # The hold lapses for every worker alike: its commit is refused everywhere, the discount is free again.
            time.sleep(HOLD_SECONDS + 0.2)
            late, _ = _at_once(server, 8, lambda c: c.post(f"/v1/quotes/{quotes[0].json()['quote_id']}/commit",
                                                           headers=auth))
            assert {(r.status_code, r.json()["type"]) for r in late} == {(409, "/problems/quote-expired")}
            assert client.post("/v1/clients/C-2/quotes", json=body).json()["held_entitlement_ids"] == held
    assert not Path(metrics_dirs.pop().decode()).exists()  # removed when the server stopped
    assert cli_json("ledger", "verify", db_url=db_url)["ok"] is True
