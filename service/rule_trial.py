"""Rule files are untrusted: each one is parsed and compiled in a child process with limits first.

The engine's own static limits (YAML nodes and size, expression length and nesting, a runtime
budget per evaluation) refuse the hostile files we know of. This is the second line: whatever a file
does to the parser, the CEL compiler or the matching core, it does it in a child process
(service/isolation.py) with a CPU-time and a memory limit, killed when it outlives its wall-clock
allowance. Only a file whose trial succeeded is loaded in the process that serves, schedules or
ingests. Verdicts are cached by file name and content digest, so a file is tried once per process;
a trial that could not start or ran out of wall-clock time says nothing certain about the file and
is not cached.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.errors import Problem, RuleFileError
from engine.loader import check_source, compile_source, load_sources, read_source, read_sources, rule_files, \
    version_problems
from engine.programme import CompiledProgramme, ProgrammeSet
from service.isolation import Limits, Request, TrialRefused, run_isolated

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
RULE_LIMITS = Limits(CPU_SECONDS, MEMORY_MIB, WALL_SECONDS)
# Verdicts kept per process: enough for every version in a rules directory and many edits of them.
CACHE_SIZE = 256

RULE_TARGET = "service.rule_trial:try_source"


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
    transient: bool = False  # refused for a reason that may be the machine's: try the file again later

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

def try_rule_files(items: Sequence[tuple[str, bytes]], lint: bool = False,
                   limits: Limits = RULE_LIMITS) -> list[Verdict]:
    """Try each (file name, bytes) in a child of its own (several at once); a verdict per item, in order.

    With `lint`, the child also looks for warnings (what `loyalty rules check` shows).
    """
    keys = [(file, hashlib.sha256(data).hexdigest(), lint) for file, data in items]
    with _cache_lock:
        known = {key: _cache[key] for key in keys if key in _cache}
    wanted = {key: data for key, (_file, data) in zip(keys, items) if key not in known}
    requests = [Request(RULE_TARGET, {"file": key[0], "lint": lint}, data, "while compiling")
                for key, data in wanted.items()]
    for key, outcome in zip(wanted, run_isolated(requests, limits)):
        known[key] = _verdict(key, outcome, limits)
        if not known[key].transient:  # a trial that could not start or run in time says nothing sure of the file
            _remember(key, known[key])
    return [known[key] for key in keys]


def require_tried(file: str, data: bytes) -> None:
    """Raise RuleFileError unless the bytes of `file` load in a child within the limits."""
    _require_all_tried([(file, data)])


def load_tried(path: Path) -> CompiledProgramme:
    """`engine.loader.load_programme`, after a trial: the bytes tried are the bytes compiled here."""
    data = read_source(path)
    require_tried(str(path), data)
    return compile_source(str(path), data)


def load_tried_programmes(location: Path) -> ProgrammeSet:
    """`engine.loader.load_programmes`, after a trial of every file (in parallel): raises listing every problem."""
    sources = read_sources(location)
    _require_all_tried(sources)
    return load_sources(sources)


def _require_all_tried(sources: Sequence[tuple[str, bytes]]) -> None:
    problems = [problem for verdict in try_rule_files(sources) for problem in verdict.errors]
    if problems:
        raise RuleFileError(problems)


@dataclass(frozen=True)
class FileResult:
    """`rules check` of one file, done in a child: its errors and warnings, and its version when it loads."""

    file: str
    problems: list[Problem]
    version: TriedVersion | None


def check_location(location: Path) -> list[FileResult]:
    """Check and lint every rule file at `location`, each in a child: nothing of a file runs in this process.

    Problems between versions go to the file they name."""
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
        message = _refusal(outcome, limits)
        return Verdict(file, digest, (Problem(file, None, "", message),), None, True, outcome.transient)
    problems = tuple(Problem(**problem) for problem in outcome["problems"])
    version = outcome.get("version")
    tried = None if version is None else TriedVersion(
        file, version["id"], version["version"], datetime.fromisoformat(version["effective_from"]),
        list(version["tier_ids"]), version["rules"])
    return Verdict(file, digest, problems, tried, False)


def _refusal(refused: TrialRefused, limits: Limits) -> str:
    """What a refusal means for the file, by the way its trial ended (the file's name goes before it)."""
    reason = refused.reason
    if refused.kind == "error":
        return f"cannot be loaded ({reason})"
    if refused.kind == "cpu":
        return f"did not compile within the limit of {limits.cpu_seconds:g} s of CPU time ({reason})"
    if refused.kind == "memory":
        return f"did not compile within the limit of {limits.memory_mib} MiB of memory ({reason})"
    if refused.kind == "wall":
        return (f"did not compile within {limits.wall_seconds:g} s of wall-clock time ({reason}); the machine may "
                "be overloaded: the file is tried again later")
    if refused.kind == "start":
        return f"could not be tried ({reason}); nothing is known about the file yet: it is tried again later"
    return f"crashed the process that compiled it ({reason})"


# --- the child's target for rule files ------------------------------------------------------------------------

def try_source(arguments: dict, data: bytes) -> dict:
    """In the child: compile the bytes (with `lint`, check the file as `rules check` does); compiling tries
    every points expression on boundary events (engine/boundary_events.py), where a costly branch runs."""
    file = arguments["file"]
    if arguments.get("lint"):
        check = check_source(file, data)
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
