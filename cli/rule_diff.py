"""`loyalty rules diff OLD NEW`: what a rule change means, for the person reviewing it."""
from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli.output import console, emit_json, errors
from engine.errors import Problem, RuleFileError
from engine.programme import CompiledProgramme
from engine.rule_diff import SECTIONS, Change, ProgrammeDiff, diff_programmes
from service.rule_trial import load_tried

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the structured diff as JSON on stdout.")]

TITLES = dict(zip(SECTIONS, ("Programme", "Loan products", "Discount ceilings (bps)", "Event types", "Tiers",
                             "Qualification thresholds", "Tier benefits", "Rules", "Catalogue", "Review policy",
                             "Points policy", "Churn signals"), strict=True))
_SIGNS = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}


def rules_diff(
    old: Annotated[Path, typer.Argument(help="The rule file as it is now, e.g. the live version.")],
    new: Annotated[Path, typer.Argument(help="The rule file as proposed.")],
    as_json: JsonFlag = False,
    exit_code: Annotated[bool, typer.Option(
        "--exit-code", help="Exit 1 when the files differ in meaning, 0 when they do not (like git diff).")] = False,
) -> None:
    """Compare two rule files by meaning: what a reviewer must know before the change goes live.

    Lists, section by section, what was added (+), removed (-) and changed (~, old → new): the
    programme header, loan products and discount ceilings, event types and their attributes, tiers,
    qualification thresholds and standing benefits per tier, rules (by id: which condition or award
    changed), catalogue rewards, and the review, points and churn policies. Layout, comments, the
    spelling of a value (50000000 or "50000000.00") and the order of items in the file are not
    differences, except the tier order and the firing order of rules sharing an event type and a
    priority; a renamed rule shows as removed and added.
    Both files must load: otherwise their problems are listed and the exit status is 2.

    Example: `loyalty rules diff rules/corporate_lending.yaml proposed.yaml --exit-code`
    """
    before, after = _load(old), _load(new)
    problems = [p for result in (before, after) if isinstance(result, list) for p in result]
    if problems:
        _report_problems(problems, as_json)
        raise typer.Exit(2)
    diff = diff_programmes(before.model, after.model)
    if as_json:
        emit_json({"old": _describe(before), "new": _describe(after), **diff.as_dict()})
    else:
        print_diff(before, after, diff)
    raise typer.Exit(1 if exit_code and not diff.identical else 0)


def _load(path: Path) -> CompiledProgramme | list[Problem]:
    """The compiled file (tried in a child process first: a proposed file is untrusted), or its problems."""
    if path.is_dir():
        return [Problem(str(path), None, "", "is a directory; name one rule file, e.g. rules/corporate_lending.yaml")]
    try:
        return load_tried(path)
    except RuleFileError as exc:
        return exc.problems


def _report_problems(problems: list[Problem], as_json: bool) -> None:
    files = sorted({p.file for p in problems})
    message = f"cannot compare: {' and '.join(files)} {'does' if len(files) == 1 else 'do'} not load"
    if as_json:
        emit_json({"error": message, "problems": [p.as_dict() for p in problems]})
        return
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    for problem in problems:
        errors.print(f"  {escape(str(problem))}", highlight=False)


def _describe(programme: CompiledProgramme) -> dict:
    return {"file": programme.source, "programme": programme.id, "version": programme.version}


def print_diff(old: CompiledProgramme, new: CompiledProgramme, diff: ProgrammeDiff) -> None:
    """The diff for people: one block per section, one line per change."""
    heading = (f"{escape(old.source)} ({escape(old.id)} {escape(old.version)}) → "
               f"{escape(new.source)} ({escape(new.id)} {escape(new.version)})")
    if diff.identical:
        console.print(f"no semantic differences: {heading}", highlight=False)
        return
    count = len(diff.changes)
    console.print(f"[bold]{heading}[/]: {count} difference{'s' if count != 1 else ''}", highlight=False)
    for section, changes in diff.by_section().items():
        console.print(f"\n[bold]{TITLES[section]}[/]", highlight=False)
        for change in changes:
            for line in change_lines(change):
                console.print(line, highlight=False)


def change_lines(change: Change) -> list[str]:
    """A change as rich markup lines: sign, item, part, then the value or old → new."""
    sign, colour = _SIGNS[change.kind]
    value = change.new if change.kind == "added" else change.old
    if change.kind == "changed" and isinstance(change.old, list) and isinstance(change.new, list):
        # An order (tiers, rules firing together): ids in sequence, without brackets around them.
        shown = " → ".join(", ".join(format_value(item, nested=True) for item in order)
                           for order in (change.old, change.new))
    elif change.kind == "changed":
        shown = f"{format_value(change.old)} → {format_value(change.new)}"
    elif value is None:
        shown = ""
    elif isinstance(value, dict) and not change.field:
        # A whole item added or removed: one line per top-level key reads better than one long line.
        head = f"[{colour}]{sign}[/] [bold]{escape(change.item)}[/]"
        return [f"  {head}", *(f"      {escape(key)}: {escape(format_value(item, nested=True))}"
                               for key, item in value.items())]
    else:
        shown = format_value(value)
    parts = [f"[bold]{escape(change.item)}[/]" + (":" if change.field or shown else "")] if change.item else []
    parts += [escape(text) for text in (change.field, shown) if text]
    return [f"  [{colour}]{sign}[/] {' '.join(parts)}"]


def format_value(value: object, nested: bool = False) -> str:
    """A value in the file's terms: numbers as written (digits grouped when alone), YAML flow style for maps and lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        # Inside a flow map or list a comma separates items, so only a value on its own is grouped.
        return format(value, ("" if nested else ",") + ("f" if isinstance(value, Decimal) else "d"))
    if isinstance(value, datetime):
        text = value.isoformat()
        return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {format_value(item, nested=True)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(item, nested=True) for item in value) + "]"
    return _format_text(str(value))


def _format_text(text: str) -> str:
    # Quote text that would otherwise be misread: spaces (expressions, descriptions), punctuation, numbers.
    plain = text and all(ch.isalnum() or ch in "_-." for ch in text) and not text.replace(".", "").isdigit()
    return text if plain else json.dumps(text, ensure_ascii=False)
