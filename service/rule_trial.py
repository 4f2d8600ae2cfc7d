"""Rule files are untrusted: each one is parsed, compiled and exercised in a child process with limits first.

The engine's own static limits (YAML aliases and size, expression length and nesting, a runtime
budget per evaluation) refuse the hostile files we know of. This is the second line: whatever a file
does to the parser, the CEL compiler or the matching core (a crash in C or Rust code, a loop, an
allocation without end), it does it in a child process that has a CPU-time and a memory limit and is
killed when it outlives its wall-clock allowance. Only a file whose trial succeeded is loaded in the
process that serves, schedules or ingests.

The child is a fresh interpreter (`subprocess`, never a fork of a possibly multi-threaded server)
that imports what it needs, then sets its own limits (so imports do not count against them) and
runs one target: a function named "module:function" that takes (arguments, bytes) and returns a
JSON-ready dict. JSON, not pickle, comes back: a child that ran hostile input is not trusted to
send code. Verdicts are cached by file name and content digest, so a file is tried once per process.
"""
from __future__ import annotations

import faulthandler
import gc
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.errors import Problem, RuleFileError
from engine.loader import compile_source, read_source, rule_files, version_problems
from engine.programme import CompiledProgramme, ProgrammeSet

log = logging.getLogger("loyalty.rules")

# --- the limits (documented in README.md and rules/README.md) -------------------------------------------
# CPU time for one file once the child's imports are done. `rules check` of the 1,000-rule benchmark
# file takes about 0.6 s of CPU (bench/rule_check.py): 2 s leaves three times that, and a loop or a
# runaway expression is stopped within 2 s.
CPU_SECONDS = 2
# Address space the child may add to its baseline after imports (about 65 MiB of virtual memory with
# durable_rules, cel, pydantic and PyYAML loaded). The 1,000-rule file needs under 100 MiB more; an
# alias bomb needs gigabytes.
MEMORY_MIB = 256
# Wall clock for the whole child, start-up included, enforced by the parent (it kills the child): the
# start-up takes about 0.4 s of CPU, the file at most CPU_SECONDS; the rest is room for a loaded
# machine. A child blocked without using CPU is caught by this one.
WALL_SECONDS = 20.0
# Most children at once (a rules directory holds several versions; each is tried in its own child).
PARALLEL = max(1, min(4, os.cpu_count() or 1))
# What a child may write (its progress and its answer; a file's problems are well under this).
OUTPUT_BYTES = 32 * 1024 * 1024
# Verdicts kept per process: enough for every version in a rules directory and many edits of them.
CACHE_SIZE = 256

RULE_TARGET = "service.rule_trial:try_source"
_CHILD_CODE = "from service.rule_trial import child_main; child_main()"


class TrialRefused(Exception):
    """The child crashed, reached a limit, raised, or could not start: `reason` says which, for a person.

    `kind` is "limit" (CPU, memory or wall clock), "crash" (a signal), "error" (an exception in the
    target) or "start" (no child could be started: nothing is known about the input).
    """

    def __init__(self, reason: str, kind: str):
        self.reason, self.kind = reason, kind
        super().__init__(reason)


@dataclass(frozen=True)
class Limits:
    """The limits of one trial."""

    cpu_seconds: float = CPU_SECONDS
    memory_mib: int = MEMORY_MIB
    wall_seconds: float = WALL_SECONDS

    def describe(self) -> str:
        """'2 s / 256 MiB', as refusals quote them."""
        return f"{self.cpu_seconds:g} s / {self.memory_mib} MiB"


@dataclass(frozen=True)
class TriedVersion:
    """What a successful trial learned about a file: enough to compare versions and report them."""

    source: str
    id: str
    version: str
    effective_from: datetime
    tier_ids: list[str]
    rules: int


@dataclass(frozen=True)
class Verdict:
    """The outcome of trying one rule file: its problems (a refusal is one of them) and what it holds."""

    file: str
    digest: str
    problems: tuple[Problem, ...]
    version: TriedVersion | None  # None when the file does not load
    refused: bool  # the child crashed or reached a limit (or could not run)

    @property
    def ok(self) -> bool:
        """True when the file loads: the trial succeeded and found no error."""
        return not self.refused and not any(problem.is_error for problem in self.problems)

    @property
    def errors(self) -> list[Problem]:
        """The problems that keep the file from loading."""
        return [problem for problem in self.problems if problem.is_error]


_cache: OrderedDict[tuple[str, str, bool], Verdict] = OrderedDict()
_cache_lock = threading.Lock()  # a server's watchers (rules, scheduler) look from threads of their own


