"""CLI start-up: how long a person waits for `loyalty --help`, `loyalty benefits C-1001 --json` and
`loyalty rules check`, each in a fresh process, beside the interpreter's own floor.

    python bench/startup.py [--repeat 15]

Creates a small SQLite database in a temporary directory (`loyalty init`, then `loyalty ingest` of
examples/sample_events.jsonl), runs every command once untimed with bytecode caching on (as after `pip
install`, which compiles every module; PYTHONDONTWRITEBYTECODE would otherwise have each process compile
this project's modules again), then times every command `--repeat` times, round-robin so that the shared
machine's load falls on all of them alike, and prints the median and best of each beside the floors
measured in the same run: `python -c pass` and `python -c "import typer"` (the CLI framework alone).
Each process's CPU time (user + system, median) is printed too: on a loaded machine it moves much
less than the wall clock, and says whether a slow run was our work or waiting for a core.
The goals (issue 14): `--help` under 0.25 s, `benefits --json` under 0.4 s (median wall clock).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import verdict  # noqa: E402

GOALS = {"loyalty --help": 0.25, "loyalty benefits C-1001 --json": 0.4}


def loyalty() -> list[str]:
    """The installed `loyalty` script beside this interpreter, or `python -m cli` when there is none."""
    script = Path(sys.executable).parent / "loyalty"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def run(command: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """Wall-clock and CPU seconds `command` took in a fresh process; exits with its output if it failed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    """Prepare the database, time each command and floor round-robin, print medians beside the floors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="fresh processes per command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loyalty-startup-") as name:
        work = Path(name)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("LOYALTY_") and key != "PYTHONDONTWRITEBYTECODE"}
        env.update(LOYALTY_DATABASE_URL=f"sqlite:///{work / 'loyalty.db'}", COLUMNS="120")
        cli = loyalty()
        run([*cli, "init"], env, work)
        run([*cli, "ingest", str(ROOT / "examples" / "sample_events.jsonl")], env, work)
        commands = {
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
            "python -c 'import typer' (floor)": [sys.executable, "-c", "import typer"],
            "python -c 'import cli.main'": [sys.executable, "-c", "import cli.main"],
            "loyalty --help": [*cli, "--help"],
            "loyalty benefits C-1001 --json": [*cli, "benefits", "C-1001", "--json"],
            "loyalty rules check": [*cli, "rules", "check"],
        }
        for command in commands.values():  # warm-up: every module's bytecode cached
            run(command, env, work)
        runs: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
        for _ in range(args.repeat):
            for label, command in commands.items():
                runs[label].append(run(command, env, work))
    wall = {label: statistics.median(w for w, _ in values) for label, values in runs.items()}
    floor, typer_floor = wall["python -c pass (floor)"], wall["python -c 'import typer' (floor)"]
    print(f"{args.repeat} fresh processes each, round-robin; wall clock median (best), CPU median; "
          f"floors in the same run: python -c pass {floor:.3f} s, import typer {typer_floor:.3f} s")
    for label, values in runs.items():
        line = (f"  {label:<34} {wall[label]:6.3f} s ({min(w for w, _ in values):.3f})  "
                f"cpu {statistics.median(c for _, c in values):.3f} s  "
                f"{wall[label] / floor:5.1f}x pass  {wall[label] / typer_floor:4.1f}x typer")
        if label in GOALS:
            line += f"   goal < {GOALS[label]} s: {verdict(wall[label] < GOALS[label])}"
        print(line)


if __name__ == "__main__":
    main()
