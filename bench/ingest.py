"""Ingest throughput beside its floors, on SQLite and PostgreSQL, and whether it stays flat as history grows.

    python bench/ingest.py [--clients 2000] [--months 18] [--seed 7] [--batch 2000] [--slice 20000]
                           [--postgres URL | --no-postgres] [--workers 2,4]

The bench file is the demo generator's portfolio (224,660 events with the defaults) in `occurred_at`
order, written once to /tmp/loyalty-bench-ingest-<clients>-<months>-<seed>.jsonl. Printed, in one run:

- the ceiling: the durable-rules matcher alone (the compiled rules asserting and retracting the
  events, no storage), and the pure evaluator (match + CEL + awards);
- `loyalty ingest FILE --json` end to end, a real process on a new database (`loyalty init` first, not
  timed), with its peak RSS: the figure the goals are about;
- the storage floor: every row that ingest wrote (processed events, ledger entries, entitlements,
  points lots, clients, tier rows, monthly totals) written again into a new database of the same
  schema with executemany, a transaction per 2,000 rows of a table: what storing the result costs
  with nothing decided;
- flatness: the same ingest in this process, timed per slice of --slice events in `occurred_at` order,
  first and last slice (and this process's RSS after each), so a cost growing with history shows;
- on PostgreSQL, `loyalty ingest --workers N` for each N of --workers (default 2), against one process.

PostgreSQL runs in a schema of its own, dropped afterwards, on --postgres (default: the machine's
local server); it is skipped, with the reason, when it does not answer. Timings are printed with the
goals of the issue marked met or NOT met; never asserted.
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
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, select, text  # noqa: E402

from bench.common import verdict  # noqa: E402
from demo.generator import generate  # noqa: E402
from engine.context import ClientContext  # noqa: E402
from engine.evaluator import evaluate  # noqa: E402
from engine.events import matching_value, validate_event  # noqa: E402
from engine.json_input import parse_json_line  # noqa: E402
from engine.loader import load_programmes  # noqa: E402
from service.ingest import Ingestor  # noqa: E402
from storage.db import init_schema, make_engine  # noqa: E402
from storage.models import (Client, ClientMonth, ClientProduct, Entitlement, LedgerEntry, PointsLot,  # noqa: E402
                            ProcessedEvent, TierAssignment)

PG_URL = os.environ.get("LOYALTY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
LOYALTY = [sys.executable, "-m", "cli"]
# Parents before children, as ingest writes them.
WRITTEN = [Client, TierAssignment, ProcessedEvent, LedgerEntry, Entitlement, PointsLot, ClientMonth, ClientProduct]
GOALS = {"sqlite": 10_000, "postgresql": 6_000}


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def bench_file(clients: int, months: int, seed: int) -> Path:
    """The portfolio's events in occurred_at order, one JSON object a line (made once, then reused)."""
    path = Path(tempfile.gettempdir()) / f"loyalty-bench-ingest-{clients}-{months}-{seed}.jsonl"
    if not path.exists():
        events = sorted(generate(clients, months, seed), key=lambda e: (e["occurred_at"], e["id"]))
        partial = path.with_suffix(".part")
        partial.write_text("".join(json.dumps(e) + "\n" for e in events))
        partial.rename(path)
    return path


def bench_core(programmes, lines: list[str]) -> tuple[float, float]:
    """Events per second through the matcher alone, and through the pure evaluator."""
    events = []
    for line in lines:
        raw = parse_json_line(line)
        programme = programmes.for_moment(datetime.fromisoformat(raw["occurred_at"].replace("Z", "+00:00")))
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