# --- trying rule files -----------------------------------------------------------------------------------

def try_rule_files(items: Sequence[tuple[str, bytes]], lint: bool = False, limits: Limits = Limits()) -> list[Verdict]:
    """Try each (file name, bytes) in a child of its own (several at once); a verdict per item, in order.

    With `lint`, the child also looks for warnings (what `loyalty rules check` shows).
    """
    keys = [(file, hashlib.sha256(data).hexdigest(), lint) for file, data in items]
    with _cache_lock:
        known = {key: _cache[key] for key in keys if key in _cache}
    wanted = {key: data for key, (_file, data) in zip(keys, items) if key not in known}
    requests = [Request(RULE_TARGET, {"file": key[0], "lint": lint}, data) for key, data in wanted.items()]
    for key, outcome in zip(wanted, run_isolated(requests, limits)):
        known[key] = _verdict(key, outcome, limits)
        if not (isinstance(outcome, TrialRefused) and outcome.kind == "start"):
            _remember(key, known[key])  # a child that could not start says nothing about the file: try again later
    return [known[key] for key in keys]


def require_tried(file: str, data: bytes) -> None:
    """Raise RuleFileError unless the bytes of `file` load in a child within the limits."""
    [verdict] = try_rule_files([(file, data)])
    if not verdict.ok:
        raise RuleFileError(list(verdict.errors))


def load_tried(path: Path) -> CompiledProgramme:
    """`engine.loader.load_programme`, after a trial: the bytes tried are the bytes compiled here."""
    data = read_source(path)
    require_tried(str(path), data)
    return compile_source(str(path), data)


def load_tried_programmes(location: Path) -> ProgrammeSet:
    """`engine.loader.load_programmes`, after a trial of every file (in parallel): raises listing every problem."""
    files = rule_files(location)
    if not files:
        raise RuleFileError([Problem(str(location), None, "", "no rule files (*.yaml) here")])
    items = [(str(path), read_source(path)) for path in files]
    verdicts = try_rule_files(items)
    problems = [problem for verdict in verdicts for problem in verdict.errors]
    if problems:
        raise RuleFileError(problems)
    loaded = [compile_source(file, data) for file, data in items]
    problems = list(version_problems(loaded))
    if problems:
        raise RuleFileError(problems)
    return ProgrammeSet(tuple(sorted(loaded, key=lambda p: p.effective_from)))


@dataclass(frozen=True)
class FileResult:
    """`rules check` of one file, done in a child: its errors and warnings, and its version when it loads."""

    file: str
    problems: list[Problem]
    version: TriedVersion | None


def check_location(location: Path) -> list[FileResult]:
    """`engine.loader.check_programmes`, each file checked in a child: nothing of a file runs in this process."""
    files = rule_files(location)
    if not files:
        return [FileResult(str(location), [Problem(str(location), None, "", "no rule files (*.yaml) here")], None)]
    items, unreadable = [], {}
    for path in files:
        try:
            items.append((str(path), read_source(path)))
        except RuleFileError as exc:
            unreadable[str(path)] = FileResult(str(path), list(exc.problems), None)
    tried = {v.file: FileResult(v.file, list(v.problems), v.version) for v in try_rule_files(items, lint=True)}
    results = [unreadable.get(str(path)) or tried[str(path)] for path in files]
    by_file = {result.file: result for result in results}
    for problem in version_problems([r.version for r in results if r.version is not None]):  # type: ignore[misc]
        by_file[problem.file].problems.append(problem)
    return results


def clear_cache() -> None:
    """Forget every verdict (tests)."""
    with _cache_lock:
        _cache.clear()


def _remember(key: tuple[str, str, bool], verdict: Verdict) -> None:
    with _cache_lock:
        _cache[key] = verdict
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def _verdict(key: tuple[str, str, bool], outcome: dict | TrialRefused, limits: Limits) -> Verdict:
    file, digest, _lint = key
    if isinstance(outcome, TrialRefused):
        log.info("rule file %s refused by its trial: %s", file, outcome.reason)
        message = (f"cannot be loaded ({outcome.reason})" if outcome.kind == "error" else
                   f"did not compile within {limits.describe()} ({outcome.reason})")
        return Verdict(file, digest, (Problem(file, None, "", message),), None, True)
    problems = tuple(Problem(**problem) for problem in outcome["problems"])
    version = outcome.get("version")
    tried = None if version is None else TriedVersion(
        file, version["id"], version["version"], datetime.fromisoformat(version["effective_from"]),
        list(version["tier_ids"]), version["rules"])
    return Verdict(file, digest, problems, tried, False)


