"""The event input contract: each kind of bad input gets a precise error."""
from __future__ import annotations

from decimal import Decimal

import pytest

from engine.errors import EventError
from engine.events import content_digest, validate_event
from engine.json_input import parse_json_line
from tests.conftest import event


@pytest.fixture(scope="module")
def contract(programmes):
    current = programmes.current
    return current.model.event_types, current.currency


def drawn(**overrides) -> dict:
    data = {"loan_id": "L1", "product": "working_capital", "amount": "30000000.00", "currency": "CNY",
            "term_months": 12}
    data.update(overrides)
    return event("e1", "C-1", "loan.drawn", "2026-03-01T10:00:00Z", **data)


def error_of(raw: dict, contract) -> EventError:
    with pytest.raises(EventError) as caught:
        validate_event(raw, *contract)
    return caught.value


def test_valid_event_is_typed_exactly(contract):
    result = validate_event(drawn(amount="30000000.10"), *contract)
    assert result.data["amount"] == Decimal("30000000.10")
    assert result.occurred_at.utcoffset().total_seconds() == 0


def test_offsets_are_converted_to_utc(contract):
    raw = drawn()
    raw["occurred_at"] = "2026-03-01T18:00:00+08:00"
    assert validate_event(raw, *contract).occurred_at.isoformat() == "2026-03-01T10:00:00+00:00"


def test_same_content_in_other_spellings_hashes_the_same(contract):
    a = validate_event(drawn(amount="30000000.00"), *contract)
    b = validate_event(drawn(amount=30000000), *contract)
    c = validate_event(drawn(amount="30000000.01"), *contract)
    assert content_digest(a.canonical_json()) == content_digest(b.canonical_json())
    assert content_digest(a.canonical_json()) != content_digest(c.canonical_json())


def test_json_numbers_never_become_floats():
    parsed = parse_json_line('{"amount": 12345.67}')
    assert parsed["amount"] == Decimal("12345.67") and isinstance(parsed["amount"], Decimal)


@pytest.mark.parametrize(("raw_change", "field", "fragment"), [
    ({"occurred_at": "2026-03-01T10:00:00"}, "occurred_at", "no time zone"),
    ({"type": "loan.drawnn"}, "type", "did you mean 'loan.drawn'"),
    ({"client_id": ""}, "client_id", "at least 1 character"),
    ({"extra": 1}, "extra", "unknown field"),
])
def test_bad_envelope(contract, raw_change, field, fragment):
    raw = drawn()
    raw.update(raw_change)
    error = error_of(raw, contract)
    assert error.field == field and fragment in str(error)


@pytest.mark.parametrize(("data_change", "field", "fragment"), [
    ({"amount": "-5"}, "data.amount", "greater than zero"),
    ({"amount": "0"}, "data.amount", "greater than zero"),
    ({"amount": "10.001"}, "data.amount", "more than 2 decimal places"),
    ({"amount": "lots"}, "data.amount", "expected an amount"),
    ({"amount": True}, "data.amount", "expected an amount"),
    ({"product": "mortgage"}, "data.product", "unknown value 'mortgage'"),
    ({"term_months": "12"}, "data.term_months", "whole number"),
    ({"term_months": 0}, "data.term_months", "out of range"),
    ({"colour": "red"}, "data.colour", "unknown attribute"),
    ({"amount": None}, "data.amount", "missing"),
])
def test_bad_attribute(contract, data_change, field, fragment):
    error = error_of(drawn(**data_change), contract)
    assert error.field == field and fragment in str(error)


def test_missing_attribute_and_optional_attribute(contract):
    raw = drawn()
    del raw["data"]["loan_id"]
    assert error_of(raw, contract).field == "data.loan_id"
    survey = event("s1", "C-1", "survey.answered", "2026-03-01T10:00:00Z", nps=7)
    assert "csat" not in validate_event(survey, *contract).data


def test_dates_and_months(contract):
    repayment = event("r1", "C-1", "repayment.made", "2026-03-01T10:00:00Z", loan_id="L1", amount="10",
                      due_date="2026-02-30", days_late=0)
    assert "YYYY-MM-DD" in str(error_of(repayment, contract))
    deposit = event("d1", "C-1", "deposit.reported", "2026-03-01T10:00:00Z", month="2026-13", average_balance="1")
    assert "YYYY-MM" in str(error_of(deposit, contract))


def test_malformed_json_line():
    with pytest.raises(EventError, match="not valid JSON"):
        parse_json_line('{"id": "e1", ')
    with pytest.raises(EventError, match="expected a JSON object"):
        parse_json_line("[1, 2]")


# --- bounds (engine/events.py): checked before any arithmetic --------------------------------------------------------