def cli_ingest(url: str, path: Path, batch: int, workers: int = 1) -> tuple[float, int, float]:
    """(events/s, applied, peak RSS MiB) of `loyalty ingest FILE --json` in its own process (and its workers')."""
    env = {**os.environ, "LOYALTY_DATABASE_URL": url, "LOYALTY_RULES": str(ROOT / "rules")}
    subprocess.run([*LOYALTY, "init", "--json"], env=env, check=True, capture_output=True)
    began = time.perf_counter()
    child = subprocess.Popen([*LOYALTY, "ingest", str(path), "--json", "--batch-size", str(batch),
                              "--workers", str(workers)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = child.stdout.read()  # type: ignore[union-attr]
    err = child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"loyalty ingest failed ({child.returncode}): {err.decode()[-2000:]}")
    report = json.loads(out)
    return per_second(report["applied"], seconds), report["applied"], usage.ru_maxrss / 1024


def storage_floor(source_url: str, target_url: str, events: int) -> float:
    """Events/s of writing every row the ingest wrote into a new database of the same schema, by executemany."""
    source, target = make_engine(source_url), make_engine(target_url)
    init_schema(target)
    tables = []
    with source.connect() as conn:
        for model in WRITTEN:
            table = model.__table__
            tables.append((table, [dict(row._mapping) for row in conn.execute(select(table))]))
    began = time.perf_counter()
    for table, rows in tables:
        for start in range(0, len(rows), 2000):
            with target.begin() as conn:
                conn.execute(insert(table), rows[start:start + 2000])
    seconds = time.perf_counter() - began
    source.dispose()
    target.dispose()
    return per_second(events, seconds)


def slices(url: str, programmes, path: Path, batch: int, size: int) -> list[tuple[float, float]]:
    """(events/s, RSS MiB after it) of each slice of `size` lines of an in-process ingest on a new database."""
    engine = make_engine(url)
    init_schema(engine)
    marks: list[tuple[int, float, float]] = [(0, time.perf_counter(), rss())]
    done = 0

    def advance(lines: int) -> None:
        nonlocal done
        done += lines
        if done - marks[-1][0] >= size:
            marks.append((done, time.perf_counter(), rss()))

    with path.open("rb") as handle:
        Ingestor(engine, programmes, batch_size=batch).ingest_lines(handle, progress=advance)
    engine.dispose()
    if done - marks[-1][0] >= size // 2 or len(marks) == 1:  # the rest, when it is at least half a slice
        marks.append((done, time.perf_counter(), rss()))
    return [(per_second(n1 - n0, t1 - t0), memory) for (n0, t0, _), (n1, t1, memory) in zip(marks, marks[1:])]


def rss() -> float:
    """This process's resident memory now, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(name: str, urls: list[str], programmes, path: Path, args, ceiling: float) -> None:
    """Print one database's figures; `urls` are new, empty databases: three, and one more for each
    --workers count beyond one on PostgreSQL."""
    rate, applied, peak = cli_ingest(urls[0], path, args.batch)
    floor = storage_floor(urls[0], urls[1], applied)
    parts = slices(urls[2], programmes, path, args.batch, args.slice)
    first, last = parts[0][0], parts[-1][0]
    goal = GOALS[name]
    print(f"\n{name}")
    print(f"  loyalty ingest, end to end        {rate:>10,.0f} events/s   goal >= {goal:,}: {verdict(rate >= goal)}")
    print(f"  storage floor (executemany)       {floor:>10,.0f} events/s   ingest / floor {rate / floor:.2f}"
          + (f" (goal >= 0.45: {verdict(rate / floor >= 0.45)})" if name == "sqlite" else ""))
    print(f"  matcher ceiling                   {ceiling:>10,.0f} events/s   ingest / ceiling {rate / ceiling:.2f}"
          + (f" (goal >= 0.33: {verdict(rate / ceiling >= 0.33)})" if name == "sqlite" else ""))
    print(f"  slices of {args.slice:,} in time order: first {first:,.0f}/s, last {last:,.0f}/s, last / first "
          f"{last / first:.2f} (goal >= 0.85: {verdict(last / first >= 0.85)})")
    print("    " + "  ".join(f"{r:,.0f}" for r, _ in parts))
    print(f"  peak RSS of loyalty ingest {peak:,.0f} MiB; in-process RSS after the first slice "
          f"{parts[0][1]:,.0f} MiB, after the last {parts[-1][1]:,.0f} MiB")
    for workers, url in zip(args.workers[1:], urls[3:]) if name == "postgresql" else []:
        shared, _, shared_peak = cli_ingest(url, path, args.batch, workers)
        goal = f" (goal with 2 >= 1.5: {verdict(shared / rate >= 1.5)})" if workers == 2 else ""
        print(f"  loyalty ingest --workers {workers}        {shared:>10,.0f} events/s   {shared / rate:.2f} x one "
              f"process{goal}; peak RSS of the parent {shared_peak:,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--months", type=int, default=18)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--slice", type=int, default=20_000)
    parser.add_argument("--postgres", default=PG_URL, metavar="URL")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--workers", type=lambda text: [1, *(int(n) for n in text.split(",") if int(n) > 1)],
                        default=[1, 2], metavar="N,N", help="process counts for `ingest --workers` on PostgreSQL")
    args = parser.parse_args()

    programmes = load_programmes(ROOT / "rules")
    path = bench_file(args.clients, args.months, args.seed)
    lines = path.read_text().splitlines()
    print(f"{len(lines):,} events, {args.clients:,} clients, {args.months} months, "
          f"{len(programmes.current.rules)} rules, batch {args.batch}; {path}")
    ceiling, evaluator = bench_core(programmes, lines)
    del lines
    print(f"durable-rules matcher alone (ceiling) {ceiling:>10,.0f} events/s")
    print(f"pure evaluator (match + CEL + awards) {evaluator:>10,.0f} events/s")
    with tempfile.TemporaryDirectory() as folder:
        measure("sqlite", [f"sqlite:///{folder}/{n}.db" for n in ("cli", "floor", "slices")], programmes, path, args,
                ceiling)
    if args.no_postgres:
        return
    schemas = [f"bench_{uuid.uuid4().hex[:8]}" for _ in range(2 + len(args.workers))]
    try:
        admin = create_engine(args.postgres, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001 - no PostgreSQL here: say so and go on
        print(f"\nPostgreSQL skipped: {str(exc).splitlines()[0]}")
        return
    try:
        separator = "&" if "?" in args.postgres else "?"
        measure("postgresql", [f"{args.postgres}{separator}options=-csearch_path%3D{s}" for s in schemas], programmes,
                path, args, ceiling)
    finally:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
