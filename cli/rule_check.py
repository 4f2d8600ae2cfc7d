"""`loyalty rules check`: validate rule files before they go live."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli import views
from cli.output import emit_json
from engine.errors import RuleFileError
from engine.loader import load_programmes

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    rules_app.command("check")(rules_check)


def rules_check(
    ctx: typer.Context,
    files: Annotated[Optional[list[Path]], typer.Argument(
        help="Rule files or directories to check. Default: the active rules.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate rule files: every error at once, each with file, line, key path and what was expected."""
    targets = files or [ctx.obj.rules]
    results = []
    for target in targets:
        try:
            programmes = load_programmes(target)
            results.append({"path": str(target), "valid": True, "problems": [],
                            "versions": [{"file": p.source, "programme": p.id, "version": p.version,
                                          "rules": len(p.rules)} for p in programmes.versions]})
        except RuleFileError as exc:
            results.append({"path": str(target), "valid": False,
                            "problems": [p.as_dict() for p in exc.problems], "versions": []})
    valid = all(r["valid"] for r in results)
    if as_json:
        emit_json({"valid": valid, "results": results})
    else:
        views.print_rule_check(results, valid)
    raise typer.Exit(0 if valid else 1)
