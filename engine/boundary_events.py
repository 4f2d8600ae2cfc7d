"""Boundary events for trying a points expression when its file loads.

An expensive or ill-typed branch often hides behind a condition (`event.amount > 900000000 ? … : 1`),
so trying an expression on one typical event is not enough. These samples put each attribute the
expression reads at its extremes (the largest amount the event contract accepts, an integer's
min and max, every enum value, true and false, text at its longest, an optional attribute absent),
at each literal the expression compares it with and next to it (`event.term_months == 7 ? …`), and
the client at every tier, so such a branch runs at load time, where it is refused, rather than
inside an ingest.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, timedelta

from engine import events
from engine.errors import EventError
from engine.expression_tokens import CLIENT_FIELDS, compared_literals, reads_any, references
from engine.schema import AttributeSpec, Programme, Rule

ABSENT = object()  # an optional attribute left out
_TENURES = [0, 1200]  # months: a new client and a century-old relationship
_LARGEST_UNITS = 10 ** events.MAX_AMOUNT_INTEGER_DIGITS - 1  # the largest amount accepted, in whole units
# Values tried per attribute for the literals it is compared with (each literal, one below, one
# above): enough for the guards a formula has, and few enough that trying them stays quick.
MAX_COMPARED_VALUES = 24


def boundary_activations(model: Programme, rule: Rule) -> tuple[list[dict], Callable[[dict], str]]:
    """Typical and boundary activations for `rule`'s points expression, and a way to describe one."""
    spec = model.event_types.get(rule.when.event)
    attributes = dict(spec.attributes) if spec else {}
    source = rule.award.points or ""
    read = references(source)
    event_reads = [name for name in attributes if ("event", name) in read or reads_any(source, "event")]
    client_reads = [name for name in CLIENT_FIELDS if ("client", name) in read or reads_any(source, "client")]
    compared = compared_literals(source)
    base = [_typical(model, attributes, number) for number in (1, 7)]
    samples = list(base)
    currency = model.programme.currency
    extremes: dict[str, list] = {name: boundary_values(attributes[name], currency, compared.get(("event", name), []))
                                 for name in event_reads}
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
    tenures = _TENURES + _near(compared.get(("client", "tenure_months"), []), 0, events.MAX_INTEGER)
    client_values = {"tier": [tier.id for tier in model.tiers], "segment": ["", *segments], "tenure_months": tenures}
    for name in client_reads:
        samples.extend(_with(base[0], "client", name, value) for value in client_values[name])

    def describe(activation: dict) -> str:
        shown = [f"{name} {_show(activation['event'].get(name, ABSENT))}" for name in event_reads]
        shown += [f"client.{name} {activation['client'][name]!r}" for name in client_reads]
        return ", ".join(shown) or "typical values"

    return samples, describe


def boundary_values(attribute: AttributeSpec, currency: str, compared: Sequence[object] = ()) -> list:
    """The values of one attribute worth trying, as an expression sees them (ABSENT when optional).

    `compared` are the literals the expression compares the attribute with: each, and the integers
    next to it, is tried too, within what the event contract accepts for the attribute.
    """
    kind = attribute.type
    if kind == "money":  # whole currency units: 0.01 is seen as 0
        values: list = [0, 1, *_near(compared, 0, _LARGEST_UNITS), _LARGEST_UNITS]
    elif kind == "integer":
        low, high = events.integer_range(attribute)
        values = [low, min(max(0, low), high), *_near(compared, low, high), high]
    elif kind == "enum":
        values = list(attribute.values or [])
    elif kind == "boolean":
        values = [False, True]
    elif kind == "string":
        values = ["x", *_accepted(attribute, currency, compared), "x" * events.MAX_TEXT_LENGTH]
    elif kind == "date":
        values = ["0001-01-01", *_days_near(attribute, currency, compared), "9999-12-31"]
    else:  # month
        values = ["0001-01", *_accepted(attribute, currency, compared), "9999-12"]
    return list(dict.fromkeys(values)) + ([ABSENT] if not attribute.required else [])


def _near(compared: Sequence[object], low: int, high: int) -> list[int]:
    """Each integer literal and its neighbours, within [low, high], at most MAX_COMPARED_VALUES of them."""
    near = (value + step for value in compared if isinstance(value, int) for step in (0, -1, 1))
    return list(dict.fromkeys(value for value in near if low <= value <= high))[:MAX_COMPARED_VALUES]


def _accepted(attribute: AttributeSpec, currency: str, compared: Sequence[object]) -> list[str]:
    """The text literals the event contract accepts for this attribute, at most MAX_COMPARED_VALUES."""
    texts = [value for value in compared if isinstance(value, str)][:MAX_COMPARED_VALUES]
    return [text for text in texts if _valid(attribute, currency, text)]


def _days_near(attribute: AttributeSpec, currency: str, compared: Sequence[object]) -> list[str]:
    """Each date literal and the days next to it, as ISO text."""
    days = (events.parse_day(text) for text in _accepted(attribute, currency, compared))
    near = [(day + timedelta(days=step)).isoformat() for day in days if isinstance(day, date)
            and date.min < day < date.max for step in (0, -1, 1)]
    return [text for text in near if _valid(attribute, currency, text)][:MAX_COMPARED_VALUES]


def _valid(attribute: AttributeSpec, currency: str, value: str) -> bool:
    try:
        events.convert_value(attribute, value, currency, "value")
    except EventError:
        return False
    return True


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