# --- the child's target for rule files ------------------------------------------------------------------------

def try_source(arguments: dict, data: bytes) -> dict:
    """In the child: compile the bytes (with `lint`, check the file as `rules check` does); compiling tries
    every points expression on boundary events (engine/boundary_events.py), where a costly branch runs."""
    from engine.loader import check_programme

    file = arguments["file"]
    stage("while compiling")
    if arguments.get("lint"):
        check = check_programme(Path(file))  # reads the file again: `rules check` reports on what is on disk
        programme, problems = check.programme, list(check.problems)
    else:
        try:
            programme, problems = compile_source(file, data), []
        except RuleFileError as exc:
            programme, problems = None, list(exc.problems)
    version = None if programme is None else {
        "id": programme.id, "version": programme.version, "effective_from": programme.effective_from.isoformat(),
        "tier_ids": programme.tier_ids, "rules": len(programme.rules)}
    return {"problems": [problem.as_dict() for problem in problems], "version": version}


# --- running a target in a child -----------------------------------------------------------------------------

_NOT_STARTED = "the trial process could not start"
START_METHODS = ("auto", "fork", "spawn")


@dataclass(frozen=True)
class Request:
    """One target to run in a child: "module:function", its JSON arguments and its bytes."""

    target: str
    arguments: dict
    data: bytes = b""


def start_method() -> str:
    """'fork' for a process with one thread (a CLI command: the child starts at once, with every module
    already imported), 'spawn' otherwise (a server: forking a process with other threads could copy a
    lock one of them holds, so a fresh interpreter is started)."""
    try:
        return "fork" if len(os.listdir("/proc/self/task")) == 1 else "spawn"  # every thread, native ones too
    except OSError:
        return "spawn"


def run_isolated(requests: Sequence[Request], limits: Limits = Limits(), method: str = "auto") -> list[dict | TrialRefused]:
    """Run each request in a child process of its own under `limits`, at most PARALLEL at once.

    Each answer is the target's dict, or a TrialRefused saying how the child ended: a signal (a
    crash), the CPU or memory limit, the wall-clock limit (the parent kills it), an exception.
    """
    if method not in START_METHODS:
        raise ValueError(f"method must be one of {', '.join(START_METHODS)}, not {method!r}")
    chosen = start_method() if method == "auto" else method
    outcomes: list[dict | TrialRefused] = []
    for first in range(0, len(requests), PARALLEL):
        children = [_Child(request, limits, chosen) for request in requests[first:first + PARALLEL]]
        outcomes.extend(child.finish() for child in children)
    return outcomes


