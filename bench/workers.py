"""Benefits throughput of `loyalty serve --workers 1` and `--workers 2`, beside the same HTTP stack answering a
fixed JSON body of the same size with 1 and 2 workers (the ceiling), in one run.

    python bench/workers.py [--clients 100000] [--connections 8] [--seconds 10] [--postgres]
    python bench/workers.py --quick      # smoke run: 10,000 clients, 3 s per measurement

The portfolio is the one `bench/api.py` seeds (kept in /tmp/loyalty-bench-workers-<clients>.db, or the
PostgreSQL schema bench_api_<clients> with --postgres). The load is a closed loop: N keep-alive connections,
each sending the next benefits query as soon as the last one answered, from this process (plain asyncio
HTTP/1.1, as in bench/api.py). A kept-alive connection stays with the worker that accepted it, and a worker
accepts every connection waiting when it wakes, so the connections are opened one at a time, each answered
before the next is made, for the idle workers to share them; `CPU split` shows how the work was shared.
`CPU ms` is the server's CPU per request, all its processes together. Timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import (PG_URL, Connection, Stats, free_port, pg_schema, prepare, query_mix,  # noqa: E402
                       request_target, stop_server)

from engine.loader import load_programmes  # noqa: E402
from service.apikeys import create_key  # noqa: E402
from service.clock import utc_now  # noqa: E402

BODY_ENV = "BENCH_WORKERS_BODY"  # the file holding the ceiling app's answer
CEILING = ("import uvicorn; uvicorn.run('bench.workers:ceiling_app', factory=True, workers={workers}, port={port}, "
           "log_level='warning', server_header=False, http='api.server:BoundedHttpToolsProtocol')")


def ceiling_app():  # noqa: ANN201 - a FastAPI app (imported in the server's processes only)
    """The HTTP stack alone: FastAPI on uvicorn with our protocol, answering the benefits route with a fixed body."""
    from fastapi import FastAPI, Response

    app = FastAPI()
    body = Path(os.environ[BODY_ENV]).read_bytes()

    @app.get("/v1/clients/{client_id}/benefits")
    async def benefits(client_id: str) -> Response:
        return Response(body, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"{}", media_type="application/json")

    return app


# --- the server ----------------------------------------------------------------------------------------

def worker_processes(pid: int) -> list[int]:
    """The worker processes uvicorn's supervisor `pid` started (multiprocessing's spawned children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def cpu_seconds(pid: int) -> float:
    """CPU time `pid` used so far (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(command: list[str], port: int, workers: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a server and return once it answers and its `workers` processes have finished starting (idle)."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=ROOT, env=env)
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.5)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                answered = answer.status == 200
        except OSError:
            continue
        processes = worker_processes(server.pid) if workers > 1 else [server.pid]
        used = [cpu_seconds(pid) for pid in processes]
        if answered and len(processes) >= workers and last is not None and max(
                now - before for now, before in zip(used, last)) < 0.02:
            return server  # each worker used under 20 ms of CPU in the last half second: started, waiting
        last = used if len(used) == len(last or used) else None
    stop_server(server)
    raise RuntimeError(f"the server did not start within 120 s: {log.read_text()[-2000:]}")


async def closed_loop(port: int, key: str, targets: list[bytes], connections: int, seconds: float) -> Stats:
    """`connections` connections, opened one at a time, each sending the next request as soon as the last answered."""
    opened = []
    for number in range(connections):
        connection = await Connection.open(port, key)
        await connection.get(targets[number])  # accepted and answered before the next one connects
        await asyncio.sleep(0.05)
        opened.append(connection)
    latencies, errors = [], Counter()
    until = time.perf_counter() + seconds

    async def work(connection: Connection, offset: int) -> None:
        number = offset
        while time.perf_counter() < until:
            began = time.perf_counter()
            status = await connection.get(targets[number % len(targets)])
            latencies.append((time.perf_counter() - began) * 1000)
            if status != 200:
                errors[status] += 1
            number += connections
        connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(work(connection, offset) for offset, connection in enumerate(opened)))
    return Stats(latencies, len(latencies) / (time.perf_counter() - began), errors, len(latencies))


def measure(command: list[str], workers: int, port: int, key: str, targets: list[bytes], args: argparse.Namespace,
            env: dict[str, str], keep_answer: Path | None = None) -> tuple[Stats, list[float]]:
    """Closed-loop stats against the server `command` starts, and each process's share of the server's CPU;
    with `keep_answer`, the server's answer to the first query is written there first."""
    with tempfile.TemporaryDirectory() as folder:
        server = start(command, port, workers, Path(folder) / "server.log", env)
        try:
            if keep_answer is not None:
                request = urllib.request.Request(f"http://127.0.0.1:{port}{targets[0].decode()}",
                                                 headers={"Authorization": f"Bearer {key}"})
                with urllib.request.urlopen(request, timeout=10) as answer:
                    keep_answer.write_bytes(answer.read())
            asyncio.run(closed_loop(port, key, targets, args.connections, 1.0))  # warm-up: pools, caches
            processes = [server.pid, *worker_processes(server.pid)]  # the supervisor's own CPU counts too
            before = [cpu_seconds(pid) for pid in processes]
            stats = asyncio.run(closed_loop(port, key, targets, args.connections, args.seconds))
            used = [cpu_seconds(pid) - was for pid, was in zip(processes, before)]
        finally:
            stop_server(server)
    total = sum(used)
    stats = Stats(stats.latencies_ms, stats.per_second, stats.errors, stats.sent, cpu_ms=total / stats.sent * 1000)
    return stats, [share / total for share in (used[1:] if workers > 1 else used)]


