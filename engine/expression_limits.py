"""Static limits of points expressions, checked on the text before the CEL parser sees it.

Rule files are untrusted input, and an expression is evaluated inside ingest's write transaction,
where its budget is measured only after it returns: these limits, not the budget, bound its work.
Measured in child processes (rules/README.md, "Limits"): the CEL parser overflows its stack (a
segfault, which kills the process) on a chain of about 13,000 operators in the main thread, and of
about 300 in a thread with a 256 KiB stack; comprehensions multiply their work (nine nested `.all`
over ten items ran for minutes) and, chained with a concatenation in their body, double a value at
each link (25 links of `.map(a, a + a)` would build gigabytes). Real points expressions use a
handful of tokens, so these limits leave them plenty of room.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.expression_tokens import SCOPES, Token, tokens

MAX_SOURCE_CHARS = 1_000
MAX_TOKENS = 250
MAX_OPERATORS = 100  # + - * / % == != < <= > >= && || ! ? . [ in, and each call's (
MAX_BRACKET_DEPTH = 12  # ( [ { nested in one another
MAX_COMPREHENSIONS = 2  # all, exists, exists_one, map, filter in one expression, nested or chained
# Items of all list and map literals together: a comprehension ranges over at most this many, so
# two of them run their body at most (32 / 2)² = 256 times.
MAX_LITERAL_ITEMS = 32
COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter"})
# `matches` compiles its regular expression at every call: 256 calls of one pattern took 0.4 s.
REFUSED_FUNCTIONS = {"matches": "regular expressions (matches) are not allowed in points expressions: test text "
                                "attributes with conditions under when.where (eq, in) instead"}
_OPERATORS = frozenset("+ - * / % == != < <= > >= && || ! ? . [ ( in".split())
_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}")
# After one of these (or at the start) a `[` opens a list literal; after a name, `)` or `]` it indexes.
_BEFORE_LITERAL = frozenset("+ - * / % == != < <= > >= && || ! ? : , ( [ { in".split())


@dataclass
class _Open:
    comprehension: bool
    literal: bool
    variable: str | None = None  # the name a comprehension binds


def static_problem(source: str) -> str | None:
    """Why `source` is over a static limit (with the column), or None; linear in the text, never crashes."""
    if len(source) > MAX_SOURCE_CHARS:
        return (f"the points expression is {len(source):,} characters long; at most {MAX_SOURCE_CHARS:,} "
                "(split the logic over several rules)")
    lexemes = tokens(source)
    if len(lexemes) > MAX_TOKENS:
        return (f"the points expression has more than {MAX_TOKENS} tokens (at column {lexemes[MAX_TOKENS].column}); "
                f"at most {MAX_TOKENS}")
    operators = items = comprehensions = 0
    stack: list[_Open] = []
    previous: str | None = None
    for index, token in enumerate(lexemes):
        kind, text, column = token.kind, token.text, token.column
        if kind == "other":
            return f"{text!r} (at column {column}) is not part of a CEL expression"
        if text == "(" and previous in REFUSED_FUNCTIONS:
            return f"{REFUSED_FUNCTIONS[previous]} (at column {column})"
        if kind == "name" and text in SCOPES and previous not in (".", "in") and not _member_follows(lexemes, index):
            return (f"{text} (at column {column}) can only be read one value at a time: {text}.NAME, {text}[\"NAME\"] "
                    f"or \"NAME\" in {text}")
        if kind == "name" and previous == "(" and stack and stack[-1].comprehension and stack[-1].variable is None:
            stack[-1].variable = text
        elif kind == "name" and previous != "." and _repeats_variable(stack, text):
            return (f"{text} (at column {column}) is a comprehension's variable inside a list or map literal: that "
                    "repeats each item, and chained, multiplies the size of the result")
        if previous in ("[", "{") and stack and stack[-1].literal and text not in _CLOSING:
            items += 1  # the first item of a literal; each comma adds one more
        if text in _OPERATORS and (kind == "operator" or text == "in"):
            operators += 1
            if operators > MAX_OPERATORS:
                return (f"the points expression has more than {MAX_OPERATORS} operators and calls (at column "
                        f"{column}); at most {MAX_OPERATORS}")
        if kind == "operator" and text == "+" and any(opened.comprehension for opened in stack):
            return (f"+ (at column {column}) inside a comprehension (all, exists, exists_one, map, filter) is not "
                    "allowed: joining text or lists there multiplies their size at every item and every link")
        if kind == "operator" and text in _OPENING:
            comprehension = text == "(" and previous in COMPREHENSIONS
            literal = text == "{" or (text == "[" and (previous is None or previous in _BEFORE_LITERAL))
            stack.append(_Open(comprehension=comprehension, literal=literal))
            if len(stack) > MAX_BRACKET_DEPTH:
                return f"brackets nest more than {MAX_BRACKET_DEPTH} deep (at column {column}); at most {MAX_BRACKET_DEPTH}"
            comprehensions += comprehension
            if comprehensions > MAX_COMPREHENSIONS:
                return (f"the points expression has more than {MAX_COMPREHENSIONS} comprehensions (all, exists, "
                        f"exists_one, map, filter), nested or chained (at column {column}); at most "
                        f"{MAX_COMPREHENSIONS}, as each one multiplies the work")
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


def _repeats_variable(stack: list[_Open], name: str) -> bool:
    """Whether `name` is bound by an open comprehension and stands inside a literal opened within it."""
    for depth, opened in enumerate(stack):
        if opened.comprehension and opened.variable == name:
            return any(inner.literal for inner in stack[depth + 1:])
    return False


def _member_follows(lexemes: list[Token], index: int) -> bool:
    """Whether the scope name at `index` is followed by .NAME (not a method call such as .all) or [."""
    after = lexemes[index + 1: index + 4]
    if after and after[0].is_operator("["):
        return True
    return (len(after) >= 2 and after[0].is_operator(".") and after[1].kind == "name"
            and not (len(after) == 3 and after[2].is_operator("(")))
