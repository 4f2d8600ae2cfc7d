"""`loyalty rules check` on a generated 1,000-rule file: how long loading and linting take.

    python bench/rule_check.py [--rules 1000] [--event-types 40] [--seed 7] [--repeat 5] [--keep FILE]

Generates a valid programme: the shipped file's header, tiers and policies, plus `--event-types`
activity types (money, integer, enum, boolean and optional text attributes) and `--rules` rules
spread over them, within the matching core's limits (at most 511 distinct equality values per
attribute, at most 64 range tests per event type): conditions on amounts, counts, channels,
regions and the client (tier, segment, tenure), awards of CEL points, rate discounts and benefits
with caps and validity. Then prints the time of each stage in this process (YAML parsing, schema,
checks and compilation, lint) and of the whole command in a subprocess, against the goal of 2 s:
the median and the best of `--repeat` runs (the shared machine's load moves single runs a lot).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.common import verdict  # noqa: E402
from engine import lint  # noqa: E402
from engine.loader import check_source, compile_document  # noqa: E402
from engine.matching import MAX_RANGE_TESTS_PER_EVENT_TYPE  # noqa: E402
from engine.yaml_source import load_yaml  # noqa: E402

GOAL_SECONDS = 2.0
CHANNELS = [f"channel_{i:02d}" for i in range(24)]
REGIONS = [f"region_{i:02d}" for i in range(40)]
PRODUCTS = ["working_capital", "term_loan", "project_finance", "trade_finance"]
TIERS = ["standard", "silver", "gold", "diamond"]
SEGMENTS = ["strategic", "transactional", "partnership", "special_assistance"]
LANES = [("express_24h", 24), ("priority", 120), ("express", 72)]


def event_types(count: int) -> dict:
    """`count` activity types, each with attributes of every kind."""
    return {f"activity.kind_{n:02d}": {
        "description": f"Generated activity {n}.",
        "attributes": {
            "amount": {"type": "money"},
            "units": {"type": "integer", "min": 0, "max": 10_000},
            "channel": {"type": "enum", "values": CHANNELS},
            "region": {"type": "enum", "values": REGIONS},
            "verified": {"type": "boolean"},
            "note": {"type": "string", "required": False},
        }} for n in range(count)}


def conditions(rng: random.Random, ranges_left: int) -> tuple[dict, dict, int]:
    """Where- and client-conditions for one rule, and how many range tests they use."""
    where: dict = {}
    used = 0
    if ranges_left >= 2 and rng.random() < 0.6:
        low = rng.choice([1, 5, 10, 50, 100]) * 1_000_000
        where["amount"] = {"gte": low, "lt": low * rng.choice([2, 5, 10])} if rng.random() < 0.4 else {"gte": low}
        used += len(where["amount"])
    if ranges_left - used >= 1 and rng.random() < 0.3:
        where["units"] = {"gt": rng.randrange(0, 500)}
        used += 1
    if rng.random() < 0.7:
        where["channel"] = {"in": rng.sample(CHANNELS, rng.randint(1, 4))}
    if rng.random() < 0.4:
        where["region"] = {"eq": rng.choice(REGIONS)} if rng.random() < 0.5 else {"not_in": rng.sample(REGIONS, 3)}
    if rng.random() < 0.3:
        where["verified"] = {"eq": True}
    if rng.random() < 0.1:
        where["note"] = {"exists": True}
    client: dict = {}
    roll = rng.random()
    if roll < 0.3:
        client["min_tier"] = rng.choice(TIERS[1:])
    elif roll < 0.45:
        client["tier"] = {"in": rng.sample(TIERS, 2)}
    if rng.random() < 0.2:
        client["segment"] = {"eq": rng.choice(SEGMENTS)}
    if rng.random() < 0.15:
        client["tenure_months"] = {"gte": rng.choice([6, 12, 24])}
    return where, client, used


def award(rng: random.Random) -> tuple[dict, dict | None]:
    """An award and its cap: mostly points, some discounts and benefits, each bounded in time or count."""
    roll = rng.random()
    given: dict = {"points": rng.choice(["event.amount / 10000", "event.units * 10", "500",
                                         "event.verified ? 800 : 200", "has(event.note) ? 300 : 100"])}
    cap = {"per": rng.choice(["month", "quarter", "year"]), "points": rng.choice([2000, 5000, 20000])}
    if roll < 0.15:
        given["rate_discount"] = {"bps": rng.choice([5, 10, 15]), "products": rng.sample(PRODUCTS, rng.randint(1, 2)),
                                  "use": "single", "valid_for_days": rng.choice([90, 180, 365])}
        cap = {"per": "year", "times": rng.randint(1, 3)}
    elif roll < 0.25:
        lane, sla = rng.choice(LANES)
        given["benefit"] = rng.choice([
            {"kind": "fast_track", "lane": lane, "sla_hours": sla, "use": "single", "valid_for_days": 90},
            {"kind": "fee_waiver", "fee_waiver_pct": rng.choice([25, 50, 100]), "use": "single", "valid_for_days": 180}])
        cap = {"per": "year", "times": 1}
    return given, (cap if rng.random() < 0.8 else None)


def programme(rules: int, types: int, seed: int) -> dict:
    """The shipped programme with generated event types and `rules` rules spread evenly over them."""
    rng = random.Random(seed)
    data = yaml.safe_load((ROOT / "rules" / "corporate_lending.yaml").read_text())
    data["programme"]["effective_from"] = "2025-01-01T00:00:00Z"  # a string, as a YAML file would hold it
    generated = event_types(types)
    data["event_types"].update(generated)
    ranges_left = dict.fromkeys(generated, MAX_RANGE_TESTS_PER_EVENT_TYPE)
    names = sorted(generated)
    for number in range(rules):
        event = names[number % len(names)]
        where, client, used = conditions(rng, ranges_left[event])
        ranges_left[event] -= used
        given, cap = award(rng)
        rule = {"id": f"gen-{number:04d}", "description": f"Generated rule {number}.",
                "priority": rng.randrange(10, 200), "when": {"event": event, "where": where, "client": client},
                "award": given}
        if cap is not None and (cap.get("times") or "points" in given):
            rule["cap"] = cap
        data["rules"].append(rule)
    return data


def timed(action, repeat: int):
    """(result of the last call, median seconds, best seconds) over `repeat` calls."""
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        result = action()
        seconds.append(time.perf_counter() - began)
    return result, statistics.median(seconds), min(seconds)


def main() -> None:
    """Generate the file, time each stage and the command, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--event-types", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement")
    parser.add_argument("--keep", type=Path, help="also write the generated file here")
    args = parser.parse_args()

    text = yaml.safe_dump(programme(args.rules, args.event_types, args.seed), sort_keys=False, width=120)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "generated.yaml"
        path.write_text(text)
        if args.keep:
            args.keep.write_text(text)
        doc, *parse = timed(lambda: load_yaml(str(path), text), args.repeat)
        compiled, *compile_ = timed(lambda: compile_document(doc), args.repeat)
        found, *linting = timed(lambda: lint.warnings(doc, compiled.model), args.repeat)
        check, *checking = timed(lambda: check_source(str(path), path.read_bytes()), args.repeat)
        command = [sys.executable, "-m", "cli", "rules", "check", str(path), "--json"]
        result, *whole = timed(lambda: subprocess.run(command, capture_output=True, text=True, cwd=ROOT), args.repeat)
        _, *start_up = timed(lambda: subprocess.run([sys.executable, "-c", "import cli.main"], cwd=ROOT), args.repeat)
    report = json.loads(result.stdout)
    assert not check.errors and report["errors"] == 0, report["results"][0]["problems"][:5]
    print(f"{len(compiled.rules)} rules ({args.rules} generated over {args.event_types} event types, plus the shipped "
          f"ones), {len(text.splitlines()):,} lines of YAML; {len(found)} warnings. Median and best of {args.repeat} runs:")
    for label, (median, best) in [("parse YAML (with positions)", parse), ("schema, checks, CEL, matcher", compile_),
                                  ("lint (warnings)", linting), ("check_source (all of the above)", checking),
                                  ("`loyalty rules check` in a subprocess", whole),
                                  ("of which: start-up (import cli.main)", start_up)]:
        print(f"  {label:<40} {median * 1000:7.0f} ms {best * 1000:7.0f} ms")
    print(f"goal: the command under {GOAL_SECONDS:.0f} s (median): {verdict(whole[0] < GOAL_SECONDS)}")


if __name__ == "__main__":
    main()
