"""Install a new programme version into the active rules directory, after every check that can refuse it.

A version is a rule file; the rules directory holds every version (for audit and replay) and each event
is evaluated under the version in force at its `occurred_at`. Installing is one atomic rename, so a
watching process (engine reload in `loyalty serve`) sees either the old set or the new one, never half
a file. A version must start late enough that no event it would cover has already been evaluated under
the previous one: after every event already stored, and after the clock-skew allowance plus the time
running services take to notice the new file (`lead`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select

from engine.errors import RuleFileError
from engine.loader import load_programme, rule_files, version_problems
from engine.programme import CompiledProgramme
from service.clock import MAX_CLOCK_SKEW
from service.errors import ConflictError, InputError
from storage.models import ProcessedEvent

# Events up to MAX_CLOCK_SKEW ahead of the clock are accepted, and services look for new files every
# second: a version starting sooner than this could miss events already evaluated under the old one.
DEFAULT_LEAD = MAX_CLOCK_SKEW + timedelta(minutes=1)


@dataclass(frozen=True)
class Candidate:
    """A checked version ready to install, and where it goes."""

    programme: CompiledProgramme
    source: Path
    target: Path
    installed: bool  # the same content is already at `target`: activating again changes nothing


def check_candidate(rules_dir: Path, source: Path) -> Candidate:
    """Load `source` and check it against the installed versions; raises RuleFileError or ConflictError."""
    if not rules_dir.is_dir():
        raise InputError(f"{rules_dir} is not a directory; activation installs a version into a rules "
                         "directory (--rules or LOYALTY_RULES)")
    candidate = load_programme(source)
    target = rules_dir / source.name
    installed = [path for path in rule_files(rules_dir) if path.resolve() != target.resolve()]
    content = source.read_bytes()
    if target.exists() and target.read_bytes() != content:
        raise ConflictError(f"{target} already holds a different version; a version is never overwritten (ledger "
                            "entries name it): give the new version a file name of its own, e.g. "
                            f"{candidate.id}-{candidate.version}.yaml", "version-file-exists", target=str(target))
    others = [load_programme(path) for path in installed]
    problems = list(version_problems([*others, candidate]))
    if problems:
        raise RuleFileError(problems)
    return Candidate(candidate, source, target, target.exists())


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
    with engine.connect() as conn:
        return conn.execute(select(func.max(ProcessedEvent.occurred_at))).scalar()


def install(candidate: Candidate) -> None:
    """Write the version into the rules directory in one atomic step (write a temporary file, then rename)."""
    if candidate.installed:
        return
    directory = candidate.target.parent
    # The temporary name does not end in .yaml, so a watcher never loads a half-written file.
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".activating-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(candidate.source.read_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, candidate.target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"
