"""The activity-event input contract: the envelope, typed attributes, and their views for matching and CEL."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.errors import EventError, did_you_mean
from engine.schema import AttributeSpec, EventTypeSpec

# ISO 4217 minor units of the currencies whose exponent is not 2.
_MINOR_UNITS = {
    **dict.fromkeys(["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
                     "VUV", "XAF", "XOF", "XPF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}
MAX_TEXT_LENGTH = 200
EARLIEST_YEAR, LATEST_YEAR = 1900, 2999


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of a currency's minor unit (2 for CNY, 0 for JPY, 3 for KWD)."""
    return _MINOR_UNITS.get(currency, 2)


class EventEnvelope(BaseModel):
    """One event as a source system sends it (an NDJSON line or an HTTP body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=128)]
    client_id: Annotated[str, Field(min_length=1, max_length=64)]
    type: Annotated[str, Field(min_length=1, max_length=64)]
    occurred_at: AwareDatetime
    data: dict[str, object] = {}

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _iso_text_with_zone(cls, value: object) -> object:
        if not isinstance(value, str):
            raise ValueError("expected an ISO 8601 timestamp as text, e.g. 2026-03-01T10:00:00Z")
        if _looks_naive(value):
            raise ValueError("timestamp has no time zone; send UTC with a Z or an offset, "
                             "e.g. 2026-03-01T10:00:00Z")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _plausible_year(cls, value: datetime) -> datetime:
        if not EARLIEST_YEAR <= value.astimezone(UTC).year <= LATEST_YEAR:
            raise ValueError(f"year {value.year} is outside {EARLIEST_YEAR}-{LATEST_YEAR}")
        return value

    @field_validator("id", "client_id", "type")
    @classmethod
    def _printable(cls, value: str) -> str:
        _check_text(value)
        return value


def _check_text(value: str) -> None:
    if "\x00" in value:
        raise ValueError("text contains a NUL character")


def _looks_naive(text: str) -> bool:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is None
    except ValueError:
        return False  # let pydantic report the format error


@dataclass(frozen=True)
class Event:
    """A validated event: typed attribute values (Decimal money, date, int), UTC time."""

    id: str
    client_id: str
    type: str
    occurred_at: datetime
    data: dict[str, object]

    def canonical(self) -> dict:
        """JSON-ready form used for storage and for the content hash."""
        return {"id": self.id, "client_id": self.client_id, "type": self.type,
                "occurred_at": self.occurred_at.isoformat(), "data": {k: _jsonable(v) for k, v in sorted(self.data.items())}}

    def canonical_json(self) -> str:
        """The canonical form as compact JSON text (what is stored and hashed)."""
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))


def content_digest(canonical_json: str) -> str:
    """SHA-256 of an event's canonical JSON: the same event sent twice (even as 100 vs "100.00") hashes the same."""
    return hashlib.sha256(canonical_json.encode()).hexdigest()


