"""JSON input within bounds: NDJSON lines and HTTP bodies are parsed so that no text (a number of
thousands of digits, NaN, nesting thousands deep, a line of gigabytes) can make the parser raise for a
whole file or batch, run long or allocate much; what is out of bounds rejects its own line or item.

The bounds are documented in the README ("Events"), with the value bounds in engine/events.py.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation

from engine.errors import EventError

MAX_LINE_BYTES = 64 * 1024  # one NDJSON line; a real event is under 2 KiB, the largest legal one under 40 KiB
MAX_JSON_DEPTH = 32  # nested objects and arrays in one event; a valid event has 2 (envelope, data)
MAX_NUMBER_LENGTH = 40  # characters of one JSON number literal (or amount text): int() and Decimal() stay cheap


class UnusableNumber:
    """A JSON number that is kept out of arithmetic: a literal longer than MAX_NUMBER_LENGTH, or NaN/Infinity.

    The parser returns it in place of the value, so the field that holds it is rejected by name
    (an integer of 5,000 digits never reaches int(), which would raise for the whole line).
    """

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        if len(self.text) > MAX_NUMBER_LENGTH:
            return f"a number of {len(self.text):,} characters"
        return self.text

    @property
    def reason(self) -> str:
        """Why the number cannot be used."""
        if len(self.text) > MAX_NUMBER_LENGTH:
            return f"a number of {len(self.text):,} characters (at most {MAX_NUMBER_LENGTH})"
        if self.text in ("NaN", "Infinity", "-Infinity"):
            return f"{self.text} is not a number JSON allows"
        return f"{self.text} is beyond the numbers this engine reads (its exponent is too large)"


def _bounded_int(text: str) -> int | UnusableNumber:
    return int(text) if len(text) <= MAX_NUMBER_LENGTH else UnusableNumber(text)


def _bounded_decimal(text: str) -> Decimal | UnusableNumber:
    if len(text) > MAX_NUMBER_LENGTH:
        return UnusableNumber(text)
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent beyond what Decimal holds (1E999999999999999999999)
        return UnusableNumber(text)


# A string runs to its closing quote or, unterminated, to the end of the text: matched once, in linear time
# (a pattern that needs the closing quote is retried at every quote of an unterminated one: quadratic).
_STRING_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text nests objects and arrays more than `limit` deep (strings ignored); no parsing."""
    if text.count("[") + text.count("{") <= limit:  # the common case, at C speed
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING_LITERAL.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def nesting_depth(value: object) -> int:
    """How deep objects and arrays nest in a parsed JSON value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_text(data: str | bytes) -> str:
    """Bytes as UTF-8 text, or EventError naming the first byte that is not."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"not UTF-8 text (byte {exc.start + 1})") from None


def parse_json(text: str | bytes, max_depth: int | None = MAX_JSON_DEPTH) -> object:
    """Parse JSON text within the bounds: numbers with a fraction become Decimal (never float), number literals
    longer than MAX_NUMBER_LENGTH and NaN/Infinity become UnusableNumber; EventError when it is not JSON.

    With `max_depth` None the nesting is not pre-checked (the parser's recursion limit still holds): the
    caller checks each item's depth itself, so one deep item does not refuse a whole HTTP batch.
    """
    text = parse_text(text)
    if max_depth is not None and json_too_deep(text, max_depth):
        raise EventError(f"not accepted: objects and arrays nested more than {max_depth} deep")
    try:
        return json.loads(text, parse_float=_bounded_decimal, parse_int=_bounded_int, parse_constant=UnusableNumber)
    except json.JSONDecodeError as exc:
        raise EventError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise EventError("not valid JSON here: nested too deeply") from None


def parse_json_line(line: str) -> dict:
    """Parse one NDJSON line within the bounds (see parse_json); it must hold one JSON object."""
    if len(line) > MAX_LINE_BYTES or (len(line) > MAX_LINE_BYTES // 4 and len(line.encode("utf-8", "surrogatepass"))
                                      > MAX_LINE_BYTES):
        raise EventError(f"the line is over {MAX_LINE_BYTES:,} bytes; an event is at most that long")
    value = parse_json(line)
    if not isinstance(value, dict):
        raise EventError(f"expected a JSON object, got {type(value).__name__}")
    return value


_ITEM_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)|[\[\]{},]', re.S)


def json_array_items(text: str) -> list[str] | None:
    """The texts of a JSON array's top-level items, found without parsing (None when `text` is not an array),
    so that an item nested too deep for the parser can be rejected alone."""
    text = text.strip()
    if not text.startswith("["):
        return None
    items: list[str] = []
    depth, start = 0, 1
    for token in _ITEM_TOKEN.finditer(text):
        mark = token.group()
        if mark in "[{":
            depth += 1
        elif mark in "]}":
            depth -= 1
            if depth == 0:
                items.append(text[start:token.start()])
                break
        elif mark == "," and depth == 1:
            items.append(text[start:token.start()])
            start = token.end()
    return [item for item in items if item.strip()]


def parse_json_items(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> list[object]:
    """The items of an HTTP body holding one JSON value or an array of them: each parsed value, or the
    EventError of an item that nests deeper than `max_depth` or is not JSON. EventError for the whole
    body only when it is not UTF-8 or not JSON at all."""
    text = parse_text(body)
    if not json_too_deep(text, max_depth + 1):  # the common case: one parse; the caller checks item depths
        payload = parse_json(text, max_depth=None)
        return payload if isinstance(payload, list) else [payload]
    pieces = json_array_items(text)
    if pieces is None:
        return [EventError(f"not accepted: objects and arrays nested more than {max_depth} deep")]
    items: list[object] = []
    for piece in pieces:
        try:
            items.append(parse_json(piece, max_depth=max_depth))
        except EventError as exc:
            items.append(exc)
    return items
