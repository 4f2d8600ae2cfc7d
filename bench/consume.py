"""Consume throughput from RabbitMQ beside `loyalty ingest` of the same events, in one run.

    python bench/consume.py [--events 100000] [--batch 1000] [--prefetch 2000] [--consumers 1,2]
                            [--amqp URL] [--postgres URL | --sqlite]

The events are the demo generator's portfolio, oldest first (the first --events of it). Printed:

- publishing them to a fresh durable queue (persistent messages, AMQP transactions of 5,000);
- `loyalty ingest FILE --json --batch-size B` of the same events, a real process on a new database;
- `loyalty consume --until-idle 1 --json --batch B`, real processes on another new database, for each
  number of consumers in --consumers (the queue filled again each time): messages a second from the
  first batch received to the last acknowledged (the consumers' own figure, summed), and wall time.

PostgreSQL (default: the machine's local server) runs in a schema of its own, dropped afterwards;
`--sqlite` uses files in a temporary folder instead. The queues are deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from brokers.rabbitmq import dead_letter_exchange, dead_letter_queue, publish  # noqa: E402
from demo.generator import generate  # noqa: E402
from storage.db import init_schema, make_engine  # noqa: E402

PG_URL = os.environ.get("LOYALTY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("LOYALTY_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
LOYALTY = [sys.executable, "-m", "cli"]


def fresh_database(args, folder: Path, name: str) -> tuple[str, callable]:
    """A new database with its schema, and how to drop it."""
    if args.sqlite:
        url = f"sqlite:///{folder / (name + '.db')}"
        drop = lambda: None  # noqa: E731 - the folder goes
    else:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(args.postgres)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{args.postgres}?options=-csearch_path%3D{schema}"

        def drop() -> None:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    engine = make_engine(url)
    init_schema(engine)
    engine.dispose()
    return url, drop


def env_for(url: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}, "LOYALTY_DATABASE_URL": url,
            "LOYALTY_CONSUME_URL": args.amqp}


def run_ingest(url: str, path: Path, batch: int) -> tuple[float, dict]:
    began = time.perf_counter()
    done = subprocess.run([*LOYALTY, "ingest", str(path), "--json", "--batch-size", str(batch)], env=env_for(url),
                          capture_output=True, text=True, check=False, cwd=ROOT)
    return time.perf_counter() - began, json.loads(done.stdout)


def run_consumers(url: str, queue: str, consumers: int) -> tuple[float, list[dict]]:
    began = time.perf_counter()
    processes = [subprocess.Popen([*LOYALTY, "consume", "--queue", queue, "--json", "--until-idle", "1",
                                   "--batch", str(args.batch), "--prefetch", str(args.prefetch)],
                                  env=env_for(url), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  cwd=ROOT) for _ in range(consumers)]
    summaries = [json.loads(process.communicate(timeout=3600)[0]) for process in processes]
    return time.perf_counter() - began - 1.0, summaries  # less the second of idleness that ends each run


def delete_queue(queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(args.amqp))
    channel = connection.channel()
    channel.queue_delete(queue)
    channel.queue_delete(dead_letter_queue(queue))
    channel.exchange_delete(dead_letter_exchange(queue, None))
    connection.close()


def main() -> None:
    events = generate(args.events // 80 + 2, 18)[:args.events]
    bodies = [json.dumps(e).encode() for e in events]
    database = "SQLite" if args.sqlite else "PostgreSQL"
    print(f"{len(bodies):,} demo events, batches of {args.batch}, {database}, RabbitMQ {args.amqp.split('@')[-1]}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        path.write_bytes(b"\n".join(bodies) + b"\n")
        url, drop = fresh_database(args, Path(folder), "ingest")
        try:
            seconds, report = run_ingest(url, path, args.batch)
        finally:
            drop()
        print(f"  loyalty ingest:              {report['applied'] / seconds:8,.0f} events/s "
              f"({report['applied']:,} applied in {seconds:.1f} s, process start included)")
        for consumers in args.consumers:
            queue = f"bench.consume.{uuid.uuid4().hex[:8]}"
            url, drop = fresh_database(args, Path(folder), f"consume{consumers}")
            try:
                began = time.perf_counter()
                publish(args.amqp, queue, bodies)
                published = time.perf_counter() - began
                seconds, summaries = run_consumers(url, queue, consumers)
            finally:
                drop()
                delete_queue(queue)
            applied = sum(s["applied"] for s in summaries)
            own = sum(s["events_per_second"] for s in summaries)
            print(f"  publish to RabbitMQ:         {len(bodies) / published:8,.0f} messages/s")
            print(f"  loyalty consume x{consumers}:          {applied / seconds:8,.0f} events/s wall "
                  f"({applied:,} applied in {seconds:.1f} s, process start included; the consumers' own figure "
                  f"{own:,.0f}/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--prefetch", type=int, default=2000)
    parser.add_argument("--consumers", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2])
    parser.add_argument("--amqp", default=AMQP_URL)
    parser.add_argument("--postgres", default=PG_URL)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    main()
