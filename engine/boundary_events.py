"""Boundary events for trying a points expression when its file loads.

An expensive or ill-typed branch often hides behind a condition (`event.amount > 900000000 ? … : 1`),
so trying an expression on one typical event is not enough. These samples put each attribute the
expression reads at its extremes (the largest amount the event contract accepts, an integer's
min and max, every enum value, true and false, text at its longest, an optional attribute absent),
and the client at every tier, so such a branch runs at load time, where it is refused, rather than
inside an ingest.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable

from engine import events
from engine.schema import AttributeSpec, Programme, Rule

ABSENT = object()  # an optional attribute left out
_INT64 = (-(2 ** 63), 2 ** 63 - 1)  # CEL integers
_STRING_LITERAL = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")
_CLIENT_VALUES = {"tenure_months": (0, 1200)}


def boundary_activations(model: Programme, rule: Rule) -> tuple[list[dict], Callable[[dict], str]]:
    """Typical and boundary activations for `rule`'s points expression, and a way to describe one."""
    spec = model.event_types.get(rule.when.event)
    attributes = dict(spec.attributes) if spec else {}
    code = _STRING_LITERAL.sub('""', rule.award.points or "")
    event_reads = [name for name in attributes if _reads(code, "event", name)]
    client_reads = [name for name in ("tier", "segment", "tenure_months") if _reads(code, "client", name)]
    base = [_typical(model, attributes, number) for number in (1, 7)]
    samples = list(base)
    currency = model.programme.currency
    extremes: dict[str, list] = {name: boundary_values(attributes[name], currency) for name in event_reads}
    for name, values in extremes.items():
        samples.extend(_with(base[0], "event", name, value) for value in values)
    for end in (0, -1):  # every attribute read at its lowest, then at its highest, at once
        combined = base[0]
        for name, values in extremes.items():
            present = [value for value in values if value is not ABSENT]
            if present:
                combined = _with(combined, "event", name, present[end])
        samples.append(combined)
    segments = _segments(model)
    client_values = {"tier": [tier.id for tier in model.tiers], "segment": ["", *segments], **_CLIENT_VALUES}
    for name in client_reads:
        samples.extend(_with(base[0], "client", name, value) for value in client_values[name])

    def describe(activation: dict) -> str:
        shown = [f"{name} {_show(activation['event'].get(name, ABSENT))}" for name in event_reads]
        shown += [f"client.{name} {activation['client'][name]!r}" for name in client_reads]
        return ", ".join(shown) or "typical values"

    return samples, describe


def boundary_values(attribute: AttributeSpec, currency: str) -> list:
    """The values of one attribute worth trying, as an expression sees them (ABSENT when optional)."""
    kind = attribute.type
    if kind == "money":
        values: list = [0, 1, _largest_money_units(currency)]  # 0.01 is seen as 0 whole units
    elif kind == "integer":
        low, high = _integer_range(attribute.min, attribute.max, currency)
        values = sorted({low, high, min(max(0, low), high)})
    elif kind == "enum":
        values = list(attribute.values or [])
    elif kind == "boolean":
        values = [False, True]
    elif kind == "string":
        values = ["x", "x" * events.MAX_TEXT_LENGTH]
    elif kind == "date":
        values = ["0001-01-01", "9999-12-31"]
    else:  # month
        values = ["0001-01", "9999-12"]
    return values + ([ABSENT] if not attribute.required else [])


@functools.cache
def _largest_money_units(currency: str) -> int:
    """The largest amount the event contract accepts in `currency`, in whole units (read, not assumed)."""
    return _largest_accepted(lambda units: _accepts(events.parse_money, str(units), currency, "amount"), 1, 10 ** 40)


@functools.cache
def _integer_range(low: int | None, high: int | None, currency: str) -> tuple[int, int]:
    """The lowest and highest integer the event contract accepts for an attribute with these bounds."""
    spec = AttributeSpec(type="integer", min=low, max=high)

    def accepted(value: int) -> bool:
        return _accepts(events.convert_value, spec, value, currency, "value")

    start = next((value for value in (low, high, 0, 1, -1) if value is not None and accepted(value)), None)
    if start is None:
        return (low or 0, high or 0)
    top = _largest_accepted(accepted, start, _INT64[1])
    bottom = -_largest_accepted(lambda value: accepted(-value), -start, -_INT64[0])
    return bottom, top


def _largest_accepted(accepted: Callable[[int], bool], good: int, limit: int) -> int:
    """The largest value in [good, limit] that `accepted` takes, `good` being taken (binary search)."""
    if accepted(limit):
        return limit
    bad = limit
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if accepted(middle) else (good, middle)
    return good


def _accepts(parse: Callable, *args: object) -> bool:
    try:
        parse(*args)
    except Exception:  # noqa: BLE001 - any refusal, whatever its type, means "not accepted"
        return False
    return True


def _reads(code: str, scope: str, name: str) -> bool:
    """Whether the expression may read scope.name (any indexing such as event["x"] may read anything)."""
    if re.search(rf"(?<![\w.]){scope}\s*\.\s*{re.escape(name)}\b", code):
        return True
    return re.search(rf"(?<![\w.]){scope}\b(?!\s*\.\s*[A-Za-z_])", code) is not None


def _typical(model: Programme, attributes: dict[str, AttributeSpec], number: int) -> dict:
    event: dict = {}
    for name, attribute in attributes.items():
        if attribute.type == "enum":
            event[name] = (attribute.values or [""])[0]
        elif attribute.type == "integer":
            low = attribute.min if attribute.min is not None else 0
            event[name] = min(low + number, attribute.max) if attribute.max is not None else low + number
        else:
            event[name] = {"money": 1_000_000 * number, "string": "sample", "date": "2026-01-01",
                           "month": "2026-01", "boolean": True}[attribute.type]
    return {"event": event, "client": {"tier": model.tiers[0].id, "segment": "", "tenure_months": number}}


def _with(activation: dict, scope: str, name: str, value: object) -> dict:
    changed = {key: dict(values) for key, values in activation.items()}
    if value is ABSENT:
        changed[scope].pop(name, None)
    else:
        changed[scope][name] = value
    return changed


def _segments(model: Programme) -> list[str]:
    onboarded = model.event_types.get("client.onboarded")
    segment = onboarded.attributes.get("segment") if onboarded else None
    return list(segment.values or []) if segment is not None and segment.type == "enum" else []


def _show(value: object) -> str:
    if value is ABSENT:
        return "absent"
    if isinstance(value, str) and len(value) > 20:
        return f"{value[:8]!r}… ({len(value)} characters)"
    return repr(value) if isinstance(value, str) else str(value)
