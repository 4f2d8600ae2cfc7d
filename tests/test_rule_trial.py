"""Rule files are tried in a child process with limits before any process accepts them (service/rule_trial.py).

The mechanism (service/isolation.py) is tested with child targets that crash, spin, allocate, raise
and block, under both ways of starting a child; then hostile rule files go through the commands and into the rules
directory of a running `loyalty serve`, which must keep answering with the last good rules.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from engine.errors import RuleFileError
from engine.loader import check_source, compile_source, load_programme, version_problems
from service import isolation, rule_trial, rules_watcher
from service.isolation import Limits, Request, TrialRefused, run_isolated
from service.rule_trial import try_rule_files
from service.rules_watcher import RulesWatcher
from tests.api_support import running_server
from tests.conftest import RULES, SAMPLE, cli_json, event, run_cli

SHIPPED = (RULES / "corporate_lending.yaml").read_text(encoding="utf-8")
HERE = "tests.test_rule_trial"
SMALL = Limits(cpu_seconds=1, memory_mib=64, wall_seconds=30)
ROOT = Path(__file__).resolve().parent.parent


# --- child targets: importable functions of (arguments, bytes) -> dict -------------------------------------

def echo(arguments: dict, data: bytes) -> dict:
    """Answer with what it was given, and where it ran."""
    return {"arguments": arguments, "length": len(data), "pid": os.getpid()}


def segfault(arguments: dict, data: bytes) -> dict:
    """Crash as a C extension would."""
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def spin(arguments: dict, data: bytes) -> dict:
    """Loop for ever."""
    while True:
        pass


def allocate(arguments: dict, data: bytes) -> dict:
    """Allocate without bound."""
    chunks = []
    while True:
        chunks.append(bytearray(8 * 2**20))


def raise_error(arguments: dict, data: bytes) -> dict:
    """Fail with an ordinary exception."""
    raise ValueError("the target failed on purpose")


def block(arguments: dict, data: bytes) -> dict:
    """Wait without using CPU: only the wall-clock limit ends it."""
    time.sleep(3600)
    return {}


def fail_loudly(arguments: dict, data: bytes) -> dict:
    """Print a traceback and exit with a status, as an interpreter that failed at its end would."""
    os.write(2, b"Traceback (most recent call last):\n  ...\nRecursionError: maximum recursion depth exceeded\n")
    os._exit(3)


# --- the mechanism --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_each_way_a_child_can_end_becomes_a_clear_refusal_and_the_parent_goes_on(method):
    requests = [Request(f"{HERE}:{name}", {"n": number}, b"rule file bytes", "while crashing on purpose")
                for number, name in enumerate(["segfault", "spin", "allocate", "raise_error", "echo"])]
    segv, spun, allocated, raised, echoed = run_isolated(requests, SMALL, method)

    assert isinstance(segv, TrialRefused) and segv.kind == "crash" and not segv.transient
    assert segv.reason == "killed by SIGSEGV while crashing on purpose"
    assert isinstance(spun, TrialRefused) and spun.kind == "cpu" and "CPU-time limit" in spun.reason
    assert isinstance(allocated, TrialRefused) and allocated.kind == "memory" and "memory limit" in allocated.reason
    assert isinstance(raised, TrialRefused) and raised.kind == "error"
    assert "ValueError: the target failed on purpose" in raised.reason
    # The answers are not mixed up, and the target ran in another process.
    assert echoed == {"arguments": {"n": 4}, "length": len(b"rule file bytes"), "pid": echoed["pid"]}
    assert echoed["pid"] != os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_that_blocks_is_killed_at_the_wall_clock_limit(method):
    [blocked] = run_isolated([Request(f"{HERE}:block", {})], Limits(1, 64, wall_seconds=3), method)
    assert isinstance(blocked, TrialRefused) and blocked.kind == "wall" and blocked.transient
    assert blocked.reason.startswith("stopped after 3 s of wall-clock time")
    [answer] = run_isolated([Request(f"{HERE}:echo", {})], SMALL, method)  # nothing is left behind
    assert answer["length"] == 0


def test_a_failing_child_is_summed_up_in_one_line_and_nothing_reaches_the_log_above_debug(caplog):
    caplog.set_level("DEBUG")
    [failed] = run_isolated([Request(f"{HERE}:fail_loudly", {}, b"", "while compiling")], SMALL, "fork")
    assert isinstance(failed, TrialRefused) and failed.kind == "crash"
    assert failed.reason == ("the trial process ended with status 3 while compiling "
                             "(RecursionError: maximum recursion depth exceeded)")
    # A command has no log handler: a record at info or above would reach the person as a traceback.
    assert [record.levelname for record in caplog.records if "Traceback" in record.getMessage()] == ["DEBUG"]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_no_child_outlives_an_interrupted_run(method):
    def interrupt(*_):
        raise KeyboardInterrupt

    def children() -> list[str]:
        return Path(f"/proc/self/task/{threading.get_native_id()}/children").read_text().split()

    # Other tests in this process may have left a child that lives as long as it does (multiprocessing's
    # resource tracker, started by any spawn): only this run's children must be gone.
    before = children()
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_isolated([Request(f"{HERE}:block", {})] * 2, Limits(1, 64, wall_seconds=60), method)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert children() == before  # killed and waited for: not running, and no zombie either


def test_a_child_keeps_within_hard_limits_it_inherited():
    # `ulimit -Hv` and a hard CPU limit below what the trial would ask for: the trial asks for less
    # instead of failing every file as a crash.
    script = f"""
