"""Hostile input: whatever one line or item holds, it is applied or rejected alone (line or index, field, reason)
and the rest of the run or batch goes on; the ledger stays consistent. Through the CLI (in process, and once in
a subprocess), the HTTP API and a property over generated hostile events, on SQLite and PostgreSQL.
"""
from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from engine.events import MAX_INTEGER
from engine.json_input import MAX_JSON_DEPTH, MAX_LINE_BYTES, MAX_NUMBER_LENGTH
from service.ingest import INTERNAL_ERROR, Ingestor, bounded_lines
from storage import ledger
from tests.api_support import make_api
from tests.conftest import run_cli

RUNNER = CliRunner()
NOW = datetime(2026, 12, 1, tzinfo=UTC)
POINTS_PER_GOOD = 1000  # a 10,000,000 CNY working-capital drawdown earns amount / 10000 points


def good(event_id: str, client: str = "C-1") -> dict:
    """A valid drawdown that earns POINTS_PER_GOOD points."""
    return {"id": event_id, "client_id": client, "type": "loan.drawn", "occurred_at": "2026-03-01T10:00:00Z",
            "data": {"loan_id": "L-" + event_id, "product": "working_capital", "amount": "10000000.00",
                     "currency": "CNY", "term_months": 12}}


def text_of(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False)


def with_data(event_id: str, **changes: object) -> dict:
    value = good(event_id)
    value["data"].update(changes)
    return value


def with_envelope(event_id: str, **changes: object) -> dict:
    value = good(event_id)
    value.update(changes)
    return value


def raw(event_id: str, old: str, new: str) -> str:
    """A good event's JSON text with `old` replaced by `new` (for values json.dumps cannot write)."""
    text = text_of(good(event_id))
    assert old in text
    return text.replace(old, new, 1)


@dataclass(frozen=True)
class Hostile:
    """One class of hostile value: the line that carries it, and what the rejection must say."""

    name: str
    line: bytes
    field: str | None  # the field the rejection names (None: the line as a whole)
    fragment: str  # part of the reason
    whole_body: bool = False  # the HTTP API refuses the whole body (it is not JSON at all)


def hostile(name: str, line: str | bytes | dict, field: str | None, fragment: str, whole_body: bool = False) -> Hostile:
    data = line if isinstance(line, bytes) else (text_of(line) if isinstance(line, dict) else line).encode()
    return Hostile(name, data, field, fragment, whole_body)


