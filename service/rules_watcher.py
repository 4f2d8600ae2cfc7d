"""The active rules, watched: a new or changed rule file is installed as a whole new set, or not at all.

A long-running process (`loyalty serve`, `loyalty scheduler`, a long `loyalty ingest`) holds a
RulesWatcher instead of a fixed ProgrammeSet. Each piece of work takes one snapshot (`current()`) and
keeps it to the end, so no event is evaluated half under one set and half under another. A file that
does not load, or a set whose versions contradict each other, is refused: the process keeps the last
good set and reports the problems. Unchanged files are not compiled again (compiled versions are
cached by content digest), and the matching core frees rulesets nobody holds (engine/matching.py), so
memory stays bounded across any number of activations. A new or changed file is tried in a child
process first (service/rule_trial.py): one that crashes the compiler or reaches a limit there is
refused like any other, and never loaded here.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import Problem, RuleFileError
from engine.loader import compile_source, read_source, rule_files, version_problems
from engine.programme import CompiledProgramme, ProgrammeSet
from service import telemetry
from service.clock import Clock, utc_now
from service.rule_trial import try_rule_files

log = logging.getLogger("loyalty.rules")
# A rule file modified less than this long ago may still be being written: it is loaded at a later look.
SETTLE_SECONDS = 1.0
# A trial that could not start (no process or file handle to spare) or ran out of wall-clock time (a
# loaded machine) says nothing certain about the file: the same files are looked at again after this
# long, doubled after each such failure up to RETRY_MAX_SECONDS, so a busy machine is not made busier.
RETRY_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class ReloadStatus:
    """What the last look at the rules found."""

    installed: tuple[str, ...]  # versions of the set in use, oldest first
    reloads: int  # sets installed since start, the first included
    problems: tuple[Problem, ...]  # why the latest change was refused; empty when it was installed

    def as_dict(self) -> dict:
        """JSON-friendly form, for /healthz and --json."""
        return {"versions": list(self.installed), "reloads": self.reloads,
                "refused": [problem.as_dict() for problem in self.problems]}


class RulesWatcher:
    """The programme versions at a rules location, reloaded when a rule file changes."""

    def __init__(self, location: Path, interval: float = 1.0, settle: float = SETTLE_SECONDS,
                 clock: Clock = utc_now):
        self.location = location
        self.interval = interval
        self.settle = settle
        self.clock = clock
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._retry_at: float | None = None  # monotonic time to look again at unchanged files (a trial failed)
        self._retry_delay = RETRY_SECONDS
        self._compiled: dict[tuple[str, str], CompiledProgramme] = {}
        self._installed: set[tuple[str, str]] = set()  # cache keys (file, digest) of the set in use
        self._current: ProgrammeSet | None = None
        self._reloads = 0
        self._problems: tuple[Problem, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_install: Callable[[ProgrammeSet], None] | None = None  # told of every new set installed
        if not self.refresh():
            raise RuleFileError(list(self._problems))

    def current(self) -> ProgrammeSet:
        """The set in use now: take it once per piece of work and keep it to the end."""
        assert self._current is not None  # the constructor refuses to start without a good set
        return self._current

    def status(self) -> ReloadStatus:
        """Versions in use, reload count and the problems of a refused change."""
        return ReloadStatus(tuple(v.version for v in self.current().versions), self._reloads, self._problems)

    def refresh(self) -> bool:
        """Look at the rule files; install a new set if one changed and all load. True if a set is in use."""
        with self._lock:
            try:
                signature = _signature(self.location)
            except OSError as exc:
                return self._refuse([Problem(str(self.location), None, "", f"cannot read the rules: {exc}")], [])
            if signature == self._signature and (self._retry_at is None or time.monotonic() < self._retry_at):
                return self._current is not None
            newest = max((modified for _path, modified, _size in signature), default=0)
            if self._current is not None and self.clock().timestamp() - newest / 1e9 < self.settle:
                return True  # a file was written just now, maybe not to the end: look again once it settles
            self._signature = signature
            keys, problems, retry = self._compile_all(rule_files(self.location))
            self._schedule_retry(retry)
            loaded = [self._compiled[key] for key in keys]
            if not loaded and not problems:
                problems.append(Problem(str(self.location), None, "", "no rule files (*.yaml) here"))
            problems.extend(version_problems(loaded))
            if self._current is not None:
                problems.extend(self._history_problems(keys))
            if problems:
                return self._refuse(problems, keys)
            # Forget what the new set does not hold: its matchers are freed once no snapshot holds them.
            self._compiled = {key: self._compiled[key] for key in keys}
            self._installed = set(keys)
            self._install(ProgrammeSet(tuple(sorted(loaded, key=lambda p: p.effective_from))))
            return True

    def _history_problems(self, keys: list[tuple[str, str]]) -> list[Problem]:
        """A running service refuses what would rewrite history: an installed version edited in place, or a
        new version starting before now (events of that time were evaluated under the versions in force)."""
        problems, now = [], self.clock()
        in_use = {(self._compiled[key].id, self._compiled[key].version): key[1] for key in self._installed}
        for key in keys:
            programme = self._compiled[key]
            digest = in_use.get((programme.id, programme.version))
            if digest is not None and digest != key[1]:
                problems.append(Problem(key[0], None, "programme.version",
                                        f"version {programme.version} is in use and was edited in place; a version "
                                        "is never changed once installed: put the change in a new version with "
                                        "`loyalty rules activate`"))
            elif digest is None and programme.effective_from <= now:
                problems.append(Problem(key[0], None, "programme.effective_from",
                                        f"new version {programme.version} starts at "
                                        f"{programme.effective_from.isoformat()}, before now: events of that time were "
                                        "already evaluated under the versions in force; use `loyalty rules activate`"))
        return problems

    def _schedule_retry(self, retry: bool) -> None:
        """After a trial that said nothing certain, look at the same files again later, with backoff."""
        if not retry:
            self._retry_at, self._retry_delay = None, RETRY_SECONDS
            return
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)

    def _compile_all(self, paths: list[Path]) -> tuple[list[tuple[str, str]], list[Problem], bool]:
        """Compile each file unless its content was compiled before, after trying the new ones (together) in
        child processes; the cache keys of those that load, the problems of the others, and whether a
        trial failed for a reason that may be the machine's (then the files are worth another look)."""
        keys, problems, read = [], [], []
        for path in paths:
            try:
                data = read_source(path)
            except RuleFileError as exc:
                problems.extend(exc.problems)
                continue
            read.append(((str(path), hashlib.sha256(data).hexdigest()), data))
        new = [(key[0], data) for key, data in read if key not in self._compiled]
        verdicts = {verdict.file: verdict for verdict in try_rule_files(new)} if new else {}
        for key, data in read:
            verdict = verdicts.get(key[0])
            if verdict is not None and not verdict.ok:
                problems.extend(verdict.errors)
                continue
            try:
                if key not in self._compiled:
                    self._compiled[key] = compile_source(key[0], data)
                keys.append(key)
            except RuleFileError as exc:
                problems.extend(exc.problems)
            except Exception as exc:  # noqa: BLE001 - a file the loader did not foresee is refused like any other
                problems.append(Problem(key[0], None, "", f"cannot be loaded ({type(exc).__name__}: {exc})"))
        return keys, problems, any(verdict.transient for verdict in verdicts.values())

    def _install(self, programmes: ProgrammeSet) -> None:
        self._current = programmes
        self._reloads += 1
        self._problems = ()
        telemetry.RULES_DEGRADED.set(0)
        if self.on_install is not None:
            self.on_install(programmes)
        log.info("rules installed from %s: versions %s", self.location,
                 ", ".join(f"{v.version} (from {v.effective_from.isoformat()})" for v in programmes.versions))

    def _refuse(self, problems: list[Problem], keys: list[tuple[str, str]]) -> bool:
        self._problems = tuple(problems)
        telemetry.RULES_REFUSED.inc(len({problem.file for problem in problems}))
        telemetry.RULES_DEGRADED.set(self._current is not None)
        # Keep what the set in use holds and what this attempt compiled (a fix to one file reuses the rest).
        wanted = set(keys) | self._installed
        self._compiled = {key: value for key, value in self._compiled.items() if key in wanted}
        if self._current is not None:
            log.error("rules at %s changed but do not load; still serving versions %s:\n  %s", self.location,
                      ", ".join(v.version for v in self._current.versions), "\n  ".join(map(str, problems)))
        return self._current is not None

    def start(self) -> None:
        """Look for changes every `interval` seconds in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="rules-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop looking for changes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad look at the files
                log.exception("looking at the rules at %s failed; will look again", self.location)


def _signature(location: Path) -> tuple:
    """Name, size and modification time of every rule file: cheap to compare every second."""
    return tuple((str(path), stat.st_mtime_ns, stat.st_size)
                 for path in rule_files(location) for stat in [path.stat()])