import resource
from service.isolation import Limits, Request, _address_space, run_isolated
room = _address_space() + 200 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (room, room))
used = resource.getrusage(resource.RUSAGE_SELF)
cpu = int(used.ru_utime + used.ru_stime) + 3
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
for method in ("fork", "spawn"):
    [answer] = run_isolated([Request("{HERE}:echo", {{}}, b"abc")], Limits(2, 256, 60), method)
    print(method, answer["length"] if isinstance(answer, dict) else answer.reason)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.split() == ["fork", "3", "spawn", "3"], result


def test_a_child_that_could_not_start_or_finish_in_time_is_not_a_verdict_on_the_file():
    rule_trial.clear_cache()
    good = RULES / "corporate_lending.yaml"
    [late] = try_rule_files([(str(good), good.read_bytes())], limits=Limits(2, 256, wall_seconds=0))
    assert late.refused and late.transient
    [problem] = late.errors
    assert problem.file == str(good) and problem.message.startswith("did not compile within 0 s of wall-clock time")
    [tried] = try_rule_files([(str(good), good.read_bytes())])
    assert tried.ok  # tried again, not answered from the cache


def cannot_start(*_args, **_kwargs):
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def test_a_watcher_tries_a_file_again_when_its_trial_could_not_start(tmp_path, monkeypatch):
    monkeypatch.setattr(rules_watcher, "RETRY_SECONDS", 0.0)
    folder = tmp_path / "rules"
    folder.mkdir()
    shutil.copy(RULES / "corporate_lending.yaml", folder)
    watcher = RulesWatcher(folder, settle=0)
    newer = SHIPPED.replace('version: "2026.1"', 'version: "2031.1"').replace(
        "effective_from: 2025-01-01T00:00:00Z", "effective_from: 2031-01-01T00:00:00Z")
    (folder / "next.yaml").write_text(newer)
    with monkeypatch.context() as busy:  # no process can be started: EAGAIN, as under a process limit
        busy.setattr(isolation.os, "fork", cannot_start)
        busy.setattr(isolation.subprocess, "Popen", cannot_start)
        assert watcher.refresh()
    [problem] = watcher.status().problems
    assert problem.file == str(folder / "next.yaml") and problem.message.startswith("could not be tried")
    assert watcher.status().installed == ("2026.1",)
    assert watcher.refresh()  # the files did not change, but their trial said nothing: it is tried again
    assert watcher.status().installed == ("2026.1", "2031.1") and watcher.status().problems == ()


def test_a_server_with_threads_spawns_and_a_single_threaded_command_forks():
    assert isolation.start_method() == ("fork" if len(os.listdir("/proc/self/task")) == 1 else "spawn")
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        assert isolation.start_method() == "spawn"
    finally:
        stop.set()
        helper.join()


# --- rule files -----------------------------------------------------------------------------------------------

def crashing_source() -> str:
    """The shipped file with a points expression of 20,000 terms (it made the CEL evaluator overflow its stack)."""
    return SHIPPED.replace("points: event.amount / 10000", 'points: "1' + "+1" * 20_000 + '"', 1)


