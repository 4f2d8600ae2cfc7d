"""The package as a bank installs it: a wheel built from this checkout, installed (not editable) into a fresh
virtual environment and run from a directory that is not the checkout. The shipped programme, its tests and
the sample events must come from the wheel, not from the checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from service.version import package_version
from tests.api_support import free_port
from tests.conftest import ROOT

# What a wheel is built from: the pyproject, the README it names, and the packages it lists.
SOURCES = ("pyproject.toml", "README.md", "engine", "rewards", "storage", "service", "brokers", "api", "cli", "demo",
           "rules", "examples")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env,
                            timeout=timeout)
    assert result.returncode == 0, (command, result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(the venv's bin folder, the environment to run it with, a working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("release")
    source = tmp / "source"  # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp / "wheels"
    # As `pip install .` does: the build backend pyproject.toml names, in an isolated build environment.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source.resolve(),
         cwd=tmp, timeout=180)
    wheel = next(wheels.glob("loyalty_engine-*.whl"))

    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=tmp).stdout.strip())
    # The dependencies are the ones this environment installed; a plain path entry adds them without running
    # this environment's .pth files, so the editable install of the checkout stays invisible.
    (purelib / "_loyalty_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel,
         cwd=tmp, timeout=180)

    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOYALTY_", "PYTHON", "VIRTUAL_ENV"))}
    env["COLUMNS"] = "200"
    return bin_dir, env, work


def test_the_wheel_not_the_checkout_is_what_runs(installed):
    bin_dir, env, work = installed
    where = _run(bin_dir / "python", "-c",
                 "import engine, rules, examples; print(engine.__file__); print(rules.shipped_rules_dir()); "
                 "print(examples.sample_events())", cwd=work, env=env).stdout.split()
    for path in where:
        assert not Path(path).resolve().is_relative_to(ROOT), f"{path} comes from the checkout"
        assert Path(path).exists(), path
    rules_dir = Path(where[1])
    assert {"corporate_lending.yaml", "schema.json", "README.md"} <= {p.name for p in rules_dir.iterdir()}
    assert {"schema.json", "README.md"} <= {p.name for p in (rules_dir / "tests").iterdir()}
    assert list((rules_dir / "tests").glob("*.yaml"))


def test_version_is_the_one_in_pyproject(installed):
    bin_dir, env, work = installed
    assert _run(bin_dir / "loyalty", "--version", cwd=work, env=env).stdout.strip() == \
        f"loyalty-engine {PROJECT['version']}"
    assert package_version() == PROJECT["version"]  # the development install says the same


def test_shipped_programme_checks_tests_and_ingests_the_shipped_sample(installed):
    bin_dir, env, work = installed
    loyalty = bin_dir / "loyalty"
    env = {**env, "LOYALTY_DATABASE_URL": f"sqlite:///{work / 'release.db'}"}
    _run(loyalty, "rules", "check", cwd=work, env=env)
    _run(loyalty, "rules", "test", cwd=work, env=env)
    _run(loyalty, "init", cwd=work, env=env)
    sample = _run(bin_dir / "python", "-c", "import examples; print(examples.sample_events())",
                  cwd=work, env=env).stdout.strip()
    ingested = _run(loyalty, "ingest", sample, cwd=work, env=env).stdout
    assert "applied" in ingested


def test_a_missing_rules_directory_says_to_point_loyalty_rules_at_the_banks_rules(installed):
    bin_dir, env, work = installed
    env = {**env, "LOYALTY_RULES": str(work / "no-such-rules"), "LOYALTY_DATABASE_URL": f"sqlite:///{work / 'r.db'}"}
    _run(bin_dir / "loyalty", "init", cwd=work, env=env)
    result = subprocess.run([str(bin_dir / "loyalty"), "benefits", "C-1", "--product", "working_capital"],
                            capture_output=True, text=True, cwd=work, env=env, timeout=60)
    assert result.returncode != 0
    said = " ".join((result.stdout + result.stderr).split())
    assert "LOYALTY_RULES at the bank's rules directory" in said and "pip install -e" not in said


def test_demo_and_serve_run_from_the_wheel(installed):
    bin_dir, env, work = installed
    env = {**env, "LOYALTY_DATABASE_URL": f"sqlite:///{work / 'demo.db'}"}
    demo = _run(bin_dir / "loyalty", "demo", "--clients", "20", "--months", "3", "--json", cwd=work, env=env,
                timeout=300)
    assert '"applied"' in demo.stdout
    port = free_port()
    with (work / "serve.log").open("w") as log:
        server = subprocess.Popen([str(bin_dir / "loyalty"), "serve", "--port", str(port)], cwd=work, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(400):
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, (work / "serve.log").read_text()
                time.sleep(0.05)
        else:
            pytest.fail(f"the installed server did not start: {(work / 'serve.log').read_text()}")
        assert health.status_code == 200 and health.json()["version"] == PROJECT["version"]
    finally:
        server.terminate()
        server.wait(timeout=10)
