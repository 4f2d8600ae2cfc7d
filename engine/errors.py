"""Errors a person can act on: where the problem is and what was expected."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Problem:
    """One problem in a rule file, located by file, line, column and key path.

    An error keeps the file from loading; a warning never does (`rules check --strict` fails on it).
    """

    file: str
    line: int | None
    path: str
    message: str
    column: int | None = None
    severity: str = "error"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {self.severity!r}")

    @property
    def is_error(self) -> bool:
        """True for an error, False for a warning."""
        return self.severity == "error"

    @property
    def where(self) -> str:
        """file:line:column, as editors and compilers print a place (shorter when line or column is unknown)."""
        if not self.line:
            return self.file
        return f"{self.file}:{self.line}:{self.column}" if self.column else f"{self.file}:{self.line}"

    def __str__(self) -> str:
        label = "" if self.is_error else "warning: "
        return f"{self.where}: {label}{self.path or '<top>'}: {self.message}"

    def as_dict(self) -> dict:
        """JSON-friendly form for `--json` output."""
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path,
                "severity": self.severity, "message": self.message}


class RuleFileError(Exception):
    """A rule file (or set of files) that cannot be loaded; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class EventError(ValueError):
    """An activity event that does not fit the programme's input contract."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class EvaluationError(RuntimeError):
    """A rule could not be applied to an event (for example an expression failed at run time)."""
