"""Printing for people (rich tables, on stdout) and for scripts (`--json`, on stdout); messages on stderr."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

# soft_wrap: long messages stay on one line, so they can be grepped and copied whole. Piped output
# gets wide tables rather than rich's 80-column default (COLUMNS still wins when set).
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(soft_wrap=True, width=_PIPE_WIDTH)
errors = Console(stderr=True, soft_wrap=True)


def _default(value: object) -> object:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(value: object) -> None:
    """Write `value` as JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=_default, ensure_ascii=False) + "\n")


def fail(message: str, code: int = 2, as_json: bool = False) -> typer.Exit:
    """Report an error (as JSON on stdout with --json, else on stderr) and return the Exit to raise."""
    if as_json:
        emit_json({"error": message})
    else:
        errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


@contextmanager
def progress_bar(label: str, unit: str, total: int | None = None,
                 enabled: bool = True) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when a person is watching; yields the callback to advance it (or None)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    count = "{task.completed:,}/{task.total:,}" if total else "{task.completed:,}"
    columns = (TextColumn(label), BarColumn(), TextColumn(f"{count} {unit}"), TimeRemainingColumn())
    with Progress(*columns, console=errors, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
