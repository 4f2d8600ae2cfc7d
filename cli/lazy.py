"""Command groups whose commands are imported only when they are listed or run.

`loyalty --help` and every other command then never import a group's modules, nor the services those
need: `loyalty rules check` loads the checker, not activation and its database layer. A group's own
help (shown in `loyalty --help`) is given where the group is declared, so listing it loads nothing.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

import typer
import typer.main
from typer.core import MarkupMode, TyperGroup


class _Commands(Mapping[str, Any]):
    """Name -> click command, each built from its "module:function" the first time it is looked up."""

    def __init__(self, sources: Mapping[str, str], markup: MarkupMode):
        self._sources = sources
        self._markup = markup
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            module, function = self._sources[name].split(":")
            # One command, rendered as the rest of the CLI is (the group passes its markup mode down).
            single = typer.Typer(rich_markup_mode=self._markup, add_completion=False)
            single.command(name)(getattr(importlib.import_module(module), function))
            self._built[name] = typer.main.get_command(single)
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


class _LazyGroup(TyperGroup):
    """A group whose commands are the class's `sources`, built on first use (see lazy_group)."""

    sources: Mapping[str, str] = {}

    def __init__(self, **attrs: Any):
        super().__init__(**attrs)
        self.commands = _Commands(self.sources, self.rich_markup_mode)  # type: ignore[assignment]


def lazy_group(help: str, **sources: str) -> typer.Typer:  # noqa: A002 - typer's name for it
    """A group (its help given here) of commands named `name="module:function"`, in the order listed."""
    group = type("LazyGroup", (_LazyGroup,), {"sources": sources})
    return typer.Typer(cls=group, help=help, no_args_is_help=True)