DIGITS_5000 = "7" * 5000
HOSTILE = [
    # amounts: exponents, magnitudes, non-finite numbers, signs, spellings
    hostile("amount 1e400 as text", with_data("h", amount="1e400"), "data.amount", "implausibly large"),
    hostile("amount 1e400 as a number", raw("h", '"10000000.00"', "1e400"), "data.amount", "implausibly large"),
    hostile("amount 10^30 as text", with_data("h", amount="1" + "0" * 30), "data.amount", "implausibly large"),
    hostile("amount 10^30 as a number", raw("h", '"10000000.00"', "1" + "0" * 30), "data.amount", "implausibly large"),
    hostile("amount 1e-999999999", with_data("h", amount="1e-999999999"), "data.amount", "decimal places"),
    hostile("amount of 5,000 digits", raw("h", '"10000000.00"', "0." + DIGITS_5000), "data.amount", "5,002 characters"),
    hostile("amount NaN", raw("h", '"10000000.00"', "NaN"), "data.amount", "NaN"),
    hostile("amount Infinity", raw("h", '"10000000.00"', "Infinity"), "data.amount", "Infinity"),
    hostile("amount 'NaN' as text", with_data("h", amount="NaN"), "data.amount", "expected an amount"),
    hostile("amount -0", raw("h", '"10000000.00"', "-0"), "data.amount", "greater than zero"),
    hostile("amount in Arabic-Indic digits", with_data("h", amount="١٠٠"), "data.amount", "ASCII digits"),
    hostile("amount padded with spaces", with_data("h", amount=" 100 "), "data.amount", "expected an amount"),
    hostile("amount as a float with 3 decimals", raw("h", '"10000000.00"', "10.001"), "data.amount", "decimal places"),
    hostile("amount as an object", with_data("h", amount={"v": 1}), "data.amount", "expected an amount"),
    # integers: huge, negative, wrong type
    hostile("integer of 5,000 digits", raw("h", '"term_months": 12', '"term_months": ' + DIGITS_5000),
            "data.term_months", "5,000 characters"),
    hostile("integer of 5,000 digits in an unknown field", raw("h", '"data"', '"x": -' + DIGITS_5000 + ', "data"'),
            "x", "unknown field"),
    hostile("integer of 5,000 digits as the id", raw("h", '"id": "h"', '"id": ' + DIGITS_5000), "id", "expected text"),
    hostile("integer 2^64", with_data("h", term_months=2**64), "data.term_months", "out of range"),
    hostile("integer -10^20", with_data("h", term_months=-10**20), "data.term_months", "out of range"),
    hostile("integer as a bool", with_data("h", term_months=True), "data.term_months", "whole number"),
    hostile("integer as a float", raw("h", '"term_months": 12', '"term_months": 12.0'), "data.term_months",
            "whole number"),
    hostile("integer as text", with_data("h", term_months="12"), "data.term_months", "whole number"),
    hostile("integer -Infinity", raw("h", '"term_months": 12', '"term_months": -Infinity'), "data.term_months",
            "-Infinity"),
    # timestamps at the edges of the calendar, odd offsets and spellings
    hostile("occurred_at 9999-12-31 at -14:00", with_envelope("h", occurred_at="9999-12-31T23:59:59-14:00"),
            "occurred_at", "year 9999"),
    hostile("occurred_at 0001-01-01 at +14:00", with_envelope("h", occurred_at="0001-01-01T00:00:00+14:00"),
            "occurred_at", "year 1 "),
    hostile("occurred_at 2999-12-31 at -14:00", with_envelope("h", occurred_at="2999-12-31T23:00:00-14:00"),
            "occurred_at", "year 3000 (in UTC) is outside"),
    hostile("occurred_at offset +23:59", with_envelope("h", occurred_at="2026-03-01T10:00:00+23:59"),
            "occurred_at", "beyond ±18:00"),
    hostile("occurred_at as unix time text", with_envelope("h", occurred_at="1700000000"), "occurred_at", "ISO 8601"),
    hostile("occurred_at as a number", raw("h", '"2026-03-01T10:00:00Z"', "1700000000"), "occurred_at", "ISO 8601"),
    hostile("occurred_at in full-width digits", with_envelope("h", occurred_at="２０２６-03-01T10:00:00Z"),
            "occurred_at", "ISO 8601"),
    hostile("occurred_at naive", with_envelope("h", occurred_at="2026-03-01T10:00:00"), "occurred_at", "no time zone"),
    hostile("occurred_at of 10,000 characters", with_envelope("h", occurred_at="2026-03-01T10:00:00Z" + "0" * 10_000),
            "occurred_at", "at most 40 characters"),
    hostile("occurred_at on February 30", with_envelope("h", occurred_at="2026-02-30T10:00:00Z"), "occurred_at",
            "valid datetime"),
    # text: control characters, NUL, unpaired surrogates, size
    hostile("NUL in the id", with_envelope("h", id="h\x00"), "id", "not printable"),
    hostile("newline in the client id", with_envelope("h", client_id="C-\n1"), "client_id", "not printable"),
    hostile("right-to-left override in the client id", with_envelope("h", client_id="C-\u202e1"), "client_id",
            "not printable"),
    hostile("unpaired surrogate in the client id", raw("h", '"C-1"', '"C-\\ud800"'), "client_id", "unicode"),
    hostile("unpaired surrogate in a string attribute", raw("h", '"L-h"', '"L-\\udfff"'), "data.loan_id",
            "control characters"),
    hostile("control character in a string attribute", with_data("h", loan_id="L\x1b[31m"), "data.loan_id",
            "control characters"),
    hostile("string attribute of 50,000 characters", with_data("h", loan_id="L" * 50_000), "data.loan_id",
            "at most 200"),
    hostile("id of 1,000 characters", with_envelope("h", id="i" * 1000), "id", "at most 128"),
    hostile("blank client id", with_envelope("h", client_id="   "), "client_id", "blank"),
    hostile("amount text with an exponent beyond Decimal", with_data("h", amount="1e+99999999999999999999"),
            "data.amount", "expected an amount"),
    hostile("amount number with an exponent beyond Decimal",
            json.dumps(with_data("h", amount="@")).replace('"@"', "1E999999999999999999999999999999"),
            "data.amount", "exponent is too large"),
    hostile("an unterminated text of 30,000 escaped quotes", '{"id": "h", "a": "' + '\\"' * 30_000 + "[" * 40,
            None, "not valid JSON", whole_body=True),
    hostile("event type of 10,000 characters", with_envelope("h", type="t" * 10_000), "type", "at most 64"),
    hostile("attribute name of 30,000 characters", with_data("h", **{"k" * 30_000: 1}), "data.'kkk", "unknown attribute"),
    hostile("4,000 attributes", with_data("h", **{f"a{i}": i for i in range(4000)}), "data.a0", "unknown attribute"),
    hostile("enum value of 40,000 characters", with_data("h", product="p" * 40_000), "data.product", "unknown value"),
    # shapes
    hostile("data is a list", with_envelope("h", data=[1, 2]), "data", "expected an object of attributes"),
    hostile("data is null", with_envelope("h", data=None), "data", "expected an object of attributes"),
    hostile("data nested 40 deep", with_data("h", loan_id=json.loads("[" * 40 + "]" * 40)), None,
            f"nested more than {MAX_JSON_DEPTH} deep"),
    hostile("an empty object", "{}", "id", "missing"),
    hostile("a list instead of an object", "[1, 2]", None, "expected a JSON object", whole_body=False),
    hostile("a bare number of 5,000 digits", DIGITS_5000, None, "expected a JSON object"),
    hostile("arrays nested 30,000 deep", "[" * 30_000 + "]" * 30_000, None, "nested more than", whole_body=False),
    hostile("not JSON", '{"id": "h", ', None, "not valid JSON", whole_body=True),
    hostile("not UTF-8", b'{"id": "h\xff\xfe", "client_id": "C-1"}', None, "not UTF-8", whole_body=True),
    hostile("a line of 100,000 bytes", with_data("h", note="n" * 100_000), None, "100,", whole_body=False),
    # dates and months in attributes
    hostile("due date in year 1", {**good("h"), "type": "repayment.made",
                                   "data": {"loan_id": "L", "amount": "100", "due_date": "0001-01-01", "days_late": 0}},
            "data.due_date", "year 1 "),
    hostile("month in year 9999", {**good("h"), "type": "deposit.reported",
                                   "data": {"month": "9999-12", "average_balance": "100"}}, "data.month", "year 9999"),
    hostile("due date in full-width digits", {**good("h"), "type": "repayment.made",
                                              "data": {"loan_id": "L", "amount": "100", "due_date": "２０２６-01-01",
                                                       "days_late": 0}}, "data.due_date", "YYYY-MM-DD"),
]