def spinning_source() -> str:
    """A points expression of nine nested comprehensions (10^9 steps) behind a condition on a large amount."""
    nested = "[0,1,2,3,4,5,6,7,8,9].all(a, " * 9 + "true" + ")" * 9
    return SHIPPED.replace("points: event.amount / 10000",
                           f'points: "event.amount > 900000000 ? ({nested} ? 1 : 0) : 1"', 1)


def alias_bomb() -> str:
    """A billion laughs: nine levels of nine aliases each, before a valid programme."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n" + SHIPPED


def test_a_rule_file_loads_only_when_its_trial_succeeds_and_problems_are_those_of_the_loader(tmp_path):
    rule_trial.clear_cache()
    good = RULES / "corporate_lending.yaml"
    [verdict] = try_rule_files([(str(good), good.read_bytes())])
    loaded = load_programme(good)
    assert verdict.ok and verdict.version is not None
    assert (verdict.version.id, verdict.version.version, verdict.version.rules) == (loaded.id, loaded.version,
                                                                                    len(loaded.rules))
    assert try_rule_files([(str(good), good.read_bytes())])[0] is verdict  # one trial per content

    broken = SHIPPED.replace("loan_products:", "loan_prodcts:").encode()
    with pytest.raises(RuleFileError) as in_process:
        compile_source("broken.yaml", broken)
    [tried] = try_rule_files([("broken.yaml", broken)])
    assert not tried.ok and not tried.refused
    assert tried.errors == in_process.value.problems  # file, line, column, path and message alike

    [crashed] = try_rule_files([("crash.yaml", crashing_source().encode())])
    assert not crashed.ok and all(problem.file == "crash.yaml" for problem in crashed.errors)


def test_rules_check_in_a_child_reports_exactly_what_the_loader_reports(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "a.yaml").write_text(SHIPPED.replace("id: gold", "id: Gold"))  # errors
    (folder / "b.yaml").write_text(SHIPPED.replace("use: single, valid_for_days: 180}", "use: standing}", 1))  # a warning
    (folder / "c.yaml").write_text(SHIPPED.replace('version: "2026.1"', 'version: "2027.1"'))  # clashes with b
    expected = [check_source(str(path), path.read_bytes()) for path in sorted(folder.iterdir())]
    clash = list(version_problems([check.programme for check in expected if check.programme]))
    assert clash and {problem.file for problem in clash} == {str(folder / "c.yaml")}
    got = rule_trial.check_location(folder)
    assert [c.file for c in got] == [c.file for c in expected]
    assert [c.problems for c in got] == [c.problems + [p for p in clash if p.file == c.file] for c in expected]
    assert any(problem.severity == "warning" for check in got for problem in check.problems)


def test_a_watcher_refuses_a_crashing_file_and_keeps_the_last_good_rules(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    shutil.copy(RULES / "corporate_lending.yaml", folder)
    watcher = RulesWatcher(folder, settle=0)
    good = watcher.current()
    (folder / "zz-crash.yaml").write_text(crashing_source())
    assert watcher.refresh()  # this process would have died compiling it here
    assert watcher.current() is good
    [problem] = watcher.status().problems
    assert problem.file == str(folder / "zz-crash.yaml")


# --- the commands -----------------------------------------------------------------------------------------------

def hostile_files(folder: Path) -> list[Path]:
    """The crashing, the spinning and the alias-bomb rule files, written in `folder`."""
    folder.mkdir(exist_ok=True)
    files = []
    for name, text in (("crash.yaml", crashing_source()), ("spin.yaml", spinning_source()),
                       ("bomb.yaml", alias_bomb())):
        (folder / name).write_text(text)
        files.append(folder / name)
    return files


def test_rules_check_refuses_hostile_files_each_with_its_name_and_no_traceback(tmp_path):
    files = hostile_files(tmp_path / "drafts")
    result = run_cli("rules", "check", *map(str, files))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stdout + result.stderr
    for path in files:
        assert f"{path}: does not load" in result.stdout
    report = cli_json("rules", "check", *map(str, files), expect_code=1)
    assert report["valid"] is False and report["errors"] >= 3
    for path, outcome in zip(files, report["results"]):
        assert outcome["versions"] == [] and {p["file"] for p in outcome["problems"]} == {str(path)}


def test_rules_activate_refuses_a_crashing_file_and_installs_nothing(tmp_path, db_url):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shutil.copy(RULES / "corporate_lending.yaml", rules_dir)
    assert run_cli("init", db_url=db_url).returncode == 0
    [crash, _spin, bomb] = hostile_files(tmp_path / "drafts")
    for path in (crash, bomb):
        result = run_cli("rules", "activate", str(path), db_url=db_url, rules=rules_dir)
        assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result
        assert str(path) in result.stdout
        answer = cli_json("rules", "activate", str(path), expect_code=1, db_url=db_url, rules=rules_dir)
        assert answer["activated"] is False and any(line.startswith(f"{path}:") for line in answer["details"])
        assert not (rules_dir / path.name).exists()
    # A hostile file saved by hand into the rules directory refuses the activation of a good one.
    (rules_dir / "zz-crash.yaml").write_text(crashing_source())
    good = tmp_path / "drafts" / "corporate_lending-2031.1.yaml"
    good.write_text(SHIPPED.replace('version: "2026.1"', 'version: "2031.1"')
                    .replace("effective_from: 2025-01-01T00:00:00Z", "effective_from: 2031-01-01T00:00:00Z"))
    answer = cli_json("rules", "activate", str(good), expect_code=1, db_url=db_url, rules=rules_dir)
    assert any(line.startswith(f"{rules_dir / 'zz-crash.yaml'}:") for line in answer["details"]), answer


def test_rules_test_and_simulate_refuse_a_crashing_file_with_exit_2(tmp_path):
    [crash, *_] = hostile_files(tmp_path / "drafts")
    tested = run_cli("rules", "test", "--programme", str(crash))
    assert tested.returncode == 2 and str(crash) in tested.stdout + tested.stderr, tested
    simulated = run_cli("simulate", str(crash), "--events", str(SAMPLE), "--json")
    assert simulated.returncode == 2 and str(crash) in simulated.stdout + simulated.stderr, simulated
    for result in (tested, simulated):
        assert "Traceback" not in result.stdout + result.stderr


# --- a running server ---------------------------------------------------------------------------------------------

def test_hostile_files_dropped_into_a_running_server_are_refused_while_it_keeps_answering(tmp_path, db_url):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shutil.copy(RULES / "corporate_lending.yaml", rules_dir)
    assert run_cli("init", db_url=db_url).returncode == 0
    key = cli_json("apikey", "create", "--name", "feed", "--scope", "admin", db_url=db_url)["key"]
    log = tmp_path / "server.log"
    with running_server(db_url, log, "--reload-seconds", "0.2", rules=rules_dir) as base:
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        drawn = event("E-draw", "C-1", "loan.drawn", "2026-03-01T10:00:00Z", loan_id="L-1",
                      product="working_capital", amount="60000000.00", currency="CNY", term_months=12)
        assert client.post("/v1/events", json=drawn).status_code == 200
        benefits = {"product": "working_capital", "at": "2026-03-02T00:00:00Z"}
        before = client.get("/v1/clients/C-1/benefits", params=benefits).json()

        answers, stop = [], threading.Event()

        def poll() -> None:  # a loan system asking all along
            while not stop.is_set():
                answers.append(client.get("/healthz").status_code)
                answers.append(client.get("/v1/clients/C-1/benefits").status_code)
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            (rules_dir / "zz-crash.yaml").write_text(crashing_source())
            (rules_dir / "zz-bomb.yaml").write_text(alias_bomb())
            wanted = {str(rules_dir / "zz-crash.yaml"), str(rules_dir / "zz-bomb.yaml")}
            for _ in range(600):  # each file settles for a second, then its trial takes a few
                health = client.get("/healthz").json()
                if {problem["file"] for problem in health["rules"]["refused"]} == wanted:
                    break
                time.sleep(0.1)
        finally:
            stop.set()
            poller.join()
        assert {problem["file"] for problem in health["rules"]["refused"]} == wanted, health
        assert all(problem["message"] for problem in health["rules"]["refused"])
        assert health["status"] == "ok" and health["rules"]["versions"] == ["2026.1"]
        assert answers and set(answers) == {200}, sorted(set(answers))
        after = client.get("/v1/clients/C-1/benefits", params=benefits)
        assert after.status_code == 200 and after.json() == before
        assert client.post("/v1/events", json=event("E-ref", "C-1", "referral.converted", "2026-03-02T10:00:00Z",
                                                    referred_client_id="C-77")).status_code == 200
    assert "Traceback" not in log.read_text()
    print(f"\nserver answered {len(answers)} requests while refusing: "
          f"{json.dumps([p['message'] for p in health['rules']['refused']])}")