class _Child:
    """One child process (forked or spawned), its output files and its wall-clock deadline."""

    def __init__(self, request: Request, limits: Limits, method: str):
        self.limits = limits
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None
        self.failure: str | None = None
        # Files, not pipes: nothing the child writes can block it or fill the parent's memory.
        self.output, self.errors = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        try:
            if method == "fork":
                self._fork(request)
            else:
                self._spawn(request)
        except OSError as exc:
            self.failure = f"{_NOT_STARTED}: {exc.strerror or exc}"
        self.deadline = time.monotonic() + limits.wall_seconds

    def _spawn(self, request: Request) -> None:
        header = {"target": request.target, "arguments": request.arguments, "cpu_seconds": self.limits.cpu_seconds,
                  "memory_mib": self.limits.memory_mib}
        with tempfile.TemporaryFile() as source:
            source.write(json.dumps(header).encode() + b"\n" + request.data)
            source.seek(0)
            # The child sees modules as this process does (the project may run from a checkout).
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}
            self.process = subprocess.Popen([sys.executable, "-P", "-c", _CHILD_CODE], stdin=source,
                                            stdout=self.output, stderr=self.errors, env=env, close_fds=True)

    def _fork(self, request: Request) -> None:
        pid = os.fork()
        if pid:
            self.pid = pid
            return
        try:  # the child: it never returns into the parent's code
            # The parent's objects are not the child's garbage: collections that walked them would touch
            # (and so copy) every page the child shares with the parent.
            gc.freeze()
            faulthandler.disable()  # the parent reports a crash; a dump would go to the parent's terminal
            os.dup2(self.errors.fileno(), 1)
            os.dup2(self.errors.fileno(), 2)
            _serve(_resolve(request.target), request.arguments, request.data, self.output.fileno(),
                   self.limits.cpu_seconds, self.limits.memory_mib)
        finally:
            os._exit(70)

    def finish(self) -> dict | TrialRefused:
        """Wait for the child until its deadline (then kill it) and read its answer."""
        try:
            if self.failure is not None:
                return TrialRefused(self.failure, "start")
            code = self._wait()
            if code is None:
                return TrialRefused(f"stopped after {self.limits.wall_seconds:g} s of wall-clock time "
                                    f"{self._stage(self._lines())}", "limit")
            return self._outcome(code)
        finally:
            self.output.close()
            self.errors.close()

    def _wait(self) -> int | None:
        """The child's exit code (-N for signal N), or None once it was killed at the deadline."""
        if self.process is not None:
            try:
                return self.process.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        assert self.pid is not None
        pause = 0.001
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= self.deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def _outcome(self, code: int) -> dict | TrialRefused:
        lines = self._lines()
        where = self._stage(lines)
        if code < 0:
            if -code == signal.SIGXCPU:
                return TrialRefused(f"reached the CPU-time limit {where}", "limit")
            return TrialRefused(f"killed by {_signal_name(-code)} {where}", "crash")
        answer = next((line[7:] for line in reversed(lines) if line.startswith("answer ")), None)
        if code != 0 or answer is None:
            self._log_errors()
            return TrialRefused(f"the trial process ended with status {code} {where}", "crash")
        try:
            outcome = json.loads(answer)
        except ValueError:
            return TrialRefused("the trial process gave an answer that is not JSON", "crash")
        if outcome.get("outcome") == "memory":
            return TrialRefused(f"reached the memory limit {where}", "limit")
        if outcome.get("outcome") == "error":
            return TrialRefused(f"{outcome.get('message')} ({where})", "error")
        if not isinstance(outcome.get("result"), dict):
            return TrialRefused("the trial process gave no result", "crash")
        return outcome["result"]

    def _lines(self) -> list[str]:
        self.output.seek(0)
        return self.output.read(OUTPUT_BYTES).decode("utf-8", "replace").splitlines()

    @staticmethod
    def _stage(lines: list[str]) -> str:
        return next((line[6:] for line in reversed(lines) if line.startswith("stage ")), "while starting")

    def _log_errors(self) -> None:
        self.errors.seek(0, os.SEEK_END)
        self.errors.seek(max(0, self.errors.tell() - 4000))
        tail = self.errors.read().decode("utf-8", "replace").strip()
        if tail:
            log.error("rule trial process failed; the end of what it wrote:\n%s", tail)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _resolve(target: str):  # noqa: ANN202 - any function of (dict, bytes) -> dict
    import importlib

    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


# --- the child's side -----------------------------------------------------------------------------------------

_answer_fd: int | None = None


def stage(text: str) -> None:
    """In a child: note what it does now, so a refusal can say where the file stopped it."""
    if _answer_fd is not None:
        _write_all(_answer_fd, f"stage {text}\n".encode())


def child_main() -> None:
    """Entry of a spawned child: read the request from stdin, import the target, then serve it."""
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the target prints goes to the error file, not into the answer
    header_line, _, data = sys.stdin.buffer.read().partition(b"\n")
    header = json.loads(header_line)
    target = _resolve(header["target"])  # imported before the limits: the trial pays only for the file
    _serve(target, header["arguments"], data, answer_fd, header["cpu_seconds"], header["memory_mib"])


def _serve(target, arguments: dict, data: bytes, answer_fd: int, cpu_seconds: float,  # noqa: ANN001
           memory_mib: int) -> None:
    """Set this child's limits from what it uses now, run the target, write its answer and exit."""
    global _answer_fd
    import resource

    _answer_fd = answer_fd
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(used.ru_utime + used.ru_stime + cpu_seconds)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit, SIGKILL a second on
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + memory_mib * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_BYTES,) * 2)
    try:
        answer = {"outcome": "ok", "result": target(arguments, data)}
    except MemoryError:
        answer = {"outcome": "memory"}
    except Exception as exc:  # noqa: BLE001 - the parent turns it into a refusal that names the file
        answer = {"outcome": "error", "message": f"{type(exc).__name__}: {exc}"[:2000]}
    try:
        text = json.dumps(answer)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"outcome": "error", "message": f"the target's answer is not JSON ({exc})"})
    _write_all(answer_fd, f"answer {text}\n".encode())
    os._exit(0)  # no interpreter teardown: nothing the file built is destroyed (or crashes) on the way out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _address_space() -> int:
    """This process's virtual memory size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