def cli(db_url: str, *args: str) -> tuple[int, dict]:
    result = RUNNER.invoke(app, ["--db", db_url, *args, "--json"], env={"LOYALTY_RULES": None})
    return result.exit_code, (json.loads(result.stdout) if result.stdout.strip() else {})


def points(db_url: str, client: str) -> int:
    code, answer = cli(db_url, "benefits", client)
    assert code == 0, answer
    return answer["points_balance"]


def verify_passes(db_url: str) -> None:
    code, answer = cli(db_url, "ledger", "verify")
    assert code == 0, answer


def assert_rejection(error: dict, case: Hostile) -> None:
    message = error["error"]
    assert INTERNAL_ERROR not in message
    if case.field:
        assert message.startswith(case.field), (case.name, message)
    assert case.fragment in message, (case.name, message)
    assert len(message) < 400, (case.name, message)  # a bounded message, never the value in full


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_each_hostile_class_rejects_its_line_alone_through_the_cli(engine, db_url, tmp_path, case):
    path = tmp_path / "events.jsonl"
    path.write_bytes(text_of(good("before")).encode() + b"\n" + case.line + b"\n" + text_of(good("after")).encode()
                     + b"\n")
    code, report = cli(db_url, "ingest", str(path))
    assert code == 1, report
    assert (report["applied"], report["rejected"]) == (2, 1), report
    assert report["errors"][0]["line"] == 2
    assert_rejection(report["errors"][0], case)
    assert points(db_url, "C-1") == 2 * POINTS_PER_GOOD


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_each_hostile_class_rejects_its_item_alone_through_the_api(engine, programmes, case):
    api = make_api(engine, programmes)
    body = b"[" + text_of(good("before")).encode() + b"," + case.line + b"," + text_of(good("after")).encode() + b"]"
    response = api.client.post("/v1/events", content=body, headers={"content-type": "application/json"})
    if case.whole_body:  # no items can be told apart: the body as a whole is refused, never a 500
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert api.client.get("/v1/clients/C-1/benefits").status_code == 404
        return
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["applied"], answer["rejected"]) == (2, 1), answer
    rejected = answer["results"][1]
    assert rejected["index"] == 1 and rejected["status"] == "rejected"
    assert INTERNAL_ERROR not in rejected["error"] and len(rejected["error"]) < 400, rejected
    if case.field:
        assert rejected["error"].startswith(case.field), rejected
    assert api.client.get("/v1/clients/C-1/benefits").json()["points_balance"] == 2 * POINTS_PER_GOOD
    with engine.connect() as conn:
        assert ledger.verify(conn) == []


