"""`loyalty ingest --workers 2` on PostgreSQL: the file shared out by client among two processes writes the
same ledger, tiers, balances and monthly totals as one process, and says what it refuses."""
from __future__ import annotations

import json

from sqlalchemy import text

from demo.generator import generate
from storage.db import make_engine
from tests.conftest import cli_json, pg_database, run_cli

# What one ingest writes, without the ids and clock times that differ between any two runs.
WRITTEN = {
    "tier_assignment": "client_id, tier, previous_tier, valid_from, reason, details",
    "client": "client_id, name, segment, onboarded_at, first_seen_at, points_balance",
    "ledger_entry": "client_id, kind, reason, points, bps, products, detail, use, rule_id, event_id, valid_from, "
                    "valid_to",
    "entitlement": "client_id, kind, use, bps, status, rule_id, event_id, valid_from, valid_to",
    "points_lot": "client_id, event_id, rule_id, earned_at, points, remaining",
    "client_month": "*",
}


def written(url: str) -> dict[str, list]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = {table: sorted(map(repr, conn.execute(text(f"SELECT {columns} FROM {table}"))))
                for table, columns in WRITTEN.items()}
    engine.dispose()
    return rows


def test_two_processes_write_what_one_writes(tmp_path):
    events = tmp_path / "events.jsonl"
    # Instant upgrades happen in this portfolio, and a bad line is rejected wherever it lands.
    lines = [json.dumps(e) for e in generate(clients=60, months=8, seed=5)]
    lines.insert(700, '{"id": "bad", "client_id": "C-00001", "type": "loan.drawn"}')
    events.write_text("\n".join(lines) + "\n")
    with pg_database() as one, pg_database() as two:
        reports = []
        for url, workers in ((one, "1"), (two, "2")):
            cli_json("init", db_url=url)
            reports.append(cli_json("ingest", str(events), "--batch-size", "500", "--workers", workers,
                                    db_url=url, expect_code=1))
        assert reports[0] == reports[1]
        assert reports[0]["rejected"] == 1 and reports[0]["errors"][0]["line"] == 701
        first, second = written(one), written(two)
        assert any("instant upgrade" in row for row in first["tier_assignment"])
        assert first == second
        assert cli_json("ledger", "verify", db_url=two) == {"ok": True, "problems": []}


def test_workers_need_postgresql(tmp_path):
    url = f"sqlite:///{tmp_path / 'loyalty.db'}"
    cli_json("init", db_url=url)
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(generate(clients=1, months=1)[0]) + "\n")
    result = run_cli("ingest", str(events), "--workers", "2", db_url=url)
    assert result.returncode == 2
    assert "--workers needs PostgreSQL" in result.stderr
