"""The active rules, watched: a new or changed rule file is installed as a whole new set, or not at all.

A long-running process (`loyalty serve`, `loyalty scheduler`, a long `loyalty ingest`) holds a
RulesWatcher instead of a fixed ProgrammeSet. Each piece of work takes one snapshot (`current()`) and
keeps it to the end, so no event is evaluated half under one set and half under another. A file that
does not load, or a set whose versions contradict each other, is refused: the process keeps the last
good set and reports the problems. Unchanged files are not compiled again (compiled versions are
cached by content digest), and the matching core frees rulesets nobody holds (engine/matching.py), so
memory stays bounded across any number of activations.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import Problem, RuleFileError
from engine.loader import compile_document, rule_files, version_problems
from engine.programme import CompiledProgramme, ProgrammeSet
from engine.yaml_source import load_yaml

log = logging.getLogger("loyalty.rules")


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

    def __init__(self, location: Path, interval: float = 1.0):
        self.location = location
        self.interval = interval
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._compiled: dict[tuple[str, str], CompiledProgramme] = {}
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
                return self._refuse([Problem(str(self.location), None, "", f"cannot read the rules: {exc}")])
            if signature == self._signature:
                return self._current is not None
            self._signature = signature
            keys, problems = [], []
            for path in rule_files(self.location):
                try:
                    keys.append(self._compile(path))
                except RuleFileError as exc:
                    problems.extend(exc.problems)
            loaded = [self._compiled[key] for key in keys]
            if not loaded and not problems:
                problems.append(Problem(str(self.location), None, "", "no rule files (*.yaml) here"))
            problems.extend(version_problems(loaded))
            if problems:
                return self._refuse(problems)
            # Forget what the new set does not hold: its matchers are freed once no snapshot holds them.
            self._compiled = {key: self._compiled[key] for key in keys}
            self._install(ProgrammeSet(tuple(sorted(loaded, key=lambda p: p.effective_from))))
            return True

    def _compile(self, path: Path) -> tuple[str, str]:
        """Compile `path` unless this content was compiled before; returns its cache key."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RuleFileError([Problem(str(path), None, "", f"cannot read the file: {exc.strerror}")]) from None
        key = (str(path), hashlib.sha256(data).hexdigest())
        if key not in self._compiled:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                line = data[: exc.start].count(b"\n") + 1
                raise RuleFileError([Problem(str(path), line, "", "not UTF-8 text; save the file as UTF-8")]) from None
            self._compiled[key] = compile_document(load_yaml(str(path), text))
        return key

    def _install(self, programmes: ProgrammeSet) -> None:
        self._current = programmes
        self._reloads += 1
        self._problems = ()
        if self.on_install is not None:
            self.on_install(programmes)
        log.info("rules installed from %s: versions %s", self.location,
                 ", ".join(f"{v.version} (from {v.effective_from.isoformat()})" for v in programmes.versions))

    def _refuse(self, problems: list[Problem]) -> bool:
        self._problems = tuple(problems)
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
