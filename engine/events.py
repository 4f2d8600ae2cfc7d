"""The activity-event input contract: the envelope, typed attributes, and their views for matching and CEL."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.errors import EventError, did_you_mean
from engine.json_input import MAX_NUMBER_LENGTH, UnusableNumber
from engine.schema import AttributeSpec, EventTypeSpec

# ISO 4217 minor units of the currencies whose exponent is not 2.
_MINOR_UNITS = {
    **dict.fromkeys(["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
                     "VUV", "XAF", "XOF", "XPF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}

# --- Bounds on every input value (README "Events" gives each with its reason). ---------------------------
# Each is checked before any conversion or arithmetic on the value, so no value can make a parser or
# Decimal raise, run long or allocate much; a value outside them rejects its own line or item only.
# The bounds of the JSON text itself (line length, nesting, number literals) are in engine/json_input.py.
MAX_TEXT_LENGTH = 200  # a string attribute
MAX_AMOUNT_INTEGER_DIGITS = 15  # digits before the point: below 10^15 in any currency
# Integer attributes without a declared min/max are still bounded by these: the integers every consumer
# holds exactly (IEEE doubles in JSON clients, int64 in CEL and in the matching core, with room for an
# expression to multiply them by up to 1,024 without overflowing int64).
MAX_INTEGER = 2**53 - 1
MIN_INTEGER = -MAX_INTEGER
EARLIEST_YEAR, LATEST_YEAR = 1900, 2999  # of occurred_at, and of date and month attributes
MAX_UTC_OFFSET = timedelta(hours=18)  # widest offset ISO 8601 software accepts; real zones span -12 to +14
MAX_TIMESTAMP_LENGTH = 40  # "2026-03-01T10:00:00.123456789+08:00" is 35
MAX_SHOWN = 60  # characters of a bad value repeated in an error message


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
        return check_timestamp_text(value)

    @field_validator("occurred_at")
    @classmethod
    def _plausible_year(cls, value: datetime) -> datetime:
        return check_timestamp_range(value)

    @field_validator("id", "client_id", "type")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():  # no control, format or unpaired surrogate characters: ids are shown and typed
            raise ValueError(f"contains a character that is not printable: {shown(value)}")
        if not value.strip():
            raise ValueError("is blank; expected an id with at least one visible character")
        return value


_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?", re.ASCII)
_ZONE = re.compile(r"[Zz]|[+-](\d{2}):?(\d{2})", re.ASCII)
_TIMESTAMP_EXAMPLE = "e.g. 2026-03-01T10:00:00Z or 2026-03-01T18:00:00+08:00"


def check_timestamp_text(value: object) -> str:
    """An ISO 8601 timestamp with a zone, checked as text before it is parsed (bounded length and offset)."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 timestamp as text, {_TIMESTAMP_EXAMPLE}")
    if len(value) > MAX_TIMESTAMP_LENGTH:
        raise ValueError(f"expected an ISO 8601 timestamp of at most {MAX_TIMESTAMP_LENGTH} characters, "
                         f"{_TIMESTAMP_EXAMPLE}")
    moment = _TIMESTAMP.match(value)
    if moment is None:
        raise ValueError(f"expected an ISO 8601 timestamp YYYY-MM-DDTHH:MM:SS with a zone, {_TIMESTAMP_EXAMPLE}; "
                         f"got {shown(value)}")
    rest = value[moment.end():]
    if not rest:
        raise ValueError("timestamp has no time zone; send UTC with a Z or an offset, e.g. 2026-03-01T10:00:00Z")
    zone = _ZONE.fullmatch(rest)
    if zone is None:
        raise ValueError(f"expected a zone Z or +HH:MM after the time, {_TIMESTAMP_EXAMPLE}; got {shown(value)}")
    if zone.group(1) is not None and timedelta(hours=int(zone.group(1)), minutes=int(zone.group(2))) > MAX_UTC_OFFSET:
        raise ValueError(f"UTC offset {rest} is beyond ±18:00")
    return value


