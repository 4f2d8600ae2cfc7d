"""YAML loading that remembers the line and column of every key, so errors can point at it."""
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
    """A parsed YAML document plus the line and column (both 1-based) of each key path."""

    def __init__(self, file: str, data: Any, lines: dict[Path, int], columns: dict[Path, int] | None = None):
        self.file = file
        self.data = data
        self.lines = lines
        self.columns = columns or {}

    def position_of(self, path: Path) -> tuple[int | None, int | None]:
        """(line, column) of the deepest known prefix of `path` (an error on a missing key points at its parent)."""
        for cut in range(len(path), -1, -1):
            prefix = tuple(path[:cut])
            line = self.lines.get(prefix)
            if line is not None:
                return line, self.columns.get(prefix)
        return None, None

    def line_of(self, path: Path) -> int | None:
        """Line of the deepest known prefix of `path`."""
        return self.position_of(path)[0]

    def problem(self, path: Path, message: str, severity: str = "error") -> Problem:
        """A Problem located at `path` in this document."""
        line, column = self.position_of(path)
        return Problem(self.file, line, format_path(path), message, column, severity)

    def warning(self, path: Path, message: str) -> Problem:
        """A warning located at `path` in this document."""
        return self.problem(path, message, "warning")


def load_yaml(file: str, text: str) -> YamlDocument:
    """Parse YAML text, refusing duplicate keys and invalid values, and record each key's line and column."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise_problems([Problem(file, line, "", f"not valid YAML: {reason}", column)])
    finally:
        loader.dispose()
    if root is None:
        raise_problems([Problem(file, 1, "", "the file is empty; expected a programme definition", 1)])
    reader = _Reader(file, loader)
    reader.lines[()], reader.columns[()] = root.start_mark.line + 1, root.start_mark.column + 1
    data = reader.read(root, ())
    if reader.problems:
        raise_problems(reader.problems)
    if reader.merges:  # `<<: *anchor` merge keys: let PyYAML apply them
        data = loader.construct_document(root)
    return YamlDocument(file, data, reader.lines, reader.columns)


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Reader:
    """Builds the data from composed nodes (the text is parsed once) while recording where each key path is."""

    def __init__(self, file: str, loader: Any):
        self.file = file
        self.loader = loader
        self.lines: dict[Path, int] = {}
        self.columns: dict[Path, int] = {}
        self.problems: list[Problem] = []
        self.merges = False

    def read(self, node: yaml.Node, path: Path) -> Any:
        """The value of `node` at `path`; records positions and problems below it."""
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                child = path + (index,)
                self._record(child, item)
                items.append(self.read(item, child))
            return items
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        mapping: dict = {}
        seen: set[str] = set()
        for key_node, value_node in node.value:
            mark = key_node.start_mark
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, path, "a key must be plain text, not a list or mapping")
                continue
            if key_node.tag == _MERGE_TAG:
                self.merges = True
                continue
            key = key_node.value
            child = path + (key,)
            if key in seen:
                self.problems.append(Problem(self.file, mark.line + 1, format_path(child),
                                             "duplicate key; each key may appear once", mark.column + 1))
            seen.add(key)
            self._record(child, key_node)
            mapping[self._scalar(key_node, child)] = self.read(value_node, child)
        return mapping

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        if node.tag == _STR_TAG:
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:  # a date such as 2025-02-30
            self._problem(node, path, f"not a valid value {node.value!r}: {exc}")
            return None

    def _record(self, path: Path, node: yaml.Node) -> None:
        self.lines[path] = node.start_mark.line + 1
        self.columns[path] = node.start_mark.column + 1

    def _problem(self, node: yaml.Node, path: Path, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.file, mark.line + 1, format_path(path), message, mark.column + 1))


def raise_problems(problems: list[Problem]) -> None:
    """Raise a RuleFileError carrying `problems`."""
    raise RuleFileError(problems)
