"""`loyalty rules test`: run the example-based rule tests product teams write beside the rule file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.markup import escape

from cli.output import console, emit_json, errors
from engine.errors import Problem, RuleFileError
from engine.programme import ProgrammeSet
from engine.rule_cases import case_files
from service.rule_trial import load_tried
from service.rule_tests import (
    CaseResult,
    RuleTestReport,
    flow,
    only_version,
    run_rule_tests,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
CASES_FOLDER = "tests"


def rules_test(
    ctx: typer.Context,
    files: Annotated[Optional[list[Path]], typer.Argument(
        help="Case files (or folders of them) to run. Default: tests/*.yaml beside the active rules.",
        show_default=False)] = None,
    programme: Annotated[Optional[Path], typer.Option(
        "--programme", help="Run the cases under this rule file alone, whatever its effective_from (a new "
                            "version, before it goes live).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run rule test cases: given a client and its events (and reviews), check points, grants, tier, benefits.

    Each case runs through the real engine in its own scratch database (never yours). One line per
    case, PASS or FAIL with its file:line; a failure lists each field expected and what the engine
    gave. Then the rules no case exercised. The case format is in rules/tests/README.md.

    Examples:

        loyalty rules test                                     # rules/tests/*.yaml, active rules

        loyalty rules test rules/tests/earning.yaml --json

        loyalty rules test --programme drafts/corporate_lending_2026_2.yaml   # a version before it starts

    Exit status: 0 every case passed; 1 a case failed; 2 a case file or the rules do not load.
    """
    programmes = _programmes(ctx, programme, as_json)
    targets = files or [_default_cases(ctx.obj.rules)]
    missing = [str(target) for target in targets if not target.exists()]
    if missing and files:
        _cannot_run(f"no such case file or folder: {', '.join(missing)}", [], as_json)
    paths = [_shown(path) for target in targets if target.exists() for path in case_files(target)]
    if not paths:
        _cannot_run(f"no case files (*.yaml) in {', '.join(str(t) for t in targets)}; see rules/tests/README.md "
                    "for how to write one", [], as_json)
    try:
        report = run_rule_tests(programmes, paths)
    except RuleFileError as exc:
        _cannot_run("the case files do not load", exc.problems, as_json)
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


def _programmes(ctx: typer.Context, programme: Path | None, as_json: bool) -> ProgrammeSet:
    """The active rules, or the one rule file of --programme in force from the start of time."""
    if programme is None:
        return ctx.obj.programmes(as_json)
    if not programme.is_file():
        _cannot_run(f"--programme {programme} is not a rule file", [], as_json)
    try:
        return only_version(load_tried(programme))  # tried in a child process first
    except RuleFileError as exc:
        _cannot_run(f"the rule file {programme} does not load", exc.problems, as_json)


def _default_cases(rules: Path) -> Path:
    """tests/ beside the active rules: in the rules folder, or beside a single rule file."""
    return (rules if rules.is_dir() else rules.parent) / CASES_FOLDER


def _shown(path: Path) -> Path:
    """`path` relative to the working directory when it is inside it: shorter file:line references."""
    try:
        return Path(os.path.relpath(path)) if path.resolve().is_relative_to(Path.cwd()) else path
    except ValueError:  # another drive (Windows)
        return path


def _cannot_run(message: str, problems: list[Problem], as_json: bool) -> NoReturn:
    """Report why the tests could not run (every problem, with its place) and exit 2."""
    if as_json:
        emit_json({"error": message, "problems": [problem.as_dict() for problem in problems]})
    else:
        errors.print(f"[bold red]error:[/] {escape(message)}" + (":" if problems else ""), highlight=False)
        for problem in problems:
            errors.print(f"  {escape(str(problem))}", highlight=False)
    raise typer.Exit(2)


def _print_report(report: RuleTestReport) -> None:
    for result in report.cases:
        _print_case(result)
    summary = f"{report.passed} passed, {report.failed} failed in {report.seconds:.2f} s"
    console.print(f"[bold {'green' if report.ok else 'red'}]{summary}[/]", highlight=False)
    by_version: dict[tuple[str, str], list[str]] = {}
    for rule in report.uncovered:
        by_version.setdefault((rule.programme_id, rule.version), []).append(rule.rule_id)
    for (programme_id, version), rule_ids in by_version.items():
        console.print(f"[yellow]warning:[/] {len(rule_ids)} rule(s) of {escape(programme_id)} {escape(version)} "
                      f"not covered by any case: {escape(', '.join(rule_ids))}", highlight=False)


def _print_case(result: CaseResult) -> None:
    where = escape(f"({result.file}:{result.line})")
    if result.passed:
        console.print(f"[green]PASS[/] {escape(result.name)} {where}", highlight=False)
        return
    console.print(f"[bold red]FAIL[/] {escape(result.name)} {where}", highlight=False)
    if result.error:
        console.print(f"     {escape(result.error)}", highlight=False)
    for difference in result.differences:
        _print_difference(difference.field, difference.expected, difference.actual)


def _print_difference(field: str, expected: object, actual: object) -> None:
    """`field: expected X, got Y` for plain values; structured ones one above the other, a list item a line."""
    if not isinstance(expected, (dict, list)) and not isinstance(actual, (dict, list)):
        console.print(f"     {escape(field)}: expected {escape(flow(expected))}, got {escape(flow(actual))}",
                      highlight=False)
        return
    console.print(f"     {escape(field)}: expected {escape(flow(expected))}", highlight=False)
    indent = " " * (5 + len(field) + 2 + 5)  # "got" ends where "expected" ends
    items = actual if isinstance(actual, list) and actual else [actual]
    for number, item in enumerate(items):
        console.print(f"{indent}{'got ' if number == 0 else '    '}{escape(flow(item))}", highlight=False)
