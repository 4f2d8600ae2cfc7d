"""Benefits-query and /healthz throughput, latency and CPU over HTTP on loopback, beside the framework floor
measured in the same run, on SQLite and PostgreSQL; and the benefits query in process.

    python bench/api.py [--clients 100000] [--rate 500] [--repeat 3] [--postgres [URL]] [--reseed]
    python bench/api.py --quick          # smoke run: 10,000 clients, one short run per measurement
    python bench/api.py --profile        # also a cProfile of the in-process path

Seeds a portfolio straight into the tables (clients with their balances, one tier assignment each,
the standing tier grants and some catalogue redemptions, the grants written with `storage.ledger.append`
so the entitlement projection is the product's own; `ledger verify` finds it consistent) and keeps
it for later runs: /tmp/loyalty-bench-api-<clients>.db, or the schema bench_api_<clients> of the
PostgreSQL database --postgres names (default: the `test` database on 127.0.0.1). Then, on each database:

- in process: `client_benefits` for random clients (fixed seed), one after another, after a warm-up;
- request observation: the benefits request through the ASGI app in process (no network), alternating
  blocks with the request id, log line (JSON and text, to /dev/null) and metrics off and on, for the
  CPU each adds per request;
- over HTTP, two servers side by side: `loyalty serve` (one process, as production starts it) and the
  floor (`bench/floor_app.py`: a minimal FastAPI app on uvicorn answering the same paths with fixed JSON
  bodies the size of the server's own answers). Each path (the benefits query, /healthz) is measured on
  both, the floor first, `--repeat` times over (medians, with the range of the runs):
  - closed loop: N connections sending back to back, for the most requests per second;
  - open loop: requests sent at fixed intervals over keep-alive connections whatever the server does,
    latency counted from each request's scheduled send time, so a stalled server is not hidden by a
    waiting client; the first seconds are warm-up and not counted;
  and the benefits query one request at a time, once.

The load generator speaks HTTP/1.1 over plain asyncio streams: httpx costs about ten times more CPU
per request, which on a 2-core machine is taken from the server being measured. `send lag` is how
late the generator started a request (it is part of the latencies). `CPU ms` is CPU per request: the
server's for HTTP, this process's in process. `others` is the cores every other process used
meanwhile, PostgreSQL included: on SQLite, more than a few hundredths means the machine was not quiet
and the figures are suspect. Goals from the issue are marked met or not met; timings are printed,
never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import math
import os
import pstats
import random
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import verdict  # noqa: E402
from bench.floor_app import BODIES_ENV  # noqa: E402

from sqlalchemy import Engine, create_engine, func, insert, inspect, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from engine.evaluator import award_grants  # noqa: E402
from engine.loader import load_programmes  # noqa: E402
from engine.programme import CompiledProgramme, ProgrammeSet  # noqa: E402
from rewards.kinds import Reason  # noqa: E402
from rewards.tiers import tier_grants  # noqa: E402
from service.apikeys import create_key  # noqa: E402
from service.benefits import client_benefits  # noqa: E402
from service.clock import utc_now  # noqa: E402
from rewards.notices import REDEEM_RULE_PREFIX  # noqa: E402
from storage import ledger  # noqa: E402
from storage.db import init_schema, make_engine, write_transaction  # noqa: E402
from storage.ledger import Provenance  # noqa: E402
from storage.models import SCHEMA_VERSION, Client, LedgerEntry, SchemaInfo, TierAssignment  # noqa: E402
from api.app import create_app  # noqa: E402
from api.limits import KEY_CACHE_SECONDS  # noqa: E402
from cli.logs import uvicorn_log_config  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLIENT, TIER, ENTRY, META = Client.__table__, TierAssignment.__table__, LedgerEntry.__table__, SchemaInfo.__table__
SEED_MARKER = "bench_api_seed"
TIER_MIX = {"standard": 0.55, "silver": 0.25, "gold": 0.15, "diamond": 0.05}
REDEEMING = 0.2  # share of clients who redeemed one catalogue reward
SEGMENTS = ("strategic", "transactional", "partnership", "special_assistance")
CHUNK = 5000
# The goals: the benefits query at half the floor's throughput or more, p99 under 3 ms at 500 req/s
# open loop; /healthz "near the floor", taken here as 0.8 of its throughput or more; in process under 1 ms.
THROUGHPUT_GOAL, HEALTH_GOAL, OPEN_LOOP_GOAL_MS, IN_PROCESS_GOAL_MS = 0.5, 0.8, 3.0, 1.0


@dataclass(frozen=True)
class Stats:
    """Latencies of one run, with its rate, failures, requests sent (warm-up included) and CPU use."""

    latencies_ms: list[float]
    per_second: float
    errors: Counter
    sent: int
    send_lag_ms: list[float] = field(default_factory=list)
    cpu_ms: float = float("nan")  # CPU per request sent: the server's, or this process's in process
    others: float = float("nan")  # cores used meanwhile by every other process (PostgreSQL's included)

    def quantile(self, q: float) -> float:
        """The q-quantile latency in ms."""
        return quantile(self.latencies_ms, q)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank); NaN if there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else float("nan")


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used so far by this process, the server and the whole machine, at a moment."""

    own: float
    server: float
    machine: float
    at: float

    @classmethod
    def now(cls, server_pid: int | None) -> CpuUse:
        """Read the counters (Linux /proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        own = os.times()
        server = 0.0
        if server_pid is not None:
            fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
            server = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        user, nice, system, _idle, _iowait, irq, softirq, steal = \
            (int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
        return cls(own.user + own.system, server, (user + nice + system + irq + softirq + steal) / tick,
                   time.perf_counter())


def measured(run: Callable[[], Stats], server_pid: int | None = None) -> Stats:
    """`run()`'s stats with the CPU it cost per request and the load other processes put on the machine meanwhile."""
    before = CpuUse.now(server_pid)
    stats = run()
    after = CpuUse.now(server_pid)
    own, server = after.own - before.own, after.server - before.server
    others = (after.machine - before.machine - own - server) / (after.at - before.at)
    return replace(stats, cpu_ms=(server if server_pid else own) / stats.sent * 1000, others=max(others, 0.0))


