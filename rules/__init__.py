"""The shipped loyalty programme, as package data: the rule files, their example tests (tests/), the JSON
Schemas editors use and the authors' guide. A bank points --rules or LOYALTY_RULES at its own rules directory;
these are the default when neither is set."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_rules_dir() -> Path:
    """The folder of the shipped rule files (installed with the package, or this checkout's rules/)."""
    return Path(str(files(__name__)))
