"""Printing for people (rich tables, on stdout) and for scripts (`--json`, on stdout); messages on stderr."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
import re
from datetime import date, datetime, timedelta
from decimal import Decimal

import typer
from rich.console import Console
from rich.markup import escape

from service.clock import utc_now

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
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # only with a person watching

    count = "{task.completed:,}/{task.total:,}" if total else "{task.completed:,}"
    columns = (TextColumn(label), BarColumn(), TextColumn(f"{count} {unit}"), TimeRemainingColumn())
    with Progress(*columns, console=errors, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def parse_moment(text: str | None, as_json: bool, option: str = "--at", allow_date: bool = False) -> datetime:
    """An aware moment from ISO 8601 text (now when None); with `allow_date`, a plain date means 00:00 UTC.

    Exits with a message naming `option` when the text is not a moment with a zone.
    """
    if text is None:
        return utc_now()
    if allow_date and re.fullmatch(r"\d{4}-\d{2}-\d{2}Z?", text):
        text = f"{text.removesuffix('Z')}T00:00:00Z"
    if not re.search(r"\d[T ]\d", text):  # a date alone: Python would read a zone after it as nothing
        example = "2026-03-01" if allow_date else "2026-03-01T00:00:00Z"
        raise fail(f"{option} {text!r} is not a moment; use ISO 8601 with a time and zone, e.g. {example}",
                   as_json=as_json)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"{option} {text!r} is not a timestamp; use ISO 8601 with a zone, e.g. 2026-03-01T10:00:00Z",
                   as_json=as_json) from None
    if moment.tzinfo is None:
        raise fail(f"{option} {text!r} has no time zone; add Z for UTC, e.g. {text}Z", as_json=as_json)
    if not 1900 <= moment.year <= 2999:
        raise fail(f"{option} {text!r} is outside the years 1900-2999", as_json=as_json)
    return moment


_DURATION_UNITS = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1),
                   "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_duration(text: str, as_json: bool, option: str) -> timedelta:
    """A duration such as 30d, 12h, 2w, 15m or 90s; exits with a message naming `option` otherwise."""
    match = re.fullmatch(r"(\d{1,5})([smhdw])", text.strip())
    if match is None:
        raise fail(f"{option} {text!r} is not a duration; use a number and s, m, h, d or w, e.g. 30d",
                   as_json=as_json)
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
