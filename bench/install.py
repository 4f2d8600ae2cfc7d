"""Install and first run as a bank's platform team meets them: the wheel built from this checkout, installed
with its dependencies into a fresh virtual environment, then `loyalty demo` run from an empty directory.

    python bench/install.py [--clients 300] [--months 18]

Prints, in one run: the wheel build; `pip install` of the wheel with all its dependencies into a fresh venv,
beside its floor (the same dependencies alone into another fresh venv); `loyalty --version` (start-up);
and `loyalty demo`. Uses pip's cache as a second install on the machine would (the first download depends
on the network, not on us).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "engine", "rewards", "storage", "service", "api", "cli", "demo",
           "rules", "examples")


def timed(*command: str | Path, cwd: Path, env: dict | None = None) -> float:
    """Seconds `command` took; exits with its output if it failed."""
    began = time.perf_counter()
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--months", type=int, default=18)
    args = parser.parse_args()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    with tempfile.TemporaryDirectory(prefix="loyalty-install-") as name:
        tmp = Path(name)
        source = tmp / "source"
        source.mkdir()
        for item in SOURCES:
            if (ROOT / item).is_dir():
                shutil.copytree(ROOT / item, source / item, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / item, source / item)
        build = timed(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "wheels", source, cwd=tmp)
        wheel = next((tmp / "wheels").glob("*.whl"))

        floor_venv, venv = tmp / "floor", tmp / "venv"
        floor = timed(sys.executable, "-m", "venv", floor_venv, cwd=tmp)
        floor += timed(floor_venv / "bin" / "pip", "install", "-q", *dependencies, cwd=tmp)
        install = timed(sys.executable, "-m", "venv", venv, cwd=tmp)
        install += timed(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp)

        work = tmp / "work"
        work.mkdir()
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp)}
        start_up = timed(venv / "bin" / "loyalty", "--version", cwd=work, env=env)
        demo = timed(venv / "bin" / "loyalty", "demo", "--clients", str(args.clients), "--months",
                     str(args.months), "--json", cwd=work, env=env)

    print(f"wheel build (pip wheel --no-deps)          {build:7.1f} s")
    print(f"fresh venv + pip install <wheel> with deps {install:7.1f} s   floor: the dependencies alone "
          f"{floor:.1f} s ({install / floor:.2f}x)")
    print(f"loyalty --version (start-up)               {start_up:7.2f} s")
    print(f"loyalty demo --clients {args.clients} --months {args.months}      {demo:7.1f} s")
    print(f"install + demo                             {install + demo:7.1f} s")


if __name__ == "__main__":
    main()
