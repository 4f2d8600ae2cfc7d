"""Errors a person can act on: where the problem is and what was expected."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Problem:
    """One problem in a rule file, located by file, line and key path."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '<top>'}: {self.message}"

    def as_dict(self) -> dict:
        """JSON-friendly form for `--json` output."""
        return {"file": self.file, "line": self.line, "path": self.path, "message": self.message}


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
