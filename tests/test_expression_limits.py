"""Points expressions that pass the static limits stay cheap on every event the contract accepts.

Evaluation runs inside ingest's write transaction and its budget is measured only after it returns,
so the limits themselves must bound the work: comments cannot hide brackets, chained comprehensions
and concatenation cannot grow values geometrically, a branch behind an equality guard is tried when
the file loads, and any failure of CEL is an evaluation error that rejects the one event.
"""
from __future__ import annotations

import asyncio
import time

import cel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import EvaluationError
from engine.expression_limits import MAX_COMPREHENSIONS, static_problem
from engine.expressions import ExpressionError, PointsExpression, compile_points
from tests.test_hostile_rules import points_rule, refused, with_rules

LONGEST_NAME = "x" * 200  # events.MAX_TEXT_LENGTH
EVENT = {"event": {"amount": 10**15 - 1, "term_months": 7, "loan_id": LONGEST_NAME}, "client": {"tenure_months": 3}}


def compiles(source: str) -> PointsExpression:
    return compile_points(source, [EVENT])


# --- comments ---------------------------------------------------------------------------------------

def test_a_bracket_inside_a_comment_does_not_count():
    hidden = "[1,2].all(a, // ))\n[1,2].all(b, [1,2].all(c, true))) ? 1 : 0"
    assert "comprehensions" in static_problem(hidden)


def test_comments_are_allowed_and_quotes_inside_them_hide_nothing():
    assert compiles("event.term_months // the client's term ('months')\n * 2").evaluate(EVENT) == 14
    assert "comprehensions" in static_problem("1 // it's\n + [1].map(a, a).map(b, b).map(c, c).size()")
    assert compiles("size('// not a comment')").evaluate(EVENT) == 16


def test_a_character_outside_the_cel_grammar_is_refused_at_its_column():
    assert "column 3" in static_problem("1 ` 2")


# --- growth -------------------------------------------------------------------------------------------

def chained(times: int, body: str = "a + a") -> str:
    return "size(['" + "x" * 10 + "']" + "".join(f".map(a, {body})" for _ in range(times)) + ")"


def test_chained_comprehensions_are_counted_in_all():
    assert static_problem(chained(25))  # the doubling chain of the review: 40 MB after 22 links
    assert f"at most {MAX_COMPREHENSIONS}" in static_problem(chained(MAX_COMPREHENSIONS + 1, "a"))
    assert compiles(chained(MAX_COMPREHENSIONS, "a")).evaluate(EVENT) == 1


@pytest.mark.parametrize("body", ["a + a", "[1] + [2]", "a + event.loan_id", "b'x' + a"])
def test_concatenation_inside_a_comprehension_is_refused(body):
    assert "inside a comprehension" in static_problem(f"size(['x'].map(a, {body}))")


@pytest.mark.parametrize("body", ["[a, a, a]", "{1: a, 2: a}", "[1, 2].map(b, [b, a])", "[[a]]"])
def test_a_comprehension_variable_cannot_be_repeated_in_a_literal(body):
    # 16 copies, then 15 copies of those, of 24 event texts, took 14 ms before this limit.
    assert "variable inside a list or map literal" in static_problem(f"size(['x'].map(a, {body}))")


def test_literals_and_variables_still_mix_where_nothing_repeats():
    nested = "[1, 2, 3].exists(a, [6, 7].exists(b, a * b == event.term_months * 3)) ? 1 : 0"
    assert compiles(nested).evaluate(EVENT) == 1
    assert compiles("size([[1, 2], [3]].map(a, a[0]))").evaluate(EVENT) == 2


def test_the_whole_event_or_client_cannot_be_iterated_or_passed_around():
    for source in ("event.all(k, true) ? 1 : 0", "size([event].map(e, e))", "size(client)", "[event][0].amount"):
        assert "event." in static_problem(source) or "client." in static_problem(source), source
    assert compiles("'term_months' in event ? event['term_months'] : 0").evaluate(EVENT) == 7