def test_integer_attributes_without_declared_bounds_are_held_to_the_exact_range():
    from engine.events import MAX_INTEGER, MIN_INTEGER, convert_value, integer_range
    from engine.schema import AttributeSpec

    free = AttributeSpec(type="integer")
    assert integer_range(free) == (MIN_INTEGER, MAX_INTEGER) == (-(2**53 - 1), 2**53 - 1)
    assert convert_value(free, MAX_INTEGER, "CNY", "data.n") == MAX_INTEGER
    assert convert_value(free, MIN_INTEGER, "CNY", "data.n") == MIN_INTEGER
    for value in (MAX_INTEGER + 1, MIN_INTEGER - 1, 2**63, -(10**30)):
        with pytest.raises(EventError, match="out of range"):
            convert_value(free, value, "CNY", "data.n")
    wide = AttributeSpec(type="integer", min=-(10**30), max=10**30)  # a declared range never widens the bound
    assert integer_range(wide) == (MIN_INTEGER, MAX_INTEGER)


@pytest.mark.parametrize(("amount", "fragment"), [
    ("1e400", "implausibly large"), (Decimal("1e400"), "implausibly large"), (10**30, "implausibly large"),
    pytest.param(10**5000, "implausibly large", id="10^5000"), ("1" + "0" * 15, "implausibly large"), ("1e-999999999", "decimal places"),
    (Decimal("1e-999999999"), "decimal places"), ("NaN", "expected an amount"), (Decimal("NaN"), "finite"),
    (Decimal("-Infinity"), "finite"), ("-0", "greater than zero"), ("0.00", "greater than zero"),
    ("1" * 41, "at most 40 characters"), (" 100", "expected an amount"), ("١٠٠", "ASCII digits"), (1.5, "expected"),
])
def test_amount_bounds_are_read_from_the_digits_before_any_arithmetic(amount, fragment):
    from engine.events import parse_money

    with pytest.raises(EventError, match=fragment):
        parse_money(amount, "CNY", "data.amount")


def test_amounts_at_the_bounds_are_exact():
    from engine.events import parse_money

    assert parse_money("999999999999999.99", "CNY", "a") == Decimal("999999999999999.99")
    assert parse_money("1E+2", "CNY", "a") == 100 and parse_money("100.000", "CNY", "a") == 100
    assert parse_money("0.001", "KWD", "a") == Decimal("0.001")
    with pytest.raises(EventError, match="decimal places for JPY"):
        parse_money("1.5", "JPY", "a")


def test_json_numbers_that_cannot_be_used_stay_out_of_arithmetic():
    from engine.json_input import UnusableNumber, parse_json

    parsed = parse_json('{"a": ' + "9" * 5000 + ', "b": NaN, "c": -Infinity, "d": 1e400, "e": 12}')
    assert isinstance(parsed["a"], UnusableNumber) and "5,000 characters" in parsed["a"].reason
    assert isinstance(parsed["b"], UnusableNumber) and isinstance(parsed["c"], UnusableNumber)
    assert parsed["d"] == Decimal("1e400") and parsed["e"] == 12


def test_nesting_is_checked_without_recursion():
    from engine.json_input import MAX_JSON_DEPTH, json_too_deep, nesting_depth

    assert not json_too_deep("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    assert json_too_deep("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    assert not json_too_deep('{"a": "' + "[" * 100 + '"}')  # brackets inside strings do not count
    assert nesting_depth({"a": [[{"b": 1}]]}) == 4
    with pytest.raises(EventError, match="nested"):
        parse_json_line('{"id": ' + "[" * 40 + "]" * 40 + "}")


@pytest.mark.parametrize(("occurred_at", "fragment"), [
    ("9999-12-31T23:59:59-14:00", "year 9999"), ("0001-01-01T00:00:00+14:00", "year 1 "),
    ("1900-01-01T00:00:00+01:00", "year 1899 (in UTC)"), ("2999-12-31T23:00:00-14:00", "year 3000 (in UTC)"),
    ("2026-03-01T10:00:00+18:01", "beyond ±18:00"), ("1700000000", "ISO 8601"), ("2026-03-01T10:00:00Z" + " " * 30,
                                                                                 "at most 40 characters"),
])
def test_timestamps_are_bounded_before_the_utc_conversion(contract, occurred_at, fragment):
    raw = drawn()
    raw["occurred_at"] = occurred_at
    error = error_of(raw, contract)
    assert error.field == "occurred_at" and fragment in str(error)


def test_error_messages_repeat_a_bad_value_only_short_and_escaped(contract):
    error = error_of(drawn(product="p\x1b[2J" * 10_000), contract)
    assert error.field == "data.product" and len(str(error)) < 300 and "\x1b" not in str(error)
    raw = drawn()
    raw["data"]["k\ud800" * 1000] = 1
    error = error_of(raw, contract)
    assert error.field.startswith("data.'k\\ud800") and len(str(error)) < 400
    str(error).encode("utf-8")  # printable as it is: no unpaired surrogate reaches a terminal or a file
