"""Static limits of points expressions, checked on the text before the CEL parser sees it.

Rule files are untrusted input. Measured in child processes (rules/README.md, "Limits"): the CEL
parser overflows its stack (a segfault, which kills the process) on a chain of about 13,000
operators in the main thread, and of about 300 in a thread with a 256 KiB stack; nested
comprehensions multiply their work (nine nested `.all` over ten items ran for minutes). Real points
expressions use a handful of tokens, so these limits leave them plenty of room.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SOURCE_CHARS = 1_000
MAX_TOKENS = 250
MAX_OPERATORS = 100  # + - * / % == != < <= > >= && || ! ? . [ in, and each call's (
MAX_BRACKET_DEPTH = 12  # ( [ { nested in one another
MAX_COMPREHENSION_DEPTH = 2  # all, exists, exists_one, map, filter nested in one another
# Items of all list and map literals together: a comprehension ranges over at most this many, so
# two nested ones run their body at most (32 / 2)² = 256 times.
MAX_LITERAL_ITEMS = 32
COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter"})
# `matches` compiles its regular expression at every call: 256 calls of one pattern took 0.4 s.
REFUSED_FUNCTIONS = {"matches": "regular expressions (matches) are not allowed in points expressions: test text "
                                "attributes with conditions under when.where (eq, in) instead"}

# CEL lexemes, enough to count: strings (raw ones have no escapes; triple-quoted ones span lines), numbers, names, operators.
_TOKEN = re.compile(r'''
    (?P<space>\s+)
  | (?P<raw>(?:[rR][bB]?|[bB][rR])(?:"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"[^"\n]*"|'[^'\n]*'))
  | (?P<string>[bB]?(?:"""(?:[^\\]|\\.)*?"""|\'\'\'(?:[^\\]|\\.)*?\'\'\'
                   |"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[uU]?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<operator>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,\[\](){}])
  | (?P<other>.)
''', re.VERBOSE | re.DOTALL)
_OPERATORS = frozenset("+ - * / % == != < <= > >= && || ! ? . [ ( in".split())
_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}")
# After one of these (or at the start) a `[` opens a list literal; after a name, `)` or `]` it indexes.
_BEFORE_LITERAL = frozenset("+ - * / % == != < <= > >= && || ! ? : , ( [ { in".split())


@dataclass
class _Open:
    comprehension: bool
    literal: bool


def static_problem(source: str) -> str | None:
    """Why `source` is over a static limit (with the column), or None; linear in the text, never crashes."""
    if len(source) > MAX_SOURCE_CHARS:
        return (f"the points expression is {len(source):,} characters long; at most {MAX_SOURCE_CHARS:,} "
                "(split the logic over several rules)")
    tokens = operators = items = 0
    stack: list[_Open] = []
    previous: str | None = None
    for match in _TOKEN.finditer(source):
        kind, text = match.lastgroup, match.group()
        if kind == "space":
            continue
        tokens += 1
        column = match.start() + 1
        if tokens > MAX_TOKENS:
            return f"the points expression has more than {MAX_TOKENS} tokens (at column {column}); at most {MAX_TOKENS}"
        if text == "(" and previous in REFUSED_FUNCTIONS:
            return f"{REFUSED_FUNCTIONS[previous]} (at column {column})"
        if previous in ("[", "{") and stack and stack[-1].literal and text not in _CLOSING:
            items += 1  # the first item of a literal; each comma adds one more
        if text in _OPERATORS and (kind == "operator" or text == "in"):
            operators += 1
            if operators > MAX_OPERATORS:
                return (f"the points expression has more than {MAX_OPERATORS} operators and calls (at column "
                        f"{column}); at most {MAX_OPERATORS}")
        if kind == "operator" and text in _OPENING:
            literal = text == "{" or (text == "[" and (previous is None or previous in _BEFORE_LITERAL))
            stack.append(_Open(comprehension=text == "(" and previous in COMPREHENSIONS, literal=literal))
            if len(stack) > MAX_BRACKET_DEPTH:
                return f"brackets nest more than {MAX_BRACKET_DEPTH} deep (at column {column}); at most {MAX_BRACKET_DEPTH}"
            depth = sum(opened.comprehension for opened in stack)
            if depth > MAX_COMPREHENSION_DEPTH:
                return (f"comprehensions (all, exists, exists_one, map, filter) nest {depth} deep (at column "
                        f"{column}); at most {MAX_COMPREHENSION_DEPTH}, as each level multiplies the work")
        elif kind == "operator" and text in _CLOSING:
            if stack:
                stack.pop()
        elif text == "," and kind == "operator" and stack and stack[-1].literal:
            items += 1
        if items > MAX_LITERAL_ITEMS:
            return (f"list and map literals have more than {MAX_LITERAL_ITEMS} items in all (at column {column}); "
                    f"at most {MAX_LITERAL_ITEMS}")
        previous = text if kind in ("operator", "name") else kind
    return None
