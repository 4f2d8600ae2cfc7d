"""The lexemes of a CEL points expression, read as the CEL grammar reads them, for every check on its text.

One scanner serves the static limits, the names an expression reads and the literals it compares
them with: a scanner that disagreed with CEL about where a string or a comment ends could hide code
from the limits (a `)` inside a `// comment` once closed a bracket in the count).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

CLIENT_FIELDS = ("tier", "segment", "tenure_months")
SCOPES = ("event", "client")

# CEL's lexer (CEL.g4): whitespace and `//` comments to the end of the line are skipped; strings
# (raw ones have no escapes; triple-quoted ones span lines; others end at a line break), numbers,
# ASCII names and operators. Anything else is "other": not CEL, refused by the limits.
_TOKEN = re.compile(r'''
    (?P<space>[ \t\r\n\f]+|//[^\n]*)
  | (?P<string>(?:[rR][bB]?|[bB][rR])(?:"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"[^"\r\n]*"|'[^'\r\n]*')
              |[bB]?(?:"""(?:[^\\]|\\.)*?"""|\'\'\'(?:[^\\]|\\.)*?\'\'\'
                   |"(?:[^"\\\r\n]|\\.)*"|'(?:[^'\\\r\n]|\\.)*'))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|[0-9]+[uU]?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<operator>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,\[\](){}])
  | (?P<other>.)
''', re.VERBOSE | re.DOTALL)
_COMPARISONS = frozenset("== != < <= > >=".split())


@dataclass(frozen=True)
class Token:
    """One lexeme: its kind (string, number, name, operator or other), its text and its 1-based column."""

    kind: str
    text: str
    column: int

    def is_operator(self, *texts: str) -> bool:
        """Whether this is one of the operators `texts` (a string "(" is not)."""
        return self.kind == "operator" and self.text in texts


def tokens(source: str) -> list[Token]:
    """The lexemes of `source`, without whitespace and comments; linear in the text."""
    return [Token(match.lastgroup, match.group(), match.start() + 1)  # type: ignore[arg-type]
            for match in _TOKEN.finditer(source) if match.lastgroup != "space"]


def references(source: str) -> list[tuple[str, str]]:
    """Each (scope, name) the expression reads as event.NAME or client.NAME, in order, once."""
    found = _scope_reads(tokens(source))
    return list(dict.fromkeys((scope, name) for scope, name in found if name))


def reads_any(source: str, scope: str) -> bool:
    """Whether the expression may read any member of `scope` (event["x"], "x" in event)."""
    return any(found == scope and not name for found, name in _scope_reads(tokens(source)))


def _scope_reads(lexemes: list[Token]) -> Iterator[tuple[str, str]]:
    """(scope, name) for scope.name, (scope, "") for any other use of event or client."""
    for index, token in enumerate(lexemes):
        if token.kind != "name" or token.text not in SCOPES or (index and lexemes[index - 1].is_operator(".")):
            continue
        after = lexemes[index + 1: index + 3]
        dotted = len(after) == 2 and after[0].is_operator(".") and after[1].kind == "name"
        yield token.text, after[1].text if dotted else ""


def compared_literals(source: str) -> dict[tuple[str, str], list[object]]:
    """The literals each scope.name is compared with (==, !=, <, <=, >, >=, in [...]), per (scope, name)."""
    lexemes = tokens(source)
    compared: dict[tuple[str, str], list[object]] = {}
    for index in range(len(lexemes) - 2):
        first, dot, name = lexemes[index: index + 3]
        if first.kind != "name" or first.text not in SCOPES or not dot.is_operator(".") or name.kind != "name":
            continue
        if index and lexemes[index - 1].is_operator("."):
            continue
        values = compared.setdefault((first.text, name.text), [])
        after, before = lexemes[index + 3:], lexemes[:index]
        if after and after[0].kind == "operator" and after[0].text in _COMPARISONS:
            values.extend(_literal(after[1:3] if len(after) > 1 and after[1].is_operator("-") else after[1:2]))
        elif len(after) > 1 and after[0].kind == "name" and after[0].text == "in" and after[1].is_operator("["):
            values.extend(_list_literal(after[2:]))
        if before and before[-1].kind == "operator" and before[-1].text in _COMPARISONS:
            values.extend(_literal(before[-3:-1]) if len(before) >= 3 and before[-3].is_operator("-")
                          else _literal(before[-2:-1]))
    return {key: values for key, values in compared.items() if values}


def _list_literal(lexemes: list[Token]) -> list[object]:
    values: list[object] = []
    item: list[Token] = []
    for token in lexemes:
        if token.is_operator(",", "]"):
            values.extend(_literal(item))
            item = []
            if token.text == "]":
                break
        else:
            item.append(token)
            if len(item) > 2:  # not a literal: the list is not one of literals
                break
    return values


def _literal(lexemes: list[Token]) -> list[object]:
    """The value of a literal number (with its sign) or plain string, as [value], or [] for anything else."""
    sign = 1
    if len(lexemes) == 2 and lexemes[0].is_operator("-"):
        sign, lexemes = -1, lexemes[1:]
    if len(lexemes) != 1:
        return []
    token = lexemes[0]
    if token.kind == "number":
        text = token.text.rstrip("uU")
        try:
            return [sign * int(text, 0)]
        except ValueError:
            return []  # a double: no attribute the expression sees is one
    if token.kind == "string" and sign == 1 and token.text[0] in "\"'" and "\\" not in token.text:
        quote = 3 if token.text[:3] in ('"""', "'''") else 1
        return [token.text[quote:-quote]]
    return []
