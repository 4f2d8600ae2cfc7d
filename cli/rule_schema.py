"""`loyalty rules schema`: the JSON Schema editors use to complete and check rule files."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from cli.output import console, emit_json
from engine.file_schema import case_file_schema, render, rule_file_schema


def rules_schema(
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the schema to this file instead of standard output.")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 1 if --output differs from the schema of this version (for CI).")] = False,
    cases: Annotated[bool, typer.Option(
        "--cases", help="The schema of rule-test case files instead (kept as rules/tests/schema.json).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --output or --check: report as JSON.")] = False,
) -> None:
    """Print the rule-file format as a JSON Schema, generated from the models the loader validates with.

    The project keeps it as rules/schema.json (`loyalty rules schema -o rules/schema.json`); each rule
    file names it on its first line, `# yaml-language-server: $schema=schema.json`, so editors with the
    YAML language server (VS Code's YAML extension, Neovim, IntelliJ) complete keys and underline errors
    as you type. `rules check` still has the last word: the schema cannot see cross-references.
    `--cases` gives the same for rule-test case files (`loyalty rules schema --cases -o rules/tests/schema.json`).
    """
    text = render(case_file_schema() if cases else rule_file_schema())
    if output is None:
        if check:
            raise typer.BadParameter("--check needs --output, the file to compare", param_hint="--check")
        typer.echo(text, nl=False)
        return
    current = output.read_text(encoding="utf-8") if output.exists() else None
    in_sync = current == text
    if not check and not in_sync:
        output.write_text(text, encoding="utf-8")
    if as_json:
        emit_json({"file": str(output), "in_sync": in_sync, "written": not check and not in_sync})
    elif check:
        console.print(f"{escape(str(output))}: " + ("[green]in sync[/]" if in_sync else
                      "[red]out of date[/]: run `loyalty rules schema -o " + escape(str(output)) + "`"),
                      highlight=False)
    else:
        console.print(f"{escape(str(output))}: " + ("already up to date" if in_sync else "written"), highlight=False)
    raise typer.Exit(1 if check and not in_sync else 0)
