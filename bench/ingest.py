"""Ingest and review throughput on a fixed synthetic portfolio, on SQLite and PostgreSQL.

    python bench/ingest.py [--clients 2000] [--months 18] [--seed 7] [--batch 2000]

Prints, in one run: the raw durable-rules ceiling (the compiled rules alone, asserting and retracting
the same events, no storage), the pure evaluator, end-to-end ingest through the CLI's path on each
database, the ratio of each to the ceiling, the review time for the whole portfolio, and peak
memory. PostgreSQL is skipped (with the reason) when it does not answer.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from demo.generator import DEFAULT_END, generate  # noqa: E402
from engine.context import ClientContext  # noqa: E402
from engine.evaluator import evaluate  # noqa: E402
from engine.events import matching_value, validate_event  # noqa: E402
from engine.json_input import parse_json_line  # noqa: E402
from engine.loader import load_programmes  # noqa: E402
from service.ingest import Ingestor  # noqa: E402
from service.review import run_review  # noqa: E402
from storage.db import init_schema, make_engine  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def bench_core(programmes, lines: list[str]) -> tuple[float, float]:
    """Events per second through the matcher alone, and through the pure evaluator."""
    events = []
    for line in lines:
        raw = parse_json_line(line)
        programme = programmes.for_moment(datetime_of(raw))
        events.append((programme, validate_event(raw, programme.model.event_types, programme.currency)))
    facts = []
    for programme, event in events:
        types = programme.attribute_types(event.type)
        facts.append((programme.matcher, event.type,
                      {k: matching_value(types[k], v, programme.currency) for k, v in event.data.items()}))
    client = ClientContext("C", "gold", "strategic", 24)
    view = client.matching_view()
    began = time.perf_counter()
    for matcher, type_, data in facts:
        matcher.match(type_, data, view)
    raw_rate = per_second(len(facts), time.perf_counter() - began)
    began = time.perf_counter()
    for programme, event in events:
        evaluate(programme, event, client)
    return raw_rate, per_second(len(events), time.perf_counter() - began)


def datetime_of(raw: dict) -> datetime:
    return datetime.fromisoformat(raw["occurred_at"].replace("Z", "+00:00"))


def bench_database(url: str, programmes, lines: list[str], batch: int) -> tuple[float, float, int]:
    """(ingest events/s, review seconds, clients reviewed) on a fresh database."""
    engine = make_engine(url)
    init_schema(engine)
    began = time.perf_counter()
    report = Ingestor(engine, programmes, batch_size=batch).ingest_lines(lines)
    ingest_rate = per_second(report.applied, time.perf_counter() - began)
    assert report.rejected == 0, report.errors[:3]
    began = time.perf_counter()
    review = run_review(engine, programmes, DEFAULT_END)
    review_seconds = time.perf_counter() - began
    engine.dispose()
    return ingest_rate, review_seconds, review.clients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--months", type=int, default=18)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()

    programmes = load_programmes(ROOT / "rules")
    lines = [json.dumps(e) for e in generate(args.clients, args.months, args.seed)]
    print(f"{len(lines):,} events, {args.clients:,} clients, {args.months} months, "
          f"{len(programmes.current.rules)} rules, batch {args.batch}")
    raw, evaluator = bench_core(programmes, lines)
    rows = [("durable-rules matcher alone (ceiling)", raw, None), ("pure evaluator (match + CEL + awards)", evaluator, None)]
    with tempfile.TemporaryDirectory() as folder:
        rate, review_s, clients = bench_database(f"sqlite:///{folder}/bench.db", programmes, lines, args.batch)
        rows.append(("ingest end to end, SQLite", rate, (review_s, clients)))
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # no PostgreSQL here: say so and go on
        print(f"PostgreSQL skipped: {str(exc).splitlines()[0]}")
    else:
        try:
            rate, review_s, clients = bench_database(f"{PG_URL}?options=-csearch_path%3D{schema}", programmes, lines,
                                                     args.batch)
            rows.append(("ingest end to end, PostgreSQL", rate, (review_s, clients)))
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    print(f"{'path':<42}{'events/s':>10}{'ratio':>8}   review of the whole portfolio")
    for name, value, review in rows:
        review_text = f"{review[0]:.2f} s for {review[1]:,} clients" if review else ""
        print(f"{name:<42}{value:>10,.0f}{value / raw:>8.2f}   {review_text}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