# --- seeding -------------------------------------------------------------------------------------------

def database_urls(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, URL) of each database to measure."""
    urls = [("SQLite", args.db or f"sqlite:////tmp/loyalty-bench-api-{args.clients}.db")]
    if args.postgres:
        urls.append(("PostgreSQL", pg_url(args.postgres, args.clients)))
    return urls


def pg_url(database_url: str, clients: int) -> str:
    """The URL of the schema holding a portfolio of `clients` clients in the PostgreSQL database `database_url`."""
    return make_url(database_url).update_query_dict({"options": f"-csearch_path={pg_schema(clients)}"}) \
        .render_as_string(hide_password=False)


def pg_schema(clients: int) -> str:
    """The PostgreSQL schema holding a seeded portfolio of `clients` clients."""
    return f"bench_api_{clients}"


def _admin(url: str) -> Engine:
    """An engine on the database of `url`, outside the bench's schema (where schemas are made and dropped)."""
    return create_engine(make_url(url).difference_update_query(["options"]), connect_args={"connect_timeout": 3})


def reset_database(url: str, clients: int) -> None:
    """Empty the database at `url`: delete the SQLite file, or drop and recreate the PostgreSQL schema."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{parsed.database}{suffix}").unlink(missing_ok=True)
        return
    admin = _admin(url)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {pg_schema(clients)} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {pg_schema(clients)}"))
    admin.dispose()


def ensure_schema_exists(url: str, clients: int) -> None:
    """Create the PostgreSQL schema of `url` if it is missing (nothing to do for SQLite)."""
    if not make_url(url).drivername.startswith("sqlite"):
        admin = _admin(url)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {pg_schema(clients)}"))
        admin.dispose()


def seeded_marker(engine: Engine) -> str | None:
    """What the bench seeded into this database, or None if it holds no complete seed."""
    if not inspect(engine).has_table(META.name):
        return None
    with engine.connect() as conn:
        return conn.execute(select(META.c.value).where(META.c.key == SEED_MARKER)).scalar()


def prepare(url: str, programme: CompiledProgramme, clients: int, seed: int, reseed: bool) -> Engine:
    """An engine on a database holding the seeded portfolio, reusing an earlier seed unless `reseed`."""
    ensure_schema_exists(url, clients)
    wanted = (f"{clients} clients, seed {seed}, programme {programme.id} {programme.version}, "
              f"schema {SCHEMA_VERSION}")
    engine = make_engine(url)
    if not reseed and seeded_marker(engine) == wanted:
        print(f"  reusing the seeded database ({wanted})")
        return engine
    engine.dispose()
    reset_database(url, clients)
    engine = make_engine(url)
    init_schema(engine)
    began = time.perf_counter()
    entries = seed_portfolio(engine, programme, clients, seed)
    with write_transaction(engine) as conn:
        conn.execute(insert(META).values(key=SEED_MARKER, value=wanted))
    print(f"  seeded {clients:,} clients and {entries:,} ledger entries in {time.perf_counter() - began:.1f} s")
    return engine


def seed_portfolio(engine: Engine, programme: CompiledProgramme, clients: int, seed: int) -> int:
    """Insert `clients` clients with tiers, tier grants, points and redemptions; returns the ledger entries written."""
    rng = random.Random(seed)
    now = utc_now()
    entries = 0
    for first in range(0, clients, CHUNK):
        client_rows, tier_rows, grants, points = [], [], [], []
        for number in range(first, min(first + CHUNK, clients)):
            client, tier, client_grants, client_points = seed_client(rng, programme, number, now)
            client_rows.append(client)
            tier_rows.append(tier)
            grants.extend(client_grants)
            points.extend(client_points)
        with write_transaction(engine) as conn:
            conn.execute(insert(CLIENT), client_rows)
            conn.execute(insert(TIER), tier_rows)
            ledger.append(conn, grants)  # writes the entitlement projection, as the product does
            conn.execute(insert(ENTRY), points)  # the balances on the client rows already add them up
        entries += len(grants) + len(points)
    return entries


def seed_client(rng: random.Random, programme: CompiledProgramme, number: int,
                now: datetime) -> tuple[dict, dict, list[dict], list[dict]]:
    """One client's rows: client (its balance the sum of its points entries), tier assignment, grant and points entries."""
    client_id = f"C-{number:06d}"
    source = Provenance(programme.id, programme.version, None)
    first_seen = programme.effective_from + (now - programme.effective_from) * rng.uniform(0, 0.8)
    tier_id = rng.choices(list(TIER_MIX), weights=list(TIER_MIX.values()))[0]
    tier_from = first_seen + (now - first_seen) * rng.uniform(0, 0.9)
    tier = {"client_id": client_id, "tier": tier_id, "previous_tier": None, "valid_from": tier_from,
            "reason": "bench seed", "details": None, "review_id": None, "programme_id": programme.id,
            "programme_version": programme.version, "created_at": now}
    grants = [ledger.grant_entry(client_id, grant, source, now) for grant in tier_grants(programme.tier(tier_id), tier_from)]
    earned_at = first_seen + (now - first_seen) * rng.uniform(0, 0.5)
    earned = rng.randint(0, 80_000)
    points = [ledger.points_entry(client_id, "bench:seed", earned, Reason.ADJUST, earned_at, source, now,
                                  detail={"note": "bench seed"})]
    rank = programme.tier_ids.index(tier_id)
    affordable = [reward for reward in programme.model.catalogue if reward.points <= earned
                  and (reward.min_tier is None or programme.tier_ids.index(reward.min_tier) <= rank)]
    if affordable and rng.random() < REDEEMING:
        reward = rng.choice(affordable)
        redeemed_at = max(earned_at, tier_from) + (now - max(earned_at, tier_from)) * rng.uniform(0, 1)
        rule_id = REDEEM_RULE_PREFIX + reward.id
        points.append(ledger.points_entry(client_id, rule_id, -reward.points, Reason.REDEEM, redeemed_at, source, now,
                                          detail={"reward": reward.id}))
        grants.extend(ledger.grant_entry(client_id, grant, source, now)
                      for grant in award_grants(rule_id, reward.rate_discount, reward.benefit, redeemed_at))
    client = {"client_id": client_id, "name": f"Enterprise {number}", "segment": rng.choice(SEGMENTS),
              "industry": None, "onboarded_at": first_seen, "first_seen_at": first_seen,
              "points_balance": sum(entry["points"] for entry in points), "created_at": now}
    return client, tier, grants, points


