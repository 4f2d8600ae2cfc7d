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

# Rule and case files are untrusted input (rule files arrive by hot reload): reading one is bounded in
# size, in the values it expands to and in depth, so a hostile file is refused quickly with little
# memory. Aliases are not counted apart: the values they expand to are (an alias bomb is refused by
# MAX_NODES), and generated files (PyYAML's dump writes `&id001`/`*id001` for every shared list) use
# many. Documented in rules/README.md, "Limits".
MAX_FILE_BYTES = 4 * 1024 * 1024  # the 1,000-rule benchmark file is about 0.7 MiB
MAX_NODES = 250_000  # values (keys, scalars, lists, mappings), each alias expansion counted; benchmark: 45k
MAX_DEPTH = 32  # nesting of lists and mappings; the deepest key path of the format is under 10


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


def size_problem(file: str, size: int) -> Problem | None:
    """A Problem when a rule file of `size` bytes is over MAX_FILE_BYTES, else None."""
    if size <= MAX_FILE_BYTES:
        return None
    return Problem(file, None, "", f"the file is {size:,} bytes; a rule or case file may have at most "
                                   f"{MAX_FILE_BYTES:,} bytes ({MAX_FILE_BYTES // (1024 * 1024)} MiB): split it or "
                                   "remove unused parts")


def load_yaml(file: str, text: str, fast: bool = True) -> YamlDocument:
    """Parse YAML text, refusing duplicate keys and invalid values, and record each key's line and column.

    Bounded: at most MAX_FILE_BYTES, MAX_NODES values counting alias expansions, and MAX_DEPTH levels
    of nesting; a file past a bound is refused with the place. `fast` composes at once, building
    every node before they are counted (a 1 MiB flow list costs about 200 MiB): only for rule files,
    which are always read in a trial process with a memory limit first. Otherwise (case files) the
    parser's events are counted first, one at a time, and nothing is built past the bound.
    """
    too_big = size_problem(file, len(text) if len(text) * 4 <= MAX_FILE_BYTES else len(text.encode("utf-8")))
    if too_big:
        raise_problems([too_big])
    loader = _Loader(text)
    try:
        if not fast:
            _count_events(file, text)
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise_problems([_yaml_problem(file, exc)])
    except _LimitReached as exc:
        raise_problems([exc.problem])
    finally:
        loader.dispose()
    if root is None:
        raise_problems([Problem(file, 1, "", "the file is empty; expected a programme definition", 1)])
    over = _Measure(file).problem(root)
    if over:
        raise_problems([over])
    reader = _Reader(file, loader)
    reader.lines[()], reader.columns[()] = root.start_mark.line + 1, root.start_mark.column + 1
    data = reader.read(root, ())
    if reader.problems:
        raise_problems(reader.problems)
    if reader.merges:  # `<<: *anchor` merge keys: let PyYAML apply them
        try:
            data = loader.construct_document(root)
        except yaml.YAMLError as exc:  # a merge of something that is not a mapping
            raise_problems([_yaml_problem(file, exc)])
    return YamlDocument(file, data, reader.lines, reader.columns)


def _yaml_problem(file: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    reason = getattr(exc, "problem", None) or str(exc)
    return Problem(file, line, "", f"not valid YAML: {reason}", column)


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Measure:
    """Counts what reading a composed document would cost, before reading it.

    The composer shares one node between an anchor and its aliases, so composing an alias bomb is
    cheap; expanding it is what costs. The expanded size of each distinct node is computed once
    (memoised), so measuring costs as much as the file's text, whatever its aliases expand to.
    """

    def __init__(self, file: str):
        self.file = file
        self.sizes: dict[int, int] = {}
        self._open: set[int] = set()  # the nodes being measured: one met again inside itself is a cycle

    def problem(self, root: yaml.Node) -> Problem | None:
        """The first bound `root` crosses, or None."""
        try:
            total = self._size(root, 0)
        except _LimitReached as exc:
            return exc.problem
        if total > MAX_NODES:
            return self._problem(root, f"the document expands to {total:,} values (aliases counted each time they "
                                       f"are used); at most {MAX_NODES:,}: write the content out once, or use "
                                       "fewer aliases")
        return None

    def _size(self, node: yaml.Node, depth: int) -> int:
        if id(node) in self._open:
            raise _LimitReached(self._problem(node, "an alias (*name) refers to the list or mapping that contains "
                                                    "it: the value would never end"))
        known = self.sizes.get(id(node))
        if known is not None:  # the same node again: an alias (`*name`)
            return known
        if depth > MAX_DEPTH:
            raise _LimitReached(_problem(self.file, node.start_mark, _TOO_DEEP))
        size = 1
        self._open.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                size += self._size(item, depth + 1)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                size += self._size(key, depth + 1) + self._size(value, depth + 1)
        self._open.discard(id(node))
        self.sizes[id(node)] = size
        if size > MAX_NODES:  # stop early: the total can only be larger
            raise _LimitReached(self._problem(node, f"this value expands to {size:,} values (aliases counted each "
                                                    f"time they are used); a rule file may expand to at most "
                                                    f"{MAX_NODES:,}: write the content out once, or use fewer aliases"))
        return size

    def _problem(self, node: yaml.Node, message: str) -> Problem:
        return _problem(self.file, node.start_mark, message)


_TOO_DEEP = f"lists and mappings nest more than {MAX_DEPTH} levels deep here; the format needs far fewer"


def _problem(file: str, mark: yaml.Mark, message: str) -> Problem:
    return Problem(file, mark.line + 1, "", message, mark.column + 1)


_VALUE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)
_OPEN_EVENTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE_EVENTS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _count_events(file: str, text: str) -> None:
    """Refuse a document of more than MAX_NODES values or MAX_DEPTH levels from the parser's events, taken
    one at a time, before any node is built: about 0.4 s and a few MiB for 250,000 values."""
    parser = _Loader(text)
    values = depth = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, _VALUE_EVENTS):
                values += 1
                if values > MAX_NODES:
                    raise _LimitReached(_problem(file, event.start_mark, f"more than {MAX_NODES:,} values by here; "
                                                                         f"a file may have at most {MAX_NODES:,}"))
            if isinstance(event, _OPEN_EVENTS):
                depth += 1
                if depth > MAX_DEPTH + 1:  # the root is at depth 0, as _Measure counts
                    raise _LimitReached(_problem(file, event.start_mark, _TOO_DEEP))
            elif isinstance(event, _CLOSE_EVENTS):
                depth -= 1
    finally:
        parser.dispose()


class _LimitReached(Exception):
    """Stops measuring at the first bound crossed."""

    def __init__(self, problem: Problem):
        self.problem = problem


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