def _jsonable(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # 100.50 and 100.5 are one amount: one spelling
    if isinstance(value, date):
        return value.isoformat()
    return value


def parse_json_line(line: str) -> dict:
    """Parse one NDJSON line; numbers with a fraction become Decimal, never float."""
    try:
        value = json.loads(line, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise EventError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise EventError("not valid JSON here: nested too deeply") from None
    if not isinstance(value, dict):
        raise EventError(f"expected a JSON object, got {type(value).__name__}")
    return value


def parse_envelope(raw: dict) -> EventEnvelope:
    """Validate the envelope fields, naming the first bad field."""
    try:
        return EventEnvelope.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field; an event has id, client_id, type, occurred_at and data"
        elif err["type"] == "missing":
            message = "missing"
        raise EventError(message, field) from None


def validate_event(raw: dict, event_types: dict[str, EventTypeSpec], currency: str) -> Event:
    """Turn a raw JSON object into an Event, or raise EventError naming the field and what was expected."""
    return typed_event(parse_envelope(raw), event_types, currency)


def typed_event(envelope: EventEnvelope, event_types: dict[str, EventTypeSpec], currency: str) -> Event:
    """Check an envelope's type and attributes against the programme's event types."""
    spec = event_types.get(envelope.type)
    if spec is None:
        raise EventError(f"unknown event type {envelope.type!r}{did_you_mean(envelope.type, event_types)}; "
                         f"expected one of: {', '.join(sorted(event_types))}", "type")
    data = typed_attributes(spec, envelope.data, currency)
    if "currency" in data and data["currency"] != currency:
        raise EventError(f"the programme runs in {currency}; this event is in {data['currency']}", "data.currency")
    return Event(envelope.id, envelope.client_id, envelope.type, envelope.occurred_at.astimezone(UTC), data)


def typed_attributes(spec: EventTypeSpec, data: dict[str, object], currency: str) -> dict[str, object]:
    """Check each attribute against its declared type and convert it (money to Decimal, dates to date)."""
    unknown = sorted(set(data) - set(spec.attributes))
    if unknown:
        name = unknown[0]
        raise EventError(f"unknown attribute{did_you_mean(name, spec.attributes)}; expected: "
                         f"{', '.join(spec.attributes) or 'no attributes'}", f"data.{name}")
    typed: dict[str, object] = {}
    for name, attribute in spec.attributes.items():
        if name not in data or data[name] is None:
            if attribute.required:
                raise EventError(f"missing; expected {describe(attribute)}", f"data.{name}")
            continue
        typed[name] = convert_value(attribute, data[name], currency, f"data.{name}")
    return typed


def describe(attribute: AttributeSpec) -> str:
    """What a value of this attribute looks like, for error messages."""
    if attribute.type == "enum":
        return f"one of {', '.join(attribute.values or [])}"
    if attribute.type == "integer":
        bounds = [f">= {attribute.min}" if attribute.min is not None else "",
                  f"<= {attribute.max}" if attribute.max is not None else ""]
        return " ".join(["a whole number", *filter(None, bounds)])
    return {
        "money": "a positive amount as a decimal string or number, e.g. \"30000000.00\"",
        "date": "a date YYYY-MM-DD",
        "month": "a month YYYY-MM",
        "string": "a non-empty string",
        "boolean": "true or false",
    }[attribute.type]


def convert_value(attribute: AttributeSpec, value: object, currency: str, field: str) -> object:
    """Convert one attribute value to its Python type, or raise EventError."""
    kind = attribute.type
    if kind == "money":
        return parse_money(value, currency, field)
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventError(f"expected {describe(attribute)}, got {value!r}", field)
        if (attribute.min is not None and value < attribute.min) or (attribute.max is not None and value > attribute.max):
            raise EventError(f"{value} is out of range; expected {describe(attribute)}", field)
        return value
    if kind == "enum":
        if not isinstance(value, str) or value not in (attribute.values or []):
            hint = did_you_mean(str(value), attribute.values or [])
            raise EventError(f"unknown value {value!r}{hint}; expected {describe(attribute)}", field)
        return value
    if kind == "string":
        if not isinstance(value, str) or not value.strip():
            raise EventError(f"expected {describe(attribute)}, got {value!r}", field)
        if len(value) > MAX_TEXT_LENGTH or "\x00" in value:
            raise EventError(f"expected at most {MAX_TEXT_LENGTH} characters with no NUL character", field)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise EventError(f"expected {describe(attribute)}, got {value!r}", field)
        return value
    if kind == "date":
        day = parse_day(value)
        if day is None:
            raise EventError(f"expected {describe(attribute)}, got {value!r}", field)
        return day
    if kind == "month":
        if parse_day(f"{value}-01") is None:
            raise EventError(f"expected {describe(attribute)}, got {value!r}", field)
        return str(value)
    raise AssertionError(kind)


def parse_day(value: object) -> date | None:
    """A date from ISO text YYYY-MM-DD (or a date itself); None when it is not one."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    text = str(value)
    try:
        return date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        return None


def parse_money(value: object, currency: str, field: str) -> Decimal:
    """An exact, positive amount in `currency` (decimal string or integer, never a float)."""
    if isinstance(value, bool) or isinstance(value, float) or not isinstance(value, (str, int, Decimal)):
        raise EventError(f"expected an amount as a decimal string or number, got {value!r}", field)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise EventError(f"expected an amount such as \"30000000.00\", got {value!r}", field) from None
    if not amount.is_finite() or amount <= 0:
        raise EventError(f"amount must be greater than zero, got {value!r}", field)
    places = minor_unit_exponent(currency)
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise EventError(f"amount {value!r} has more than {places} decimal places for {currency}", field)
    if amount >= Decimal("1e15"):
        raise EventError(f"amount {value!r} is implausibly large (at most 15 digits before the point)", field)
    return amount


def matching_value(attribute_type: str, value: object, currency: str) -> object:
    """The form the matching core compares: exact integers for money (minor units) and dates."""
    if attribute_type == "money":
        return int(Decimal(value).scaleb(minor_unit_exponent(currency)))  # type: ignore[arg-type]
    if attribute_type == "date":
        day = value if isinstance(value, date) else date.fromisoformat(str(value))
        return day.year * 10000 + day.month * 100 + day.day
    if attribute_type == "month":
        year, month = str(value).split("-")
        return int(year) * 100 + int(month)
    return value


def expression_value(attribute_type: str, value: object) -> object:
    """The form CEL expressions see: money as whole currency units (int), dates as ISO text."""
    if attribute_type == "money":
        return int(value)  # type: ignore[call-overload]  # Decimal → int truncates: documented rounding
    if attribute_type == "date":
        return value.isoformat()  # type: ignore[union-attr]
    return value