# --- the queries ---------------------------------------------------------------------------------------

def query_mix(programme: CompiledProgramme, clients: int, count: int, seed: int) -> list[tuple[str, str | None, str | None]]:
    """(client, product, amount) of `count` benefits queries: four in five price a loan, one asks for the whole picture."""
    rng = random.Random(seed + 1)
    products = programme.model.loan_products
    queries = []
    for _ in range(count):
        client_id = f"C-{rng.randrange(clients):06d}"
        if rng.random() < 0.8:
            queries.append((client_id, rng.choice(products), f"{rng.randrange(1_000_000, 200_000_000)}.00"))
        else:
            queries.append((client_id, None, None))
    return queries


def request_target(query: tuple[str, str | None, str | None]) -> bytes:
    """The HTTP request target of a benefits query."""
    client_id, product, amount = query
    params = urlencode({"product": product, "amount": amount}) if product else ""
    return f"/v1/clients/{client_id}/benefits{'?' + params if params else ''}".encode()


def bench_in_process(engine: Engine, programmes: ProgrammeSet, queries: list, warmup: int) -> Stats:
    """Latency of `client_benefits` called directly, one query after another."""
    for client_id, product, amount in queries[:warmup]:
        client_benefits(engine, programmes, client_id, utc_now(), product, amount)
    latencies = []
    began = time.perf_counter()
    for client_id, product, amount in queries[warmup:]:
        start = time.perf_counter()
        client_benefits(engine, programmes, client_id, utc_now(), product, amount)
        latencies.append((time.perf_counter() - start) * 1000)
    return Stats(latencies, len(latencies) / (time.perf_counter() - began), Counter(), len(queries))