def row(path: str, workers: int, stats: Stats, split: list[float], baseline: float | None) -> str:
    """A table row: what was measured, its rate, latencies, CPU per request, how workers shared it, ratio to 1 worker."""
    errors = ", ".join(f"{count} x {status}" for status, count in stats.errors.items()) or "0"
    shares = " / ".join(f"{share:.0%}" for share in split)
    ratio = f"{stats.per_second / baseline:.2f}" if baseline else "1.00"
    return (f"{path:<34}{workers:>8}{stats.per_second:>9,.0f}{ratio:>8}{stats.quantile(0.5):>9.2f}"
            f"{stats.quantile(0.99):>9.2f}{stats.cpu_ms:>8.2f}   {shares:<16}{errors}")


def main() -> None:
    """Seed or reuse the portfolio, measure the ceiling and `loyalty serve` with 1 and 2 workers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--connections", type=int, default=8, help="closed-loop keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server")
    parser.add_argument("--postgres", action="store_true", help=f"PostgreSQL ({PG_URL}) instead of SQLite")
    parser.add_argument("--reseed", action="store_true", help="seed again even if the database holds the seed")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 clients, 3 s per measurement")
    if parser.parse_args().quick:
        parser.set_defaults(clients=10_000, seconds=3.0)
    args = parser.parse_args()

    programmes = load_programmes(ROOT / "rules")
    programme = programmes.for_moment(utc_now())
    url = (f"{PG_URL}?options=-csearch_path%3D{pg_schema(args.clients)}" if args.postgres
           else f"sqlite:////tmp/loyalty-bench-workers-{args.clients}.db")
    engine = prepare(url, programme, args.clients, args.seed, args.reseed)
    key, _ = create_key(engine, "bench-workers", ["benefits:read"])
    engine.dispose()
    targets = [request_target(query) for query in query_mix(programme, args.clients, 20_000, args.seed + 1)]
    print(f"{args.clients:,} clients on {'PostgreSQL' if args.postgres else 'SQLite'}; closed loop, "
          f"{args.connections} connections, {args.seconds:g} s per server; {os.cpu_count()} CPUs")

    env = {name: value for name, value in os.environ.items() if not name.startswith("LOYALTY_")}
    loyalty = str(Path(sys.executable).parent / "loyalty")
    rows: list[str] = []
    measured: dict[tuple[str, int], float] = {}

    def run(path: str, workers: int, command: Callable[[int], list[str]], run_env: dict[str, str],
            keep_answer: Path | None = None) -> None:
        port = free_port()
        stats, split = measure(command(port), workers, port, key, targets, args, run_env, keep_answer)
        measured[path, workers] = stats.per_second
        rows.append(row(path, workers, stats, split, measured.get((path, 1)) if workers > 1 else None))
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as folder:
        body = Path(folder) / "answer.json"
        for workers in (1, 2):  # the ceiling answers what the server answered, byte for byte
            run("loyalty serve", workers, lambda port, n=workers: [
                loyalty, "--db", url, "serve", "--port", str(port), "--workers", str(n), "--log-level", "warning"],
                env, keep_answer=body if workers == 1 else None)
        for workers in (1, 2):
            run("ceiling: fixed JSON, no work", workers, lambda port, n=workers: [
                sys.executable, "-c", CEILING.format(workers=n, port=port)], {**env, BODY_ENV: str(body)})
    print(f"\n{'server':<34}{'workers':>8}{'req/s':>9}{'x 1':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms':>8}   "
          f"{'CPU split':<16}errors")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
