"""`loyalty rules check`: every error and warning in rule files, before they go live."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli import views
from cli.output import emit_json
from service.rule_trial import FileResult, check_location

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def rules_check(
    ctx: typer.Context,
    files: Annotated[Optional[list[Path]], typer.Argument(
        help="Rule files or directories (a directory holds versions of one programme). Default: the active rules.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 1) on warnings too, not only on errors.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check rule files before they go live: every problem at once, at file:line:column with its key path.

    **Errors** keep a file from loading: schema mistakes, misspelt names of events, attributes,
    metrics, tiers and products (with a "did you mean"), tier thresholds that fall as tiers rise,
    conditions that can never hold (gt 10 with lt 5, a tier below min_tier, ...).

    **Warnings** do not: two rules that can fire for one event and grant a discount on the same
    product or the same kind of benefit; a standing grant without valid_for_days, or a single-use
    one with neither valid_for_days nor a cap; a grant above its product's discount ceiling; a
    points cap below the rule's constant award; tier benefits that fall as tiers rise; `exists:
    false` beside `ne`/`not_in`.

    Each file is checked in a child process with CPU-time and memory limits (see rules/README.md): a
    file that crashes the compiler or runs past them is an error naming the file and the limit.

    Exit status: 0 no errors (and, with --strict, no warnings); 1 otherwise.

    Example: `loyalty rules check rules/ --strict`, or `loyalty rules check draft.yaml --json`.
    """
    targets = files or [ctx.obj.rules]
    results = [_check_target(target, strict) for target in targets]
    errors = sum(result["errors"] for result in results)
    warnings = sum(result["warnings"] for result in results)
    report = {"valid": errors == 0 and not (strict and warnings), "strict": strict,
              "files": sum(result["files"] for result in results), "errors": errors, "warnings": warnings,
              "results": results}
    if as_json:
        emit_json(report)
    else:
        views.print_rule_check(report)
    raise typer.Exit(0 if report["valid"] else 1)


def _check_target(target: Path, strict: bool) -> dict:
    """One file or directory: its problems grouped per file and sorted by place, and the versions that load."""
    checks = check_location(target)
    order = {check.file: position for position, check in enumerate(checks)}
    problems = sorted((problem for check in checks for problem in check.problems),
                      key=lambda p: (order.get(p.file, len(order)), p.line or 0, p.column or 0))
    errors = sum(problem.is_error for problem in problems)
    warnings = len(problems) - errors
    return {"path": str(target), "valid": errors == 0 and not (strict and warnings), "files": len(checks),
            "errors": errors, "warnings": warnings, "problems": [problem.as_dict() for problem in problems],
            "versions": [_version(check) for check in checks if check.version is not None]}


def _version(check: FileResult) -> dict:
    version = check.version
    assert version is not None
    return {"file": check.file, "programme": version.id, "version": version.version, "rules": version.rules}