def mixed_file(path: Path) -> tuple[list[int], dict[int, Hostile]]:
    """Good lines interleaved with one line of each hostile class: line numbers of the good ones and the bad ones."""
    lines, goods, bads = [], [], {}
    for number, case in enumerate(HOSTILE):
        lines.append(text_of(good(f"good-{number}", client=f"C-{number % 7}")).encode())
        goods.append(len(lines))
        lines.append(case.line)
        bads[len(lines)] = case
    path.write_bytes(b"\n".join(lines) + b"\n")
    return goods, bads


def test_a_file_mixing_good_lines_with_every_hostile_class_in_a_subprocess(db_url, tmp_path):
    """The smoke test a user would run: every good line applied, every bad one rejected with line, field and
    reason, the rejects file holding each bad line unchanged, and `ledger verify` passing."""
    assert run_cli("init", db_url=db_url).returncode == 0
    events, rejects = tmp_path / "events.jsonl", tmp_path / "rejects.jsonl"
    goods, bads = mixed_file(events)
    result = run_cli("ingest", str(events), "--json", "--rejects", str(rejects), db_url=db_url)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert (report["applied"], report["duplicates"], report["rejected"]) == (len(goods), 0, len(bads))
    assert [error["line"] for error in report["errors"]] == sorted(bads)
    for error in report["errors"]:
        assert_rejection(error, bads[error["line"]])
    kept = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [record["line"] for record in kept] == sorted(bads)
    for record, error in zip(kept, report["errors"], strict=True):
        case = bads[record["line"]]
        assert record["error"] == error["error"] and record["id"] == error["id"]
        assert record["field"].startswith(case.field) if case.field else record["field"] is None, record
        if len(case.line) > MAX_LINE_BYTES:
            assert record["truncated"] is True and record["bytes"] == len(case.line)
            assert case.line.startswith(record["input"].encode())
        elif "input_base64" in record:
            assert base64.b64decode(record["input_base64"]) == case.line
        else:
            assert record["input"].encode() == case.line  # unchanged, byte for byte
    assert run_cli("ledger", "verify", db_url=db_url).returncode == 0


