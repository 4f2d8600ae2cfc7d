"""Liveness and readiness of the API process: what load balancers and orchestrators poll.

Liveness (`/healthz`) needs nothing but the process: a database outage must not get healthy processes
restarted. Readiness (`/readyz`) says whether to send traffic here: the database answers and holds this
release's schema, and the rules served are the latest good ones (or degraded: a changed file was refused).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from engine.programme import CompiledProgramme
from service.answer import Answer, ProgrammeRef
from service.rules_watcher import ReloadStatus
from service.version import package_version
from storage.db import SchemaMissingError, require_schema


class RefusedRuleFile(Answer):
    """One problem of a rule file the rules watcher refused."""

    file: str
    line: int | None = None
    column: int | None = None
    path: str = ""
    message: str
    severity: str = "error"


class RulesState(Answer):
    """The rule versions served, how many sets were installed, and why the latest change was refused."""

    versions: list[str]
    reloads: int
    refused: list[RefusedRuleFile]


class Health(Answer):
    """The process is up (liveness: no database is consulted)."""

    status: Literal["ok"] = "ok"
    version: str = Field(description="the installed release")
    database: str = Field(description="the database dialect: sqlite or postgresql")
    programme: ProgrammeRef = Field(description="the programme version in force now")
    rules: RulesState | None = Field(None, description="present when the server watches the rules for new versions")


class Readiness(Answer):
    """Whether this process should get traffic: `ready`, or `degraded` with the reason (still serving)."""

    status: Literal["ready", "degraded"]
    reason: str | None = Field(None, description="why the service is degraded")


class NotReady(Exception):
    """The database does not answer or does not hold this release's schema; the message says which."""


def health(engine: Engine, programme: CompiledProgramme, rules: ReloadStatus | None) -> Health:
    """Liveness: the release, the programme in force and the rules served (reads no database)."""
    return Health(version=package_version(), database=engine.dialect.name,
                  programme=ProgrammeRef(id=programme.id, version=programme.version),
                  rules=RulesState.model_validate(rules.as_dict()) if rules else None)


def readiness(engine: Engine, rules: ReloadStatus | None) -> Readiness:
    """Ready, or degraded when a changed rule file was refused; NotReady while the database cannot serve."""
    try:
        require_schema(engine)
    except SchemaMissingError as exc:
        raise NotReady(str(exc)) from None
    except (DBAPIError, PoolTimeoutError) as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise NotReady(f"the database does not answer: {lines[0] if lines else type(exc).__name__}") from None
    if rules is not None and rules.problems:
        files = sorted({problem.file for problem in rules.problems})
        return Readiness(status="degraded", reason=f"rule file(s) {', '.join(files)} refused ({rules.problems[0].message}"
                         f"{'; …' if len(rules.problems) > 1 else ''}); serving the last good versions "
                         f"{', '.join(rules.installed)}")
    return Readiness(status="ready")