def profile_in_process(engine: Engine, programmes: ProgrammeSet, queries: list) -> None:
    """Print where the in-process query path spends its time (cProfile, top functions by own time)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for client_id, product, amount in queries:
        client_benefits(engine, programmes, client_id, utc_now(), product, amount)
    profiler.disable()
    print(f"  cProfile of {len(queries):,} in-process queries, by own time:")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


# --- the server and the HTTP load ----------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on loopback nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(url: str, port: int, log: Path) -> subprocess.Popen:
    """`loyalty serve` on `url` as a subprocess, once /healthz answers."""
    return _started([str(Path(sys.executable).parent / "loyalty"), "--db", url, "serve", "--port", str(port),
                     "--log-level", "warning"], port, log)


def start_floor(port: int, bodies: Path, log: Path) -> subprocess.Popen:
    """The floor app (`bench/floor_app.py`) on uvicorn's defaults, answering with the bodies in `bodies`."""
    return _started([sys.executable, "-m", "uvicorn", "bench.floor_app:create_app", "--factory", "--port", str(port),
                     "--log-level", "warning", "--no-access-log", "--no-server-header"], port, log,
                    {**os.environ, BODIES_ENV: str(bodies)})


def _started(command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"the server did not answer /healthz within 60 s: {log.read_text()[-2000:]}")


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server subprocess (SIGTERM, then SIGKILL after 10 s)."""
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


class Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs with the API key and reads whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: bytes):
        self.reader, self.writer, self.headers = reader, writer, headers

    @classmethod
    async def open(cls, port: int, key: str) -> Connection:
        """Connect to the server on loopback."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())

    async def get(self, target: bytes) -> int:
        """Send GET `target` and read the response; returns its status code."""
        self.writer.write(b"GET " + target + b" HTTP/1.1\r\n" + self.headers)
        head = await self.reader.readuntil(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:] if b":" in line)
        await self.reader.readexactly(int(fields[b"content-length"]))  # uvicorn always sends it for JSON
        return int(head[9:12])

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


def pace(fire: Callable[[int, float], object], started: float, rate: float, total: int) -> None:
    """Call fire(number, due) at each due time `started + number / rate`.

    Runs in its own thread: time.sleep wakes within tens of microseconds, where asyncio's timers
    round up to the next millisecond and would add that to every latency counted from the due time.
    """
    for number in range(total):
        due = started + number / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        fire(number, due)