def test_rejects_round_trip_fix_and_feed_again(engine, db_url, tmp_path):
    """The operator's loop: ingest with --rejects, correct the rejected lines, ingest them: they are applied, and
    fed again unchanged they are rejected for the same reasons."""
    events, rejects, again = tmp_path / "events.jsonl", tmp_path / "rejects.jsonl", tmp_path / "again.jsonl"
    events.write_bytes(b"\n".join([
        text_of(good("g1")).encode(),
        text_of(with_data("fix-amount", amount="1e400")).encode(),
        b'{"id": "fix-\xff"}',
        text_of(with_envelope("fix-time", occurred_at="2026-03-01T10:00:00")).encode(),
        raw("fix-digits", '"term_months": 12', '"term_months": ' + DIGITS_5000).encode(),
    ]) + b"\n")
    code, report = cli(db_url, "ingest", str(events), "--rejects", str(rejects))
    assert (code, report["applied"], report["rejected"]) == (1, 1, 4)
    kept = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [record["line"] for record in kept] == [2, 3, 4, 5]

    # Fed again as they are, the same lines are rejected for the same reasons.
    again.write_bytes(b"".join((record["input"].encode() if "input" in record
                                else base64.b64decode(record["input_base64"])) + b"\n" for record in kept))
    code, second = cli(db_url, "ingest", str(again), "--rejects", str(tmp_path / "second.jsonl"))
    assert code == 1 and [e["error"] for e in second["errors"]] == [e["error"] for e in report["errors"]]

    # Corrected, they are applied.
    fixed = []
    for record in kept:
        if "input" not in record:
            fixed.append(text_of(good("fix-bytes")))
            continue
        value = json.loads(record["input"], parse_int=lambda text: 12 if len(text) > 40 else int(text))
        value["data"]["amount"] = "10000000.00"
        value["occurred_at"] = "2026-03-01T10:00:00Z"
        fixed.append(text_of(value))
    again.write_text("\n".join(fixed) + "\n")
    code, third = cli(db_url, "ingest", str(again), "--rejects", str(rejects))
    assert (code, third["applied"], third["rejected"]) == (0, 4, 0), third
    assert rejects.read_text() == ""  # the file of this run: nothing rejected
    assert points(db_url, "C-1") == 5 * POINTS_PER_GOOD
    verify_passes(db_url)


def test_rejects_file_keeps_what_was_rejected_before_the_database_failed(engine, db_url, tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import service.ingest as ingest_module

    real = ingest_module.Ingestor._apply_batch

    def failing(self, batch, moment):
        if any(item.event.id == "doomed" for item in batch):
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return real(self, batch, moment)

    monkeypatch.setattr(ingest_module.Ingestor, "_apply_batch", failing)
    events, rejects = tmp_path / "events.jsonl", tmp_path / "rejects.jsonl"
    events.write_text("\n".join([text_of(good("a")), "not json", text_of(good("doomed")), "{}"]) + "\n")
    result = RUNNER.invoke(app, ["--db", db_url, "ingest", str(events), "--rejects", str(rejects), "--batch-size", "2"],
                           env={"LOYALTY_RULES": None})
    assert result.exit_code == 2
    assert "the database stopped answering" in result.stderr and "rejected so far" in result.stderr
    # The first batch (good a, "not json") completed; the second failed after its "{}" had been rejected.
    kept = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(record["line"], record["input"]) for record in kept] == [(2, "not json"), (4, "{}")]


