"""Install a new programme version into the active rules directory, after every check that can refuse it.

A version is a rule file; the rules directory holds every version (for audit and replay) and each event
is evaluated under the version in force at its `occurred_at`. The checked bytes are what is installed,
with one atomic link that never replaces an existing file, so a watching process (hot reload in
`loyalty serve`) sees the old set or the new one, never half a file, and no version is ever
overwritten. A version must start late enough that no event it would cover has already been
evaluated under the previous one: after every event already stored, and after the clock-skew
allowance plus the time running services take to notice the new file (`lead`). Activations of one
directory take turns under a file lock, and the checks that depend on the directory or the clock
are made again under it, just before the install. Every file (the new version and the installed ones
it is compared with) is tried in a child process first (service/rule_trial.py), so a file that crashes
the compiler or runs past the limits is refused with the reason instead of ending the command.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine

from engine.errors import Problem, RuleFileError
from engine.loader import RULE_FILE_SUFFIXES, compile_source, read_source, rule_files, version_problems
from engine.programme import CompiledProgramme, ProgrammeSet
from rewards.notices import notice
from service.answer import Answer, Moment
from service.clock import MAX_CLOCK_SKEW
from service.errors import ConflictError, InputError
from service.rule_trial import require_tried, try_rule_files
from storage import clients as client_store
from storage import outbox
from storage.db import read_snapshot, write_transaction

# Events up to MAX_CLOCK_SKEW ahead of the clock are accepted, and services look for new files at
# least every 30 s: a version starting sooner than this could miss events already evaluated under the old one.
DEFAULT_LEAD = MAX_CLOCK_SKEW + timedelta(minutes=1)
LOCK_NAME = ".activate.lock"


class RuleVersion(Answer):
    """One installed version of the programme: from when, its file, its rules, and whether it is in force."""

    programme: str
    version: str
    effective_from: Moment
    file: str
    rules: int
    state: Literal["in force", "scheduled", "superseded"]  # scheduled: starts later


class RuleVersions(Answer):
    """The installed versions, oldest first, as of a moment."""

    as_of: Moment
    versions: list[RuleVersion]


def installed_versions(programmes: ProgrammeSet, now: datetime) -> RuleVersions:
    """Every installed version of `programmes`, oldest first, and which one is in force at `now`."""
    in_force = programmes.at(now)

    def state(version: CompiledProgramme) -> str:
        if version is in_force:
            return "in force"
        return "scheduled" if version.effective_from > now else "superseded"

    return RuleVersions(as_of=now.isoformat(), versions=[RuleVersion(
        programme=v.id, version=v.version, effective_from=v.effective_from.isoformat(), file=v.source,
        rules=len(v.rules), state=state(v)) for v in programmes.versions])


@dataclass(frozen=True)
class Candidate:
    """A checked version ready to install: its bytes (exactly what was checked) and where they go."""

    programme: CompiledProgramme
    content: bytes
    target: Path
    installed: bool  # the same content is already at `target`: activating again changes nothing


@contextlib.contextmanager
def activation_lock(rules_dir: Path) -> Iterator[None]:
    """Hold the rules directory's activation lock: one activation at a time, across processes."""
    with open(rules_dir / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_candidate(rules_dir: Path, source: Path) -> Candidate:
    """Load `source` and check it against the installed versions; raises RuleFileError or ConflictError."""
    if not rules_dir.is_dir():
        raise InputError(f"{rules_dir} is not a directory; activation installs a version into a rules "
                         "directory (--rules or LOYALTY_RULES)")
    if source.suffix not in RULE_FILE_SUFFIXES:
        raise InputError(f"{source.name}: a rule file's name ends in {' or '.join(RULE_FILE_SUFFIXES)} (lower case); "
                         "services load nothing else")
    content = read_source(source)
    require_tried(str(source), content)
    candidate = compile_source(str(source), content)
    target = rules_dir / source.name
    return Candidate(candidate, content, target, _same_content(target, content))


def check_agreement(candidate: Candidate) -> None:
    """Refuse a version that would overwrite another file or contradict the installed versions."""
    target = candidate.target
    if target.exists() and not candidate.installed:
        raise ConflictError(f"{target} already holds a different version; a version is never overwritten (ledger "
                            "entries name it): give the new version a file name of its own, e.g. "
                            f"{candidate.programme.id}-{candidate.programme.version}.yaml", "version-file-exists",
                            target=str(target))
    installed = [(str(path), read_source(path)) for path in rule_files(target.parent)
                 if path.resolve() != target.resolve()]
    refused = [problem for verdict in try_rule_files(installed) for problem in verdict.errors]
    if refused:
        raise RuleFileError(refused)
    others = [compile_source(file, data) for file, data in installed]
    problems = list(version_problems([*others, candidate.programme]))
    if problems:
        raise RuleFileError(problems)


def check_start(candidate: Candidate, now: datetime, latest_event: datetime | None, lead: timedelta) -> None:
    """Refuse a version that would start before events already evaluated, or too soon for running services."""
    start = candidate.programme.effective_from
    if candidate.installed:
        return
    if latest_event is not None and start <= latest_event:
        raise ConflictError(f"version {candidate.programme.version} starts at {start.isoformat()}, but events up to "
                            f"{latest_event.isoformat()} were already evaluated under the versions in force; "
                            "set programme.effective_from after that", "starts-in-the-past",
                            effective_from=start.isoformat(), latest_event=latest_event.isoformat())
    if start < now + lead:
        raise ConflictError(f"version {candidate.programme.version} starts at {start.isoformat()}, less than "
                            f"{_duration(lead)} from now ({now.isoformat()}): running services need that long to be "
                            "sure no event it covers is evaluated under the old version; set a later "
                            "programme.effective_from", "starts-too-soon",
                            effective_from=start.isoformat(), earliest=(now + lead).isoformat())


def latest_event_moment(engine: Engine) -> datetime | None:
    """The latest `occurred_at` of any event already applied."""
    with read_snapshot(engine) as conn:
        return client_store.latest_event_moment(conn)


def install(candidate: Candidate) -> None:
    """Write the checked bytes into the rules directory in one atomic step that never replaces a file."""
    if candidate.installed:
        return
    directory = candidate.target.parent
    # The temporary name does not end in .yaml, so a watcher never loads a half-written file.
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".activating-", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)  # readable by a service running as another user, like any saved file
        with os.fdopen(handle, "wb") as out:
            out.write(candidate.content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, candidate.target)  # fails if the name was taken meanwhile, unlike a rename
        except FileExistsError:
            raise ConflictError(f"{candidate.target} appeared while activating; nothing was installed",
                                "version-file-exists", target=str(candidate.target)) from None
        _sync_directory(directory)
    finally:
        Path(temporary).unlink(missing_ok=True)


def announce(engine: Engine, candidate: Candidate, now: datetime) -> None:
    """Record the installed version's rule_version.activated notice (once per programme version)."""
    programme = candidate.programme
    item = notice("rule_version.activated", now, dedupe_key=f"rule_version.activated:{programme.id}:{programme.version}",
                  client_id=None, programme_id=programme.id, version=programme.version,
                  effective_from=programme.effective_from, file=candidate.target.name)
    with write_transaction(engine) as conn:
        outbox.record(conn, [item], now)


def unexpected_problem(file: str, exc: Exception) -> Problem:
    """A Problem for a failure the loader did not foresee (e.g. a recursive YAML alias)."""
    return Problem(file, None, "", f"cannot be loaded ({type(exc).__name__}: {exc})")


def _same_content(target: Path, content: bytes) -> bool:
    try:
        return target.read_bytes() == content
    except FileNotFoundError:
        return False


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"