async def open_loop(port: int, key: str, targets: list[bytes], rate: float, warmup: float,
                    seconds: float, connections: int) -> Stats:
    """Send at `rate` requests/s for `warmup` + `seconds`; latencies of the last `seconds`, from scheduled send times."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await Connection.open(port, key))
    latencies, lags, errors = [], [], Counter()
    counted_from = time.perf_counter() + 0.1 + warmup
    last_done = counted_from

    async def send(target: bytes, due: float) -> None:
        nonlocal last_done
        lag = time.perf_counter() - due
        connection = await idle.get()
        try:
            status = await connection.get(target)
        except (OSError, asyncio.IncompleteReadError) as exc:
            connection.close()
            connection = await Connection.open(port, key)
            status = type(exc).__name__
        done = time.perf_counter()
        idle.put_nowait(connection)
        if due >= counted_from:
            latencies.append((done - due) * 1000)
            lags.append(lag * 1000)
            last_done = max(last_done, done)
            if status != 200:
                errors[status] += 1

    tasks: set[asyncio.Task] = set()

    def start(number: int, due: float) -> None:
        task = asyncio.create_task(send(targets[number % len(targets)], due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop = asyncio.get_running_loop()
    total = int(rate * (warmup + seconds))
    await asyncio.to_thread(pace, lambda number, due: loop.call_soon_threadsafe(start, number, due),
                            counted_from - warmup, rate, total)
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return Stats(latencies, len(latencies) / (last_done - counted_from), errors, total, lags)


async def closed_loop(port: int, key: str, targets: list[bytes], workers: int, seconds: float) -> Stats:
    """`workers` connections each sending the next request as soon as the last answered, for `seconds`."""
    latencies, errors = [], Counter()
    connections = [await Connection.open(port, key) for _ in range(workers)]
    until = time.perf_counter() + seconds

    async def work(connection: Connection, offset: int) -> None:
        number = offset
        while time.perf_counter() < until:
            start = time.perf_counter()
            status = await connection.get(targets[number % len(targets)])
            latencies.append((time.perf_counter() - start) * 1000)
            if status != 200:
                errors[status] += 1
            number += workers
        connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(work(connection, offset) for offset, connection in enumerate(connections)))
    return Stats(latencies, len(latencies) / (time.perf_counter() - began), errors, len(latencies))


@dataclass(frozen=True)
class Summary:
    """One measurement repeated: the median of each figure over the runs, and the range of the rate and p99."""

    per_second: float
    p50: float
    p99: float
    cpu_ms: float
    others: float
    errors: Counter
    rates: tuple[float, float]
    p99s: tuple[float, float]
    lag_p99: float  # how late the load generator sent (open loop): part of the latencies

    @classmethod
    def of(cls, runs: list[Stats]) -> Summary:
        """The summary of `runs`."""
        rates, p99s = [run.per_second for run in runs], [run.quantile(0.99) for run in runs]
        return cls(statistics.median(rates), statistics.median(run.quantile(0.5) for run in runs),
                   statistics.median(p99s), statistics.median(run.cpu_ms for run in runs),
                   statistics.median(run.others for run in runs), sum((run.errors for run in runs), Counter()),
                   (min(rates), max(rates)), (min(p99s), max(p99s)),
                   statistics.median(quantile(run.send_lag_ms, 0.99) for run in runs))


@dataclass(frozen=True)
class Comparison:
    """One path measured on `loyalty serve` and on the floor: closed loop and open loop on each."""

    path: str
    ours_closed: Summary
    floor_closed: Summary
    ours_open: Summary
    floor_open: Summary

    @property
    def ratio(self) -> float:
        """The server's closed-loop throughput over the floor's."""
        return self.ours_closed.per_second / self.floor_closed.per_second


def answer_bodies(port: int, key: str, targets: list[bytes]) -> dict[str, str]:
    """The server's own answers the floor sends back: the median-sized benefits answer of the first targets, and
    /healthz."""
    def get(target: bytes) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{target.decode()}",
                                         headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.read().decode()

    answers = sorted((get(target) for target in targets[:101]), key=len)
    return {"benefits": answers[len(answers) // 2], "healthz": get(b"/healthz")}


def bench_http(url: str, engine: Engine, targets: list[bytes],
               args: argparse.Namespace) -> tuple[Stats, list[Comparison], dict[str, int]]:
    """(one benefits request at a time, then each path's comparison with the floor, and the floor's body sizes)
    against `loyalty serve` on `url`."""
    key, _ = create_key(engine, "bench-api", ["benefits:read"])
    engine.dispose()
    paths = {"benefits": targets, "/healthz": [b"/healthz"]}
    with tempfile.TemporaryDirectory() as folder:
        ours_port, floor_port, bodies = free_port(), free_port(), Path(folder) / "bodies.json"
        ours = start_server(url, ours_port, Path(folder) / "server.log")
        floor = None
        try:
            answers = answer_bodies(ours_port, key, targets)
            bodies.write_text(json.dumps(answers))
            floor = start_floor(floor_port, bodies, Path(folder) / "floor.log")
            for port in (floor_port, ours_port):  # warm-up: pools, statement caches, worker threads
                for path_targets in paths.values():
                    asyncio.run(closed_loop(port, key, path_targets, 1, 1.0))
            serial = measured(lambda: asyncio.run(closed_loop(ours_port, key, targets, 1, args.serial_seconds)),
                              ours.pid)
            comparisons = [compare(path, path_targets, key, (ours_port, ours.pid), (floor_port, floor.pid), args)
                           for path, path_targets in paths.items()]
        finally:
            stop_server(ours)
            if floor is not None:
                stop_server(floor)
    return serial, comparisons, {path: len(body.encode()) for path, body in answers.items()}


def compare(path: str, targets: list[bytes], key: str, ours: tuple[int, int], floor: tuple[int, int],
            args: argparse.Namespace) -> Comparison:
    """`path` on both servers (port, pid), closed then open loop, the floor first in each of `args.repeat` rounds."""
    runs: dict[tuple[str, str], list[Stats]] = {}
    for _ in range(args.repeat):
        for name, (port, pid) in (("floor", floor), ("ours", ours)):
            runs.setdefault((name, "closed"), []).append(measured(lambda: asyncio.run(
                closed_loop(port, key, targets, args.workers, args.closed_seconds)), pid))
            runs.setdefault((name, "open"), []).append(measured(lambda: asyncio.run(
                open_loop(port, key, targets, args.rate, args.warmup, args.seconds, args.connections)), pid))
    return Comparison(path, *(Summary.of(runs[run]) for run in (("ours", "closed"), ("floor", "closed"),
                                                                  ("ours", "open"), ("floor", "open"))))


# --- request observation: request id, log line and metrics, off and on ---------------------------------

OBSERVATION_BLOCK = 250  # requests per block; blocks of each variant alternate, so drift hits all alike


async def asgi_get(app: object, target: bytes, key: str) -> int:
    """One GET through the ASGI app, as uvicorn would call it; the response status."""
    path, _, query = target.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path.decode(), "raw_path": path, "query_string": query, "root_path": "",
             "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
    status = 0

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)  # type: ignore[operator]
    return status


def bench_observation(engine: Engine, programmes: ProgrammeSet, targets: list[bytes], rounds: int) -> dict[str, float]:
    """CPU ms per benefits request through the ASGI app: observation off, on with text logs, on with JSON logs."""
    import logging.config

    key, _ = create_key(engine, "bench-observe", ["benefits:read"])
    variants = {"off": (create_app(engine, programmes, observe=False, key_cache_seconds=KEY_CACHE_SECONDS), "text"),
                "on, text logs": (create_app(engine, programmes, key_cache_seconds=KEY_CACHE_SECONDS), "text"),
                "on, JSON logs": (create_app(engine, programmes, key_cache_seconds=KEY_CACHE_SECONDS), "json")}
    cpu = dict.fromkeys(variants, 0.0)

    async def run() -> None:
        for number in range(rounds + 1):  # the first round warms up and is not counted
            for name, (app, fmt) in variants.items():
                config = uvicorn_log_config(fmt)
                config["handlers"]["default"] = {"class": "logging.FileHandler", "filename": os.devnull,
                                                 "formatter": fmt, "filters": ["request_id"]}
                logging.config.dictConfig(config)
                block = targets[number * OBSERVATION_BLOCK:(number + 1) * OBSERVATION_BLOCK]
                began = time.process_time()
                statuses = [await asgi_get(app, target, key) for target in block]
                if number:
                    cpu[name] += time.process_time() - began
                assert set(statuses) <= {200, 404}, Counter(statuses)

    asyncio.run(run())
    return {name: seconds / (rounds * OBSERVATION_BLOCK) * 1000 for name, seconds in cpu.items()}


# --- report --------------------------------------------------------------------------------------------

def stats_line(database: str, path: str, stats: Stats) -> str:
    """A table row: database, path, rate, latency quantiles, CPU per request, others' load and errors."""
    return (f"{database:<11}{path:<32}{stats.per_second:>7,.0f}{stats.quantile(0.5):>10.2f}{stats.quantile(0.9):>10.2f}"
            f"{stats.quantile(0.99):>10.2f}{max(stats.latencies_ms, default=float('nan')):>10.2f}{stats.cpu_ms:>8.3f}"
            f"{stats.others:>8.2f}   {errors_text(stats.errors)}")