def test_a_line_failing_unexpectedly_is_rejected_as_internal_error_and_the_rest_applied(engine, db_url, tmp_path,
                                                                                        monkeypatch):
    import re

    import service.ingest as ingest_module

    real = ingest_module.typed_event

    def buggy(envelope, *args):
        if envelope.id == "boom":
            raise RuntimeError("a bug nobody foresaw")
        return real(envelope, *args)

    monkeypatch.setattr(ingest_module, "typed_event", buggy)
    events, rejects = tmp_path / "events.jsonl", tmp_path / "rejects.jsonl"
    events.write_text("\n".join(text_of(good(name)) for name in ("a", "boom", "c")) + "\n")
    result = RUNNER.invoke(app, ["--db", db_url, "ingest", str(events), "--json", "--rejects", str(rejects)],
                           env={"LOYALTY_RULES": None})
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and (report["applied"], report["rejected"]) == (2, 1)
    assert report["errors"] == [{"line": 2, "id": "boom", "error": INTERNAL_ERROR}]
    assert json.loads(rejects.read_text())["error"] == INTERNAL_ERROR
    # The person sees one line naming the log; the traceback is in the log only.
    assert "Traceback" not in result.stderr and "a bug nobody foresaw" not in result.stdout
    log = Path(re.search(r"traceback in (\S+)\)", result.stderr).group(1))
    assert "Traceback" in log.read_text() and "a bug nobody foresaw" in log.read_text()
    log.unlink()