def check_timestamp_range(value: datetime) -> datetime:
    """Refuse years outside EARLIEST_YEAR..LATEST_YEAR, checked before the UTC conversion can overflow."""
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"year {value.year} is outside {EARLIEST_YEAR}-{LATEST_YEAR}")
    utc_year = value.astimezone(UTC).year  # safe now: at most a day away from a year inside the bounds
    if not EARLIEST_YEAR <= utc_year <= LATEST_YEAR:
        raise ValueError(f"year {utc_year} (in UTC) is outside {EARLIEST_YEAR}-{LATEST_YEAR}")
    return value


def shown(value: object) -> str:
    """A value as an error message repeats it: repr (control and surrogate characters escaped), cut short."""
    if isinstance(value, (str, bytes)) and len(value) > MAX_SHOWN:
        return f"{value[:MAX_SHOWN]!r}… ({len(value):,} characters)"
    text = str(value) if isinstance(value, Decimal) else repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}…"


def shown_name(name: str) -> str:
    """A key from the input as a field name in an error (bounded, and escaped when not printable)."""
    if name.isprintable() and len(name) <= MAX_SHOWN:
        return name
    return shown(name)


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


def parse_envelope(raw: dict) -> EventEnvelope:
    """Validate the envelope fields, naming the first bad field."""
    try:
        return EventEnvelope.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(shown_name(str(p)) for p in err["loc"]) or None
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field; an event has id, client_id, type, occurred_at and data"
        elif err["type"] == "missing":
            message = "missing"
        elif err["type"] == "string_type":
            message = "expected text (a JSON string)"
        elif err["type"] == "dict_type":
            message = "expected an object of attributes, e.g. {\"amount\": \"100.00\"}"
        raise EventError(message, field) from None


def validate_event(raw: dict, event_types: dict[str, EventTypeSpec], currency: str) -> Event:
    """Turn a raw JSON object into an Event, or raise EventError naming the field and what was expected."""
    return typed_event(parse_envelope(raw), event_types, currency)


