"""Ingest throughput: end to end (the CLI's path) on SQLite and PostgreSQL, against the raw matching ceiling.

    python bench/ingest.py [--events 50000] [--clients 1000] [--seed 7]

Prints events per second for: the durable-rules matcher alone (assert + retract, no storage), the
pure evaluator (matching + CEL + awards), and full ingest into each database; and the ratio of
full ingest to the raw ceiling. PostgreSQL is skipped when it does not answer.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from engine.context import ClientContext  # noqa: E402
from engine.evaluator import evaluate  # noqa: E402
from engine.events import matching_value, parse_json_line, validate_event  # noqa: E402
from engine.loader import load_programmes  # noqa: E402
from service.ingest import Ingestor  # noqa: E402
from storage.db import init_schema, make_engine  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PRODUCTS = ["working_capital", "term_loan", "project_finance", "trade_finance"]


def synthetic_events(count: int, clients: int, seed: int) -> list[str]:
    """A deterministic mix of the programme's event types over `clients` clients."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    lines = []
    for i in range(count):
        client = f"C-{rng.randrange(clients):05d}"
        at = (start + timedelta(minutes=rng.randrange(60 * 24 * 540))).strftime("%Y-%m-%dT%H:%M:%SZ")
        kind = rng.choices(["loan.drawn", "repayment.made", "deposit.reported", "product.purchased",
                            "survey.answered", "event.attended", "referral.converted"],
                           weights=[20, 45, 15, 5, 5, 8, 2])[0]
        data = {
            "loan.drawn": lambda: {"loan_id": f"L{i}", "product": rng.choice(PRODUCTS),
                                   "amount": f"{rng.randrange(10**5, 2 * 10**8)}.{rng.randrange(100):02d}",
                                   "currency": "CNY", "term_months": rng.randrange(1, 120)},
            "repayment.made": lambda: {"loan_id": f"L{i}", "amount": str(rng.randrange(10**4, 10**7)),
                                       "due_date": at[:10], "days_late": rng.choice([0] * 9 + [rng.randrange(1, 60)])},
            "deposit.reported": lambda: {"month": at[:7], "average_balance": str(rng.randrange(10**5, 10**9))},
            "product.purchased": lambda: {"product": rng.choice(["cash_management", "fx_hedging", "payroll"])},
            "survey.answered": lambda: {"nps": rng.randrange(11)},
            "event.attended": lambda: {"kind": rng.choice(["client_day", "forum", "salon", "training"])},
            "referral.converted": lambda: {"referred_client_id": f"R{i}"},
        }[kind]()
        lines.append(json.dumps({"id": f"b{seed}-{i}", "client_id": client, "type": kind, "occurred_at": at,
                                 "data": data}))
    return lines


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def bench_matcher(programmes, lines: list[str]) -> tuple[float, float]:
    programme = programmes.current
    events = [validate_event(parse_json_line(line), programme.model.event_types, programme.currency) for line in lines]
    facts = []
    for event in events:
        types = programme.attribute_types(event.type)
        facts.append((event.type, {k: matching_value(types[k], v, programme.currency) for k, v in event.data.items()}))
    client = ClientContext("C", "gold", "strategic", 24)
    view = client.matching_view()
    began = time.perf_counter()
    for type_, data in facts:
        programme.matcher.match(type_, data, view)
    raw = rate(len(facts), time.perf_counter() - began)
    began = time.perf_counter()
    for event in events:
        evaluate(programme, event, client)
    return raw, rate(len(events), time.perf_counter() - began)


def bench_ingest(url: str, programmes, lines: list[str], batch: int) -> float:
    engine = make_engine(url)
    init_schema(engine)
    ingestor = Ingestor(engine, programmes, batch_size=batch)
    began = time.perf_counter()
    report = ingestor.ingest_lines(lines)
    seconds = time.perf_counter() - began
    assert report.rejected == 0, report.errors[:3]
    engine.dispose()
    return rate(report.applied, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    programmes = load_programmes(ROOT / "rules")
    lines = synthetic_events(args.events, args.clients, args.seed)
    print(f"{args.events:,} events over {args.clients:,} clients, {len(programmes.current.rules)} rules, "
          f"batch {args.batch}")
    raw, evaluator = bench_matcher(programmes, lines)
    rows = [("durable-rules matcher alone (ceiling)", raw), ("pure evaluator (match + CEL + awards)", evaluator)]
    with tempfile.TemporaryDirectory() as folder:
        rows.append(("ingest end to end, SQLite", bench_ingest(f"sqlite:///{folder}/bench.db", programmes, lines,
                                                               args.batch)))
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # no PostgreSQL here: report and go on
        print(f"PostgreSQL skipped: {str(exc).splitlines()[0]}")
    else:
        try:
            rows.append(("ingest end to end, PostgreSQL",
                         bench_ingest(f"{PG_URL}?options=-csearch_path%3D{schema}", programmes, lines, args.batch)))
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    print(f"{'path':<42}{'events/s':>12}{'ratio to ceiling':>18}")
    for name, value in rows:
        print(f"{name:<42}{value:>12,.0f}{value / raw:>18.2f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