def test_the_reviewed_doubling_chain_is_refused_through_rules_check(tmp_path):
    refused(with_rules(tmp_path, points_rule(chained(25, "a"))), "comprehensions", f"at most {MAX_COMPREHENSIONS}")


@pytest.mark.parametrize("source", [
    "9223372036854775807 + event.amount", "-9223372036854775807 - 1 - event.term_months",
    "event.amount * event.amount * event.amount",
    "event.amount / 0", "event.amount % (event.term_months - 7)", "int(1e300)", "int(double(event.amount) * 1e300)",
    "int('99999999999999999999999')", "uint(-1)", "size(string(1e300) + string(-1.7e308)) * 0 + 1 / 0",
    "-9223372036854775807 - 1 + -1", "[1][5]", "{1: 2}[3]",
])
def test_overflow_division_by_zero_and_bad_conversions_reject_the_event(source):
    assert static_problem(source) is None
    expression = PointsExpression(source, cel.compile(source))
    with pytest.raises(EvaluationError):
        expression.evaluate(EVENT)


# Growth grammar: concatenation, list literals, conversions and comprehensions over the longest text.
_LEAVES = st.sampled_from(["event.loan_id", "'" + "y" * 100 + "'", "string(1.7e308)", "a", "[a]", "[event.loan_id]"])


def _grow(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(children, min_size=2, max_size=12).map(" + ".join),
        st.lists(children, min_size=1, max_size=12).map(lambda items: "[" + ", ".join(items) + "]"),
        st.tuples(children, st.sampled_from(["map", "filter", "all", "exists"]), children)
          .map(lambda t: f"[{t[0]}].{t[1]}(a, {t[2] if t[1] == 'map' else 'size(' + t[2] + ') > 0'})"),
        st.tuples(children, children).map(lambda t: f"({t[0]}) == ({t[1]})"),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(_LEAVES, _grow, max_leaves=60))
def test_any_expression_within_the_limits_evaluates_quickly(source):
    source = f"size({source}) > 0 ? 1 : 0"
    if static_problem(source):
        return
    try:
        expression = compiles(source)
    except ExpressionError:
        return
    began = time.process_time()
    try:
        expression.evaluate(EVENT)
    except EvaluationError:
        pass
    assert time.process_time() - began < 1  # generous: "does not hang"; the budget is 50 ms


# --- boundary events ------------------------------------------------------------------------------------

@pytest.mark.parametrize("guard", ["event.term_months == 7", "7 == event.term_months", "event.term_months != 200",
                                   "event.term_months < 8 && event.term_months > 6", "event.term_months in [200, 7]",
                                   "event.amount == 123456", "event.loan_id == 'vip'", "client.tenure_months == 77"])
def test_a_branch_behind_an_equality_guard_is_tried_when_the_file_loads(tmp_path, guard):
    expression = f"{guard} ? 1 : 2.5" if "!=" in guard else f"{guard} ? 2.5 : 1"
    refused(with_rules(tmp_path, points_rule(expression)), "it must give a whole number")


# --- what CEL raises ------------------------------------------------------------------------------------

class _Raising:
    def __init__(self, error: BaseException):
        self.error = error

    def execute(self, activation: dict) -> object:
        raise self.error


PanicException = type("PanicException", (BaseException,), {"__module__": "pyo3_runtime"})  # as pyo3 names it


def test_a_rust_panic_rejects_the_event():
    with pytest.raises(EvaluationError, match="failed"):
        PointsExpression("1", _Raising(PanicException("index out of range"))).evaluate(EVENT)


@pytest.mark.parametrize("error", [asyncio.CancelledError(), KeyboardInterrupt(), GeneratorExit(), SystemExit(3)])
def test_cancellation_and_interrupts_are_not_swallowed(error):
    with pytest.raises(type(error)):
        PointsExpression("1", _Raising(error)).evaluate(EVENT)
