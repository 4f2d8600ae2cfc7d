"""Placeholder: replaced by the module's author (issue 6)."""
from __future__ import annotations

import typer


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