def errors_text(errors: Counter) -> str:
    """`3 x 503, 1 x OSError`, or 0."""
    return ", ".join(f"{count} x {status}" for status, count in errors.items()) or "0"


def comparison_lines(database: str, comparison: Comparison, args: argparse.Namespace) -> list[str]:
    """Table rows of one path on both servers, closed and open loop."""
    rows = []
    for server, closed, opened in (("loyalty serve", comparison.ours_closed, comparison.ours_open),
                                   ("floor", comparison.floor_closed, comparison.floor_open)):
        for loop, figures in ((f"closed loop, {args.workers} conn.", closed), (f"open loop @{args.rate:,.0f}/s", opened)):
            rows.append(f"{database:<11}{comparison.path:<10}{server:<15}{loop:<22}{figures.per_second:>7,.0f} "
                        f"{f'({figures.rates[0]:,.0f}-{figures.rates[1]:,.0f})':<14}{figures.p50:>7.2f}{figures.p99:>8.2f} "
                        f"{f'({figures.p99s[0]:.2f}-{figures.p99s[1]:.2f})':<14}{figures.cpu_ms:>7.3f}{figures.others:>7.2f}"
                        f"   {errors_text(figures.errors)}")
    return rows


def goal_lines(database: str, comparisons: list[Comparison], local: Stats, observation: dict[str, float],
               args: argparse.Namespace) -> list[str]:
    """Each goal of the issue with the figures behind it, met or not, and the request-observation costs."""
    benefits, health = comparisons
    opened = benefits.ours_open
    open_met = opened.p99 < OPEN_LOOP_GOAL_MS and not opened.errors and opened.per_second >= 0.98 * args.rate
    return [
        f"{database:<11}benefits, closed loop: {benefits.ours_closed.per_second:,.0f} req/s at "
        f"{benefits.ours_closed.cpu_ms:.3f} ms CPU each = {benefits.ratio:.2f} x the floor's "
        f"{benefits.floor_closed.per_second:,.0f} at {benefits.floor_closed.cpu_ms:.3f} ms "
        f"(goal >= {THROUGHPUT_GOAL:g} x) -> {verdict(benefits.ratio >= THROUGHPUT_GOAL)}",
        f"{database:<11}benefits, open loop at {args.rate:,.0f} req/s: p99 {opened.p99:.2f} ms at "
        f"{opened.per_second:,.0f} req/s, {sum(opened.errors.values())} errors (the floor's p99 "
        f"{benefits.floor_open.p99:.2f} ms; the load generator's send lag p99 {opened.lag_p99:.2f} ms) "
        f"(goal p99 < {OPEN_LOOP_GOAL_MS:g} ms) -> {verdict(open_met)}",
        f"{database:<11}/healthz, closed loop: {health.ours_closed.per_second:,.0f} req/s at "
        f"{health.ours_closed.cpu_ms:.3f} ms CPU each = {health.ratio:.2f} x the floor's "
        f"{health.floor_closed.per_second:,.0f} at {health.floor_closed.cpu_ms:.3f} ms "
        f"(goal: near the floor, >= {HEALTH_GOAL:g} x) -> {verdict(health.ratio >= HEALTH_GOAL)}; open loop p99 "
        f"{health.ours_open.p99:.2f} ms (the floor's {health.floor_open.p99:.2f} ms)",
        f"{database:<11}in-process p99 < {IN_PROCESS_GOAL_MS:g} ms: {local.quantile(0.99):.3f} ms -> "
        f"{verdict(local.quantile(0.99) < IN_PROCESS_GOAL_MS)}",
        f"{database:<11}request observation (request id, log line, metrics), CPU ms per benefits request "
        f"through the ASGI app: " + ", ".join(f"{name} {ms:.3f}" for name, ms in observation.items()) +
        f"; JSON logs add {observation['on, JSON logs'] - observation['off']:.3f} ms "
        f"({observation['on, JSON logs'] / observation['off'] - 1:+.0%})",
    ]


