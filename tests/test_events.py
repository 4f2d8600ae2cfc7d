"""The event input contract: each kind of bad input gets a precise error."""
from __future__ import annotations

from decimal import Decimal

import pytest

from engine.errors import EventError
from engine.events import content_digest, parse_json_line, validate_event
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
