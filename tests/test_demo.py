"""The synthetic portfolio and the demo, end to end through the CLI (both databases)."""
from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

from demo.generator import generate
from tests.conftest import cli_json, run_cli


def test_the_generator_is_deterministic_for_a_seed():
    first, again, other = generate(40, 6, seed=3), generate(40, 6, seed=3), generate(40, 6, seed=4)
    assert first == again
    assert first != other
    assert [e["occurred_at"] for e in first] == sorted(e["occurred_at"] for e in first)
    assert len({e["id"] for e in first}) == len(first)


def test_the_generator_is_realistic():
    events = generate(400, 12, seed=11)
    kinds = Counter(e["type"] for e in events)
    assert set(kinds) == {"client.onboarded", "loan.drawn", "repayment.made", "deposit.reported",
                          "product.purchased", "survey.answered", "event.attended", "referral.converted"}
    volume: Counter = Counter()
    for e in events:
        if e["type"] == "loan.drawn":
            volume[e["client_id"]] += float(e["data"]["amount"])
    ranked = sorted(volume.values(), reverse=True)
    assert sum(ranked[: len(ranked) // 10]) > 0.4 * sum(ranked)  # the top tenth draws a large share
    late = [e for e in events if e["type"] == "repayment.made" and e["data"]["days_late"] > 0]
    assert 0.01 < len(late) / kinds["repayment.made"] < 0.2
    nps = Counter(e["data"]["nps"] >= 9 for e in events if e["type"] == "survey.answered")
    assert nps[True] and nps[False]
    by_month = Counter(e["occurred_at"][5:7] for e in events if e["type"] == "loan.drawn")
    assert by_month["02"] < by_month["03"]  # the Spring Festival dip
    assert kinds["client.onboarded"] == 400
    last_seen: dict = {}
    for e in events:
        last_seen[e["client_id"]] = e["occurred_at"]
    dormant = [c for c, seen in last_seen.items() if seen < "2026-07-01"]
    assert 0 < len(dormant) < 80  # a minority has gone quiet months before the end


def test_generate_command_writes_the_same_ndjson(tmp_path):
    result = run_cli("generate", "--clients", "15", "--months", "4", "--seed", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line) for line in lines] == generate(15, 4, seed=5)


def test_demo_end_to_end(db_url):
    output = cli_json("demo", "--clients", "60", "--months", "12", "--seed", "2", db_url=db_url)
    ingest, reviews, summary = output["ingest"], output["reviews"], output["summary"]
    assert ingest["rejected"] == 0 and ingest["applied"] > 1000
    assert [r["as_of"][:10] for r in reviews] == ["2026-01-01", "2026-04-01", "2026-07-01", "2026-10-01", "2026-10-31"]
    assert summary["clients"] == 60 == sum(summary["clients_per_tier"].values())
    assert list(summary["clients_per_tier"]) == ["standard", "silver", "gold", "diamond"]
    assert summary["clients_per_tier"]["silver"] > 0 and summary["clients_per_tier"]["gold"] > 0
    assert summary["clients_per_tier"] == reviews[-1]["tiers_after"]
    assert Decimal(summary["standing_discounts"]["discounted_drawdowns"]) > 0
    assert summary["points"]["earned"] > 0 and summary["top_clients"][0]["loan_volume"]
    assert len(summary["featured_benefits"]) == 3
    again = cli_json("demo", "--clients", "60", "--months", "12", "--seed", "2", db_url=db_url)
    assert again["ingest"]["duplicates"] == ingest["applied"]
    assert all(r["upgrades"] == r["downgrades"] == 0 for r in again["reviews"])
    assert cli_json("ledger", "verify", db_url=db_url)["ok"] is True
    top = summary["top_clients"][0]["client_id"]
    profile = cli_json("client", top, "--at", "2026-10-31T18:00:00Z", db_url=db_url)
    assert profile["tier"] == summary["top_clients"][0]["tier"] and len(profile["tier_history"]) == 2
    human = run_cli("review", "--as-of", "2026-11-01T00:00:00Z", "--dry-run", db_url=db_url)
    assert human.returncode == 0 and "Tier migration" in human.stdout and "dry run" in human.stdout