def test_the_rejects_file_is_never_the_input_file(engine, db_url, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(text_of(good("a")) + "\n")
    code, answer = cli(db_url, "ingest", str(events), "--rejects", str(events))
    assert code == 2 and "is the input file" in answer["error"]
    assert events.read_text() == text_of(good("a")) + "\n"


def test_a_line_of_gigabytes_is_never_held_in_memory():
    """bounded_lines reads a line without a newline in pieces of at most MAX_LINE_BYTES."""

    class Endless:
        """A stream of one line of 1 GiB of spaces, never materialised; records the largest read."""

        def __init__(self) -> None:
            self.left, self.largest = 1 << 30, 0

        def readline(self, limit: int) -> bytes:
            self.largest = max(self.largest, limit)
            size = min(limit, self.left)
            self.left -= size
            return b" " * size

    stream = Endless()
    lines = list(bounded_lines(stream))  # type: ignore[arg-type]
    assert len(lines) == 1 and lines[0].size == 1 << 30 and len(lines[0].start) == MAX_LINE_BYTES
    assert stream.largest <= MAX_LINE_BYTES + 1


# --- property: hostile values in every field, mixed with good events ----------------------------------------------

GOOD_FIELDS = {"occurred_at": "2026-03-01T10:00:00Z", "loan_id": "L-1", "product": "working_capital",
               "amount": "10000000.00", "currency": "CNY", "term_months": 12}
HOSTILE_NUMBERS = st.sampled_from([
    "1e400", "1E+30", "-0", "NaN", "Infinity", "-Infinity", "1" + "0" * 30, "9" * 4400, "0." + "0" * 60 + "1",
    str(2**63), str(-(2**63) - 1), str(MAX_INTEGER + 1), "1e-999999999", "1" * (MAX_NUMBER_LENGTH + 1),
    "1E999999999999999999999999999999"])
HOSTILE_TEXT = st.one_of(
    st.sampled_from(["", " ", "\x00", "C-\n1", "\u202e", "x" * 300, "٣", "２０２６-03-01", "\ud800", "\x1b[2J"]),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp"]), min_size=1, max_size=5))
HOSTILE_JSON = st.one_of(HOSTILE_NUMBERS.map(lambda n: ("raw", n)), HOSTILE_TEXT.map(lambda t: ("json", t)),
                         st.sampled_from([("json", None), ("json", True), ("json", []), ("json", {"a": 1}),
                                          ("raw", "[" * 40 + "]" * 40), ("json", 2**64), ("json", -(10**20))]))
FIELDS = ["id", "client_id", "type", "occurred_at", "loan_id", "product", "amount", "currency", "term_months",
          "data", "extra"]


IDS = itertools.count()
PLANS = st.lists(st.one_of(st.none(), st.tuples(st.sampled_from(FIELDS), HOSTILE_JSON)), min_size=1, max_size=8)


def planned_line(step: tuple[str, tuple[str, object]] | None, client: str) -> tuple[str, bool]:
    """The JSON text of a good drawdown, or of one whose field holds a hostile value; and whether it must apply.

    A hostile id is appended to a unique one, so the few printable ones that are valid ids never collide.
    """
    event_id = f"p{next(IDS)}"
    event = good(event_id, client=client)
    if step is None:
        return json.dumps(event), True
    field, (kind, payload) = step
    if field == "id" and kind == "json" and isinstance(payload, str):
        payload = event_id + payload
    marker = "__HOSTILE__"
    target = event if field in ("id", "client_id", "type", "occurred_at", "data", "extra") else event["data"]
    target[field] = marker
    text = json.dumps(event)  # ASCII: a surrogate is escaped, as a producer's JSON library would write it
    line = text.replace(json.dumps(marker), payload if kind == "raw" else json.dumps(payload))  # type: ignore[arg-type]
    return line, still_valid(field, kind, payload)


def still_valid(field: str, kind: str, payload: object) -> bool:
    """A few generated values are in fact acceptable in their field (printable text as a loan or client id)."""
    if kind != "json" or not isinstance(payload, str):
        return False
    if field == "loan_id":
        return bool(payload.strip()) and len(payload) <= 200 and not any(
            ord(c) < 32 or 0x7f <= ord(c) <= 0x9f or 0xd800 <= ord(c) <= 0xdfff for c in payload)
    if field == "id":
        return 0 < len(payload) <= 128 and payload.isprintable() and bool(payload.strip())
    if field == "client_id":
        return 0 < len(payload) <= 64 and payload.isprintable() and bool(payload.strip())
    return False


def test_property_hostile_values_in_every_field_never_escape_the_line(engine, programmes):
    """Each plan is a list of steps: None for a good event, (field, value) for a good event with that field made
    hostile. Whatever the plan, nothing raises, each line is applied or rejected as expected (never as an
    internal error), exactly the good ones are stored, and the ledger verifies. One database for all examples."""
    ingestor = Ingestor(engine, programmes, clock=lambda: NOW, batch_size=4)

    @given(PLANS)
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(plan: list) -> None:
        lines, expected = zip(*(planned_line(step, "P-1") for step in plan), strict=True)
        with engine.connect() as conn:
            before = conn.exec_driver_sql("SELECT count(*) FROM processed_event").scalar_one()
        report = ingestor.ingest_lines([line.encode() for line in lines])
        assert not any(error["error"] == INTERNAL_ERROR for error in report.errors), report.errors
        rejected = {error["line"] for error in report.errors}
        assert [number not in rejected for number in range(1, len(lines) + 1)] == list(expected), report.errors
        with engine.connect() as conn:
            after = conn.exec_driver_sql("SELECT count(*) FROM processed_event").scalar_one()
            assert after - before == report.applied == sum(expected)
            assert ledger.verify(conn) == []

    check()


def test_property_hostile_items_in_an_api_batch_are_rejected_alone(engine, programmes):
    api = make_api(engine, programmes)

    @given(PLANS)
    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(plan: list) -> None:
        items, expected = zip(*(planned_line(step, "A-1") for step in plan), strict=True)
        response = api.client.post("/v1/events", content="[" + ",".join(items) + "]",
                                   headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert not any(r["error"] == INTERNAL_ERROR for r in results), results
        assert [r["status"] != "rejected" for r in results] == list(expected), results
        with engine.connect() as conn:
            assert ledger.verify(conn) == []

    check()


@pytest.mark.parametrize("deep", [40, 5000])
def test_an_item_nested_too_deep_to_parse_is_rejected_alone(engine, programmes, deep):
    """A batch item nested past the parser's recursion limit does not cost the other items their answer."""
    from tests.api_support import make_api

    api = make_api(engine, programmes)
    items = [text_of(good("first")), "[" * deep + "]" * deep, '{"x": ' + "[" * deep + "]" * deep + "}",
             text_of(good("last"))]
    answer = api.client.post("/v1/events", content="[" + ", ".join(items) + "]",
                             headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["applied", "rejected", "rejected", "applied"]
    assert all("nested" in r["error"] for r in results[1:3])
