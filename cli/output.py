"""Printing for people (rich tables, on stdout) and for scripts (`--json`, on stdout); messages on stderr."""
from __future__ import annotations

import json
import os
import sys
from datetime import date, datetime
from decimal import Decimal

import typer
from rich.console import Console
from rich.markup import escape

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