def main() -> None:
    """Seed or reuse the databases, measure each, and print the tables and the goals."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--queries", type=int, default=5000, help="in-process queries measured (after 500 warm-up)")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="open-loop seconds sent first and not counted")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the open loop")
    parser.add_argument("--workers", type=int, default=8, help="closed-loop connections")
    parser.add_argument("--closed-seconds", type=float, default=5.0)
    parser.add_argument("--serial-seconds", type=float, default=3.0, help="seconds of one request at a time")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each HTTP measurement on each server (medians)")
    parser.add_argument("--db", help="SQLite URL instead of sqlite:////tmp/loyalty-bench-api-<clients>.db; the file is "
                                     "deleted and seeded afresh unless it holds this bench's seed")
    parser.add_argument("--postgres", nargs="?", const=PG_URL, metavar="URL",
                        help=f"also measure PostgreSQL: the database at URL (default {PG_URL}), in the schema "
                             "bench_api_<clients>, created (and replaced when reseeding) there")
    parser.add_argument("--reseed", action="store_true", help="seed again even if the database holds the seed")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the in-process path")
    parser.add_argument("--observe-rounds", type=int, default=20,
                        help=f"blocks of {OBSERVATION_BLOCK} requests per variant for the request-observation figures")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 clients and a few seconds per phase")
    if parser.parse_args().quick:  # smaller defaults; options given explicitly still win
        parser.set_defaults(clients=10_000, queries=1000, seconds=3.0, warmup=1.0, closed_seconds=2.0,
                            serial_seconds=1.0, repeat=1, observe_rounds=4)
    args = parser.parse_args()

    programmes = load_programmes(ROOT / "rules")
    programme = programmes.for_moment(utc_now())
    warmup = 500
    queries = query_mix(programme, args.clients, warmup + args.queries, args.seed)
    targets = [request_target(query) for query in query_mix(programme, args.clients, 20_000, args.seed + 1)]
    print(f"{args.clients:,} clients; in process {args.queries:,} queries; over HTTP, each path on `loyalty serve` and "
          f"on the floor, {args.repeat} run(s) each: closed loop {args.workers} connections for {args.closed_seconds:g} "
          f"s, open loop {args.rate:,.0f} req/s for {args.seconds:g} s (+{args.warmup:g} s warm-up) over "
          f"{args.connections} connections; {os.cpu_count()} CPUs")
    rows, comparisons, goals = [], [], []
    for database, url in database_urls(args):
        print(f"{database}: {make_url(url).render_as_string(hide_password=True)}")
        try:
            engine = prepare(url, programme, args.clients, args.seed, args.reseed)
        except Exception as exc:  # PostgreSQL may not answer here: say so and go on
            print(f"  {database} skipped: {str(exc).splitlines()[0]}")
            continue
        with engine.connect() as conn:
            print(f"  {conn.execute(select(func.count()).select_from(CLIENT)).scalar():,} clients in the database")
        local = measured(lambda: bench_in_process(engine, programmes, queries, warmup))
        if args.profile:
            profile_in_process(engine, programmes, queries[warmup:warmup + 2000])
        observation = bench_observation(engine, programmes, targets, args.observe_rounds)
        serial, compared, sizes = bench_http(url, engine, targets, args)
        print(f"  the floor answers with bodies of {sizes['benefits']:,} bytes (benefits) and {sizes['healthz']:,} "
              "bytes (/healthz), the server's own median answers")
        rows += [stats_line(database, "in process", local), stats_line(database, "HTTP one at a time", serial)]
        comparisons += [line for comparison in compared for line in comparison_lines(database, comparison, args)]
        goals += goal_lines(database, compared, local, observation, args)
    print(f"\n{'database':<11}{'path':<32}{'req/s':>7}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}"
          f"{'CPU ms':>8}{'others':>8}   errors")
    print("\n".join(rows))
    print(f"\nmedians of {args.repeat} run(s) (range)\n{'database':<11}{'path':<10}{'server':<15}{'loop':<22}"
          f"{'req/s':>7} {'':<14}{'p50 ms':>7}{'p99 ms':>8} {'':<14}{'CPU ms':>7}{'others':>7}   errors")
    print("\n".join(comparisons))
    print("\ngoals")
    print("\n".join(goals))


if __name__ == "__main__":
    main()
