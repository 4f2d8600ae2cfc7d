"""YAML loading that remembers the line of every key, so errors can point at it."""
from __future__ import annotations

from typing import Any

import yaml

from engine.errors import Problem, RuleFileError

try:  # the C loader is several times faster; fall back where libyaml is missing
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """Render a key path the way an editor thinks of it: tiers[2].benefits.fast_track."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class YamlDocument:
    """A parsed YAML document plus the line number (1-based) of each key path."""

    def __init__(self, file: str, data: Any, lines: dict[Path, int]):
        self.file = file
        self.data = data
        self.lines = lines

    def line_of(self, path: Path) -> int | None:
        """Line of the deepest known prefix of `path` (an error on a missing key points at its parent)."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:cut]))
            if line is not None:
                return line
        return None

    def problem(self, path: Path, message: str) -> Problem:
        """A Problem located at `path` in this document."""
        return Problem(self.file, self.line_of(path), format_path(path), message)


def load_yaml(file: str, text: str) -> YamlDocument:
    """Parse YAML text, refusing duplicate keys, and record each key's line."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise_problems([Problem(file, line, "", f"not valid YAML: {reason}")])
    if root is None:
        raise_problems([Problem(file, 1, "", "the file is empty; expected a programme definition")])
    lines: dict[Path, int] = {(): root.start_mark.line + 1}
    problems: list[Problem] = []
    _walk(root, (), lines, problems, file)
    if problems:
        raise_problems(problems)
    data = yaml.load(text, Loader=_Loader)
    return YamlDocument(file, data, lines)


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], problems: list[Problem], file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(file, key_node.start_mark.line + 1, format_path(path),
                                        "a key must be plain text, not a list or mapping"))
                continue
            key = key_node.value
            child = path + (key,)
            if key in seen:
                problems.append(Problem(file, key_node.start_mark.line + 1, format_path(child),
                                        "duplicate key; each key may appear once"))
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = path + (index,)
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines, problems, file)


def raise_problems(problems: list[Problem]) -> None:
    """Raise a RuleFileError carrying `problems`."""
    raise RuleFileError(problems)
