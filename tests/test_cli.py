"""End to end through the `loyalty` command, as an operator would use it, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from storage.db import make_engine
from tests.conftest import RULES, SAMPLE, cli_json, event, ndjson, run_cli

AT = "2026-05-21T00:00:00Z"


def ready(db_url: str) -> None:
    cli_json("init", db_url=db_url)


def test_operator_session(db_url):
    ready(db_url)
    report = cli_json("ingest", str(SAMPLE), db_url=db_url)
    assert report == {"applied": 18, "duplicates": 0, "rejected": 0, "errors": []}

    answer = cli_json("benefits", "C-1001", "--product", "working_capital", "--at", AT, db_url=db_url)
    for field in ("client_id", "tier", "points_balance", "rate_discount_bps", "fast_track_sla_hours", "entitlements"):
        assert field in answer
    # Its drawdowns qualify it for diamond, an instant-upgrade tier: it moved at the end of the file's batch.
    assert (answer["tier"], answer["points_balance"]) == ("diamond", 20457)
    # Diamond's standing 20 bps, plus 10 bps (large drawdown, single use), which beats the referral's 5 bps:
    # one single-use discount applies.
    assert answer["rate_discount_bps"] == 30
    for entitlement in answer["entitlements"]:
        assert {"kind", "rule_id", "programme_version", "valid_from", "valid_to"} <= entitlement.keys()

    entries = cli_json("ledger", "C-1001", db_url=db_url)
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)  # newest first
    assert sum(e["points"] for e in entries) == 20457
    for entry in entries:  # events earn; tier moves (here the instant upgrade) grant and revoke standing benefits
        assert entry["rule_id"] and entry["programme_version"] == "2026.1"
        assert entry["event_id"].startswith("evt-") if entry["event_id"] else entry["rule_id"].startswith("tier:")

    assert cli_json("ledger", "verify", db_url=db_url) == {"ok": True, "problems": []}

    reversed_ = cli_json("reverse", "evt-0009", db_url=db_url)
    assert reversed_["status"] == "reversed" and len(reversed_["entries"]) == 2
    assert cli_json("reverse", "evt-0009", db_url=db_url)["status"] == "already_reversed"
    after = cli_json("benefits", "C-1001", "--product", "working_capital", "--at", AT, db_url=db_url)
    assert after["points_balance"] == 20457 - 5000
    assert cli_json("ledger", "verify", db_url=db_url)["ok"] is True

    human = run_cli("benefits", "C-1001", "--product", "working_capital", "--at", AT, db_url=db_url)
    assert human.returncode == 0 and "15,457" in human.stdout and "10 bps" in human.stdout


def test_rejected_lines_exit_1_and_are_listed(db_url):
    ready(db_url)
    good = event("g1", "C-1", "product.purchased", "2026-03-01T00:00:00Z", product="payroll")
    text = ndjson(good) + "not json\n" + ndjson(event("b1", "C-1", "loan.drawn", "2026-03-01T00:00:00Z"))
    result = run_cli("ingest", "-", "--json", db_url=db_url, stdin=text)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["applied"], report["rejected"]) == (1, 2)
    assert [(e["line"], e["id"]) for e in report["errors"]] == [(2, None), (3, "b1")]
    assert "data.loan_id: missing" in report["errors"][1]["error"]
    human = run_cli("ingest", "-", db_url=db_url, stdin=text)
    assert human.returncode == 1 and "line 2" in human.stdout and "duplicates 1" in human.stdout


def test_commands_explain_what_is_missing(db_url, tmp_path):
    result = run_cli("ledger", "verify", db_url=db_url)
    assert result.returncode == 2 and "run `loyalty init` first" in result.stderr
    ready(db_url)
    unknown = run_cli("benefits", "C-404", "--json", db_url=db_url)
    assert unknown.returncode == 2 and "no client 'C-404'" in json.loads(unknown.stdout)["error"]
    cli_json("ingest", str(SAMPLE), db_url=db_url)
    bad_product = run_cli("benefits", "C-1001", "--product", "working_capitl", db_url=db_url)
    assert bad_product.returncode == 2 and "did you mean 'working_capital'" in bad_product.stderr
    naive = run_cli("benefits", "C-1001", "--at", "2026-05-01T00:00:00", db_url=db_url)
    assert naive.returncode == 2 and "no time zone" in naive.stderr
    missing = run_cli("ingest", str(tmp_path / "nope.jsonl"), db_url=db_url)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert run_cli("reverse", "nope", db_url=db_url).returncode == 2
    old = tmp_path / "old.db"
    sqlite3.connect(old).executescript("CREATE TABLE ledger_entry (id INTEGER PRIMARY KEY);")
    for command in (["init"], ["ledger", "verify"]):
        stale = run_cli(*command, db_url=f"sqlite:///{old}")
        assert stale.returncode == 2 and "from before versioning" in stale.stderr and "use a new database" in stale.stderr
    bad_url = run_cli("init", db_url="notaurl")
    assert bad_url.returncode == 2 and "is not a database URL" in bad_url.stderr


def test_rules_check(tmp_path):
    ok = cli_json("rules", "check")
    assert ok["valid"] is True and ok["results"][0]["versions"][0]["rules"] > 0
    broken = tmp_path / "broken.yaml"
    broken.write_text((RULES / "corporate_lending.yaml").read_text().replace("kind: {eq: client_day}\n    award:\n      points: 500",
                                                                              "kind: {eq: clientday}\n    award:\n      points: 500"))
    result = cli_json("rules", "check", str(broken), expect_code=1)
    [problem] = result["results"][0]["problems"]
    assert problem["file"] == str(broken) and problem["line"] > 0
    assert problem["path"].endswith("when.where.kind.eq") and "clientday" in problem["message"]
    human = run_cli("rules", "check", str(broken))
    assert human.returncode == 1 and f"{broken}:{problem['line']}" in human.stdout


def test_broken_active_rules_stop_ingest_before_anything_is_written(db_url, tmp_path):
    ready(db_url)
    broken = tmp_path / "rules.yaml"
    broken.write_text("format: 1\n")
    result = run_cli("ingest", str(SAMPLE), db_url=db_url, rules=broken)
    assert result.returncode == 2 and "do not load" in result.stderr and "rules.yaml:1" in result.stderr
    assert cli_json("benefits", "C-1001", db_url=db_url, expect_code=2)["error"].startswith("no client")


def test_two_processes_ingesting_the_same_file_apply_each_event_once(db_url, tmp_path):
    ready(db_url)
    events = []
    for i in range(600):
        client = f"C-{i % 40}"
        events.append(event(f"e{i}", client, "loan.drawn", f"2026-03-{1 + i % 28:02d}T10:00:00Z", loan_id=f"L{i}",
                            product="working_capital", amount=str(1_000_000 + i * 10_000), currency="CNY",
                            term_months=12))
        events.append(event(f"d{i}", client, "deposit.reported", "2026-03-31T00:00:00Z", month="2026-03",
                            average_balance="50000000"))
    path = tmp_path / "events.jsonl"
    path.write_text(ndjson(*events))
    env_cmd = [str(Path(sys.executable).parent / "loyalty"), "ingest", str(path), "--json", "--batch-size", "50"]
    env = {**os.environ, "LOYALTY_DATABASE_URL": db_url}
    procs = [subprocess.Popen(env_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    assert sum(r["applied"] for r in reports) == 1200
    assert sum(r["duplicates"] for r in reports) == 1200
    assert cli_json("ledger", "verify", db_url=db_url)["ok"] is True
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT client_id, event_id, rule_id, points FROM ledger_entry")).all()
    engine.dispose()
    assert len({row.event_id for row in rows}) == len(rows)  # never two entries for one event
    assert len([row for row in rows if row.rule_id == "drawdown-points"]) == 600
    # Deposit cap: 500 points each, 2,000 a month: every client, with 15 deposits, gets exactly 2,000.
    deposit_points = {f"C-{i}": 0 for i in range(40)}
    for row in rows:
        if row.rule_id == "deposit-balance":
            deposit_points[row.client_id] += row.points
    assert set(deposit_points.values()) == {2000}
    expected_drawdown = sum((1_000_000 + i * 10_000) // 10_000 for i in range(600))
    assert sum(row.points for row in rows) == expected_drawdown + 40 * 2000


def test_api_keys_are_shown_once_listed_without_secrets_and_revoked(db_url):
    assert run_cli("init", db_url=db_url).returncode == 0
    created = run_cli("apikey", "create", "--name", "pricing", "--scope", "benefits:read", "--scope", "quotes:write",
                      db_url=db_url)
    assert created.returncode == 0 and "cannot be shown again" in created.stdout
    key = next(word for word in created.stdout.split() if word.startswith("lk_"))
    key_id = key.split("_")[1]
    listed = run_cli("apikey", "list", db_url=db_url)
    assert key_id in listed.stdout and "benefits:read quotes:write" in listed.stdout
    as_json = cli_json("apikey", "list", db_url=db_url)
    assert as_json[0]["id"] == key_id and key.split("_", 2)[2] not in json.dumps(as_json)
    assert cli_json("apikey", "revoke", key_id, db_url=db_url)["revoked_at"]
    assert cli_json("apikey", "list", db_url=db_url)[0]["revoked_at"]
    bad = run_cli("apikey", "create", "--name", "x", "--scope", "benefit:read", db_url=db_url)
    assert bad.returncode == 2 and "did you mean 'benefits:read'" in bad.stderr
    missing = run_cli("apikey", "revoke", "nope", db_url=db_url)
    assert missing.returncode == 2 and "apikey list" in missing.stderr