def typed_event(envelope: EventEnvelope, event_types: dict[str, EventTypeSpec], currency: str) -> Event:
    """Check an envelope's type and attributes against the programme's event types."""
    spec = event_types.get(envelope.type)
    if spec is None:
        raise EventError(f"unknown event type {shown(envelope.type)}{did_you_mean(envelope.type, event_types)}; "
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
        hint = did_you_mean(name, spec.attributes) if len(name) <= MAX_SHOWN else ""
        raise EventError(f"unknown attribute{hint}; expected: "
                         f"{', '.join(spec.attributes) or 'no attributes'}", f"data.{shown_name(name)}")
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
        low, high = integer_range(attribute)
        return f"a whole number from {low} to {high}"
    return {
        "money": "a positive amount as a decimal string or number, e.g. \"30000000.00\"",
        "date": "a date YYYY-MM-DD",
        "month": "a month YYYY-MM",
        "string": "a non-empty string",
        "boolean": "true or false",
    }[attribute.type]


def integer_range(attribute: AttributeSpec) -> tuple[int, int]:
    """The values an integer attribute accepts: its declared min/max, within MIN_INTEGER..MAX_INTEGER."""
    low = MIN_INTEGER if attribute.min is None else max(attribute.min, MIN_INTEGER)
    high = MAX_INTEGER if attribute.max is None else min(attribute.max, MAX_INTEGER)
    return low, high


# Control characters and unpaired surrogates: a database cannot store the latter, a terminal mangles the former.
_BAD_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def convert_value(attribute: AttributeSpec, value: object, currency: str, field: str) -> object:
    """Convert one attribute value to its Python type, or raise EventError."""
    kind = attribute.type
    if isinstance(value, UnusableNumber):
        raise EventError(f"{value.reason}; expected {describe(attribute)}", field)
    if kind == "money":
        return parse_money(value, currency, field)
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventError(f"expected {describe(attribute)}, got {shown(value)}", field)
        low, high = integer_range(attribute)
        if not low <= value <= high:
            raise EventError(f"{shown(value)} is out of range; expected {describe(attribute)}", field)
        return value
    if kind == "enum":
        if not isinstance(value, str) or value not in (attribute.values or []):
            hint = did_you_mean(value, attribute.values or []) if isinstance(value, str) and len(value) <= MAX_SHOWN else ""
            raise EventError(f"unknown value {shown(value)}{hint}; expected {describe(attribute)}", field)
        return value
    if kind == "string":
        if not isinstance(value, str) or not value.strip():
            raise EventError(f"expected {describe(attribute)}, got {shown(value)}", field)
        if len(value) > MAX_TEXT_LENGTH or _BAD_TEXT.search(value):
            raise EventError(f"expected at most {MAX_TEXT_LENGTH} characters with no control characters, "
                             f"got {shown(value)}", field)
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise EventError(f"expected {describe(attribute)}, got {shown(value)}", field)
        return value
    if kind in ("date", "month"):
        text = value if isinstance(value, str) else ""
        given_day = kind == "date" and isinstance(value, date) and not isinstance(value, datetime)  # from YAML cases
        day = parse_day(value if given_day else text if kind == "date" else f"{text}-01")
        if day is None:
            raise EventError(f"expected {describe(attribute)}, got {shown(value)}", field)
        if not EARLIEST_YEAR <= day.year <= LATEST_YEAR:
            raise EventError(f"year {day.year} is outside {EARLIEST_YEAR}-{LATEST_YEAR}", field)
        return day if kind == "date" else text
    raise AssertionError(kind)


_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def parse_day(value: object) -> date | None:
    """A date from ISO text YYYY-MM-DD (ASCII digits), or a date itself; None when it is not one."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    text = str(value)
    if not _ISO_DAY.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


# A plain decimal in ASCII digits, optionally with an exponent: what JSON allows for a number, and a sign.
# An exponent of at most 9 digits: Decimal() itself refuses exponents beyond about 10^18.
_AMOUNT_TEXT = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,9})?", re.ASCII)


def parse_money(value: object, currency: str, field: str) -> Decimal:
    """An exact, positive amount in `currency` (decimal string or integer, never a float).

    Its size and decimal places are read from its digits and exponent before any arithmetic, so no
    amount (1e400, 10^30, 1e-999999999) can make Decimal raise or allocate.
    """
    if isinstance(value, UnusableNumber):
        raise EventError(f"{value.reason}; expected an amount such as \"30000000.00\"", field)
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise EventError(f"expected an amount as a decimal string or number, got {shown(value)}", field)
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_LENGTH or not _AMOUNT_TEXT.fullmatch(value):
            raise EventError(f"expected an amount such as \"30000000.00\" (ASCII digits, at most "
                             f"{MAX_NUMBER_LENGTH} characters), got {shown(value)}", field)
        amount = Decimal(value)
    elif isinstance(value, int):
        if value.bit_length() > 64:  # far beyond the bound below; keeps Decimal() and str() cheap
            raise EventError(f"amount of {value.bit_length()} bits is implausibly large (at most "
                             f"{MAX_AMOUNT_INTEGER_DIGITS} digits before the point)", field)
        amount = Decimal(value)
    else:
        amount = value
    if not amount.is_finite():
        raise EventError(f"amount must be a finite number, got {shown(value)}", field)
    sign, digits, exponent = amount.as_tuple()
    if sign or not any(digits):
        raise EventError(f"amount must be greater than zero, got {shown(value)}", field)
    if amount.adjusted() >= MAX_AMOUNT_INTEGER_DIGITS:
        raise EventError(f"amount {shown(value)} is implausibly large (at most {MAX_AMOUNT_INTEGER_DIGITS} digits "
                         "before the point)", field)
    places = minor_unit_exponent(currency)
    if int(exponent) < -places and int(exponent) + _trailing_zeros(digits) < -places:  # type: ignore[arg-type]
        raise EventError(f"amount {shown(value)} has more than {places} decimal places for {currency}", field)
    return amount


def _trailing_zeros(digits: tuple[int, ...]) -> int:
    """How many of a coefficient's last digits are 0 (100.000 has 3 decimals but needs none)."""
    count = 0
    for digit in reversed(digits):
        if digit:
            break
        count += 1
    return count


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
