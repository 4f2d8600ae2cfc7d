"""`loyalty simulate` on a large history: about 500,000 events under two programmes, goal under 2 minutes.

    python bench/simulate.py [--clients 4400] [--months 18] [--seed 7] [--batch 2000] [--sequential]
    python bench/simulate.py --profile [--profile-events 60000]   # where one replay's time goes

The history is the demo generator's portfolio (`loyalty generate`, run in a child process so this
one's peak memory is the simulation's alone), written once to /tmp/loyalty-bench-simulate-<clients>-
<months>-<seed>.jsonl and reused. The two programmes are the shipped rules and a modified copy
(drawdown points doubled, gold from 15M CNY instead of 30M: clients move up and later awards follow).
The simulation runs as `loyalty simulate` does (`service.simulate.simulate`, two processes on a
machine with two cores, unless --sequential). Printed: events, wall time, events replayed per second,
each replay's own time, the CPU time the simulation used and how busy other processes kept the
machine meanwhile (it is shared), peak RSS of this process and of the largest replay process, and the verdict
against the goal. Timings are printed, never asserted. --profile replays the first --profile-events
events of the history under the shipped rules in this process under cProfile and prints the top
functions by own time and by cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import verdict  # noqa: E402

from engine.loader import load_programmes  # noqa: E402
from service.simulate import CURRENT, NEW, Candidate, History, impact, read_history, replay, simulate  # noqa: E402

GOAL_SECONDS = 120
RULES = ROOT / "rules"


def history_file(clients: int, months: int, seed: int) -> Path:
    """The generated history, made once per size and seed."""
    path = Path(tempfile.gettempdir()) / f"loyalty-bench-simulate-{clients}-{months}-{seed}.jsonl"
    if not path.exists():
        began = time.perf_counter()
        partial = path.with_suffix(".partial")
        with partial.open("w") as out:
            subprocess.run([sys.executable, "-m", "cli", "generate", "--clients", str(clients), "--months",
                            str(months), "--seed", str(seed)], stdout=out, check=True, cwd=ROOT)
        partial.rename(path)
        print(f"generated {path} in {time.perf_counter() - began:.1f} s")
    return path


def proposed_rules(folder: Path) -> Path:
    """The shipped file with drawdown points doubled and gold reached from 15M CNY."""
    text = (RULES / "corporate_lending.yaml").read_text()
    changed = text.replace("points: event.amount / 10000", "points: event.amount / 5000") \
        .replace("{metric: loan_volume, gte: 30000000}", "{metric: loan_volume, gte: 15000000}") \
        .replace('version: "2026.1"', 'version: "2026.2"')
    if changed.count("/ 5000") != 1 or "gte: 15000000" not in changed:
        raise SystemExit("the shipped rule file changed: update proposed_rules() in bench/simulate.py")
    path = folder / "proposed.yaml"
    path.write_text(changed)
    return path


def busy_seconds() -> float:
    """CPU seconds every process of the machine has used since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    idle = int(fields[3]) + int(fields[4])  # idle and iowait
    return (sum(int(value) for value in fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(who: int) -> float:
    """User and system CPU seconds of this process or of its finished children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def peak_mib(who: int) -> float:
    """Peak RSS in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024


def run(path: Path, batch: int, sequential: bool) -> None:
    """Simulate the history under both programmes and print the figures."""
    with tempfile.TemporaryDirectory() as folder:
        proposed = proposed_rules(Path(folder))
        current = Candidate(CURRENT, RULES, load_programmes(RULES))
        new = Candidate(NEW, proposed, load_programmes(proposed))
        began, machine = time.perf_counter(), busy_seconds()
        ours = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)
        result = simulate(current, new, path, batch_size=batch, parallel=False if sequential else None)
        wall = time.perf_counter() - began
        ours = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN) - ours
        others = (busy_seconds() - machine - ours) / wall
    found = impact(result, top=5)
    events = found["events"][CURRENT]["replayed"]
    print(f"history: {path} ({events:,} events replayed, {found['events'][CURRENT]['rejected']:,} rejected, "
          f"{len(found['review_moments'][CURRENT])} tier reviews, {found['clients']['total']['current']:,} clients)")
    print(f"impact: points issued {found['points']['issued']['difference']:+,}, interest forgone a year "
          f"{found['interest_forgone_per_year']['total']['difference']} {found['currency']}, clients affected "
          f"{found['clients']['affected']:,} (tier {found['clients']['affected_by']['tier']:,})")
    mode = "two processes" if result.parallel else "one process, one replay after the other"
    print(f"{'':<28}{'seconds':>9}{'events/s':>10}")
    print(f"{'current replay':<28}{result.current.seconds:>9.1f}{events / result.current.seconds:>10,.0f}")
    print(f"{'new replay':<28}{result.new.seconds:>9.1f}{events / result.new.seconds:>10,.0f}")
    print(f"{'simulation, wall':<28}{wall:>9.1f}{2 * events / wall:>10,.0f}   ({mode}; events/s counts both replays)")
    print(f"CPU: {ours:.1f} s for the simulation (both replays); other processes kept {max(others, 0):.2f} of the "
          f"{os.cpu_count()} cores busy meanwhile (on a quiet machine 0: above a few tenths, the wall time is suspect)")
    print(f"peak RSS: this process {peak_mib(resource.RUSAGE_SELF):,.0f} MiB, largest replay process "
          f"{peak_mib(resource.RUSAGE_CHILDREN):,.0f} MiB")
    print(f"goal: under {GOAL_SECONDS} s for two programmes: {verdict(wall < GOAL_SECONDS)} ({wall:.1f} s)")


def profile(path: Path, batch: int, events: int) -> None:
    """One replay of the history's first `events` events, in this process, under cProfile."""
    full = read_history(path)
    part = History(path, full.lines, full.events[:events])
    programmes = load_programmes(RULES)
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    replay(CURRENT, programmes, part, batch_size=batch)
    profiler.disable()
    print(f"profile: {len(part.events):,} events replayed in {time.perf_counter() - began:.1f} s (under cProfile)")
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(25)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4400, help="clients in the history (about 113 events each)")
    parser.add_argument("--months", type=int, default=18)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2000, help="events per replayed batch")
    parser.add_argument("--sequential", action="store_true", help="one replay after the other, in this process")
    parser.add_argument("--profile", action="store_true", help="profile one replay instead")
    parser.add_argument("--profile-events", type=int, default=60_000)
    args = parser.parse_args()
    path = history_file(args.clients, args.months, args.seed)
    if args.profile:
        profile(path, args.batch, args.profile_events)
    else:
        run(path, args.batch, args.sequential)


if __name__ == "__main__":
    main()
