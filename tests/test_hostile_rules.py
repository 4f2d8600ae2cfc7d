"""Rule files are untrusted input: hostile YAML, points expressions and rule sets are refused at check.

Each class goes through `loyalty rules check` (typer's CliRunner in this process: exit 1, the problem
at file:line with a clear message, no traceback) and through `load_programmes` (a RuleFileError).
Nothing here reaches the CEL parser or the matching core with input past their limits: those would
crash the test process itself, which is the point of refusing them first. The property tests
generate CEL and YAML sources from small grammars, within sizes verified in child processes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from engine import expressions
from engine.errors import EvaluationError, RuleFileError
from engine.expression_limits import (MAX_BRACKET_DEPTH, MAX_COMPREHENSIONS, MAX_LITERAL_ITEMS, MAX_OPERATORS,
                                      MAX_SOURCE_CHARS)
from engine.expressions import ExpressionError, compile_points
from engine.loader import load_programmes
from engine.matching import MAX_ALTERNATIVE_RULES_PER_EVENT_TYPE, MAX_RULES_PER_EVENT_TYPE
from engine.yaml_source import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_yaml
from tests.conftest import RULES

SHIPPED = (RULES / "corporate_lending.yaml").read_text()
RUNNER = CliRunner()
NEW_RULES_AT = "\n# What clients may redeem"


def write(tmp_path: Path, text: str, name: str = "hostile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def with_rules(tmp_path: Path, *rules: str) -> Path:
    """The shipped file with more rules (YAML lines indented as under `rules:`)."""
    assert SHIPPED.count(NEW_RULES_AT) == 1
    return write(tmp_path, SHIPPED.replace(NEW_RULES_AT, "\n" + "\n".join(rules) + NEW_RULES_AT))


def points_rule(expression: str, rule_id: str = "hostile") -> str:
    return (f"  - id: {rule_id}\n    when:\n      event: loan.drawn\n    award:\n"
            f"      points: {json.dumps(expression)}\n")


def refused(path: Path, *fragments: str) -> dict:
    """Check `path` through the CLI and the loader: refused, with the fragments in one located problem."""
    result = RUNNER.invoke(app, ["rules", "check", str(path), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.stdout
    problems = json.loads(result.stdout)["results"][0]["problems"]
    matching = [p for p in problems if all(fragment in p["message"] for fragment in fragments)]
    assert matching, problems
    assert matching[0]["line"] and matching[0]["severity"] == "error", matching[0]
    human = RUNNER.invoke(app, ["rules", "check", str(path)])
    assert human.exit_code == 1 and "Traceback" not in human.stdout
    assert f"{path}:{matching[0]['line']}" in human.stdout
    with pytest.raises(RuleFileError) as caught:
        load_programmes(path)
    assert any(all(fragment in p.message for fragment in fragments) for p in caught.value.problems)
    return matching[0]


def line_of(path: Path, needle: str) -> int:
    text = path.read_text()
    return text[: text.index(needle)].count("\n") + 1


# --- YAML ---------------------------------------------------------------------------------------------

def billion_laughs(levels: int = 9) -> str:
    text = 'lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for level in range(1, levels):
        text += f"lol{level}: &lol{level} [" + ", ".join([f"*lol{level - 1}"] * 9) + "]\n"
    return text


def test_an_alias_bomb_is_refused_at_its_line_before_it_expands(tmp_path):
    path = write(tmp_path, billion_laughs() + SHIPPED)
    problem = refused(path, "expands to", f"at most {MAX_NODES:,}")
    assert problem["line"] <= 9  # where the bomb is, not somewhere in the programme


def test_a_merge_key_bomb_is_refused_too(tmp_path):
    text = "m0: &m0 {a: 1, b: 2}\n" + "".join(
        f"m{n}: &m{n}\n  <<: [" + ", ".join([f"*m{n - 1}"] * 9) + "]\n" for n in range(1, 9))
    refused(write(tmp_path, text + SHIPPED), "expands to")


def test_a_generated_file_with_many_aliases_loads(tmp_path):
    # PyYAML's dump writes an anchor and an alias for every list or mapping shared in the data: a
    # generated file (bench/rule_check.py's, for one) may hold hundreds of aliases and expand to little.
    data = yaml.safe_load(SHIPPED)
    data["programme"]["effective_from"] = "2025-01-01T00:00:00Z"  # a string, as a YAML file holds it
    shared = {"attributes": {"amount": {"type": "money"}}}
    data["event_types"].update({f"generated.type{n}": shared for n in range(300)})
    text = yaml.safe_dump(data, sort_keys=False)
    assert text.count("*id") >= 299
    programmes = load_programmes(write(tmp_path, text))
    assert "generated.type299" in programmes.current.model.event_types


def test_deep_nesting_is_refused(tmp_path):
    text = "deep: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    refused(write(tmp_path, text + SHIPPED), f"nest more than {MAX_DEPTH} levels")


def test_a_huge_document_read_without_a_trial_is_refused_before_its_values_are_built():
    # A case file is read in the process that runs the cases: 4 times the bound in one flow list is
    # refused from the parser's events, before the first value is built.
    text = "cases: [" + "1, " * (4 * MAX_NODES) + "]\n"
    with pytest.raises(RuleFileError, match=f"more than {MAX_NODES:,} values by here") as caught:
        load_yaml("cases.yaml", text, fast=False)
    assert caught.value.problems[0].line == 1
    deep = "cases: " + "[" * 200 + "]" * 200 + "\n"
    with pytest.raises(RuleFileError, match=f"nest more than {MAX_DEPTH} levels"):
        load_yaml("cases.yaml", deep, fast=False)


def test_a_file_over_the_size_limit_is_refused_without_reading_it_whole(tmp_path):
    path = write(tmp_path, SHIPPED + "#" * MAX_FILE_BYTES + "\n")
    result = RUNNER.invoke(app, ["rules", "check", str(path), "--json"])
    assert result.exit_code == 1
    [problem] = json.loads(result.stdout)["results"][0]["problems"]
    assert f"at most {MAX_FILE_BYTES:,} bytes" in problem["message"]
    with pytest.raises(RuleFileError, match="bytes"):
        load_programmes(path)


def test_anchors_and_aliases_used_modestly_still_work(tmp_path):
    text = SHIPPED.replace("    when:\n      event: loan.drawn\n    award:\n      points: event.amount / 10000",
                           "    when: &drawn\n      event: loan.drawn\n    award:\n      points: event.amount / 10000", 1)
    text = text.replace(NEW_RULES_AT, "\n  - id: drawn-again\n    when: *drawn\n    award: {points: 1}\n" + NEW_RULES_AT)
    programmes = load_programmes(write(tmp_path, text))
    assert "drawn-again" in [rule.rule.id for rule in programmes.current.rules]


# --- points expressions -----------------------------------------------------------------------------

def test_the_segfaulting_chain_of_20000_terms_is_refused_before_the_parser(tmp_path):
    path = with_rules(tmp_path, points_rule("1" + " + 1" * 20_000))
    problem = refused(path, f"at most {MAX_SOURCE_CHARS:,}")
    assert problem["path"].endswith("award.points") and problem["line"] == line_of(path, "id: hostile") + 4


def test_a_long_chain_within_the_length_is_refused_by_its_operators(tmp_path):
    refused(with_rules(tmp_path, points_rule("1" + "+1" * (MAX_OPERATORS + 1))), f"at most {MAX_OPERATORS}")


def test_nine_nested_comprehensions_are_refused(tmp_path):
    expression = "[0,1,2,3,4,5,6,7,8,9].all(a0, " + "".join(
        f"[0,1].all(a{n}, " for n in range(1, 9)) + "true" + ")" * 9 + " ? 1 : 0"
    problem = refused(with_rules(tmp_path, points_rule(expression)), f"at most {MAX_COMPREHENSIONS}")
    assert "comprehensions" in problem["message"] and "column" in problem["message"]


def test_deep_brackets_large_literals_and_regular_expressions_are_refused(tmp_path):
    refused(with_rules(tmp_path, points_rule("(" * (MAX_BRACKET_DEPTH + 1) + "1" + ")" * (MAX_BRACKET_DEPTH + 1))),
            f"at most {MAX_BRACKET_DEPTH}")
    refused(with_rules(tmp_path, points_rule(f"size([{', '.join(['1'] * (MAX_LITERAL_ITEMS + 1))}])")),
            f"at most {MAX_LITERAL_ITEMS}")
    refused(with_rules(tmp_path, points_rule("'abc'.matches('a+') ? 1 : 0")), "regular expressions")


def test_a_branch_behind_a_large_amount_is_tried_when_the_file_loads(tmp_path):
    problem = refused(with_rules(tmp_path, points_rule("event.amount > 900000000 ? 1.5 : 1")),
                      "it must give a whole number", "amount 900000001")
    assert problem["path"].endswith("award.points")


def test_each_tier_and_each_enum_value_are_tried(tmp_path):
    refused(with_rules(tmp_path, points_rule("client.tier == 'diamond' ? 'many' : 1")), "client.tier 'diamond'")
    refused(with_rules(tmp_path, points_rule("event.product == 'trade_finance' ? 2.5 : 1")), "'trade_finance'")


def test_an_expression_over_the_budget_at_load_is_refused_with_its_rule_and_event(tmp_path, monkeypatch):
    # In process only: `rules check` tries the file in a child, which a server-like (threaded) process starts
    # afresh, without this patch; every other refusal here goes through the command too.
    monkeypatch.setattr(expressions, "EVALUATION_BUDGET_SECONDS", 0.0)  # every evaluation is now too slow
    path = with_rules(tmp_path, points_rule("event.amount > 900000000 ? 7 : 1", rule_id="r7"))
    with pytest.raises(RuleFileError) as caught:
        load_programmes(path)
    [problem] = [p for p in caught.value.problems if "rule r7 took" in p.message]
    assert problem.message.startswith("the points expression of rule r7 took") and "at most 0 ms" in problem.message
    assert "on an event with amount" in problem.message and problem.line == line_of(path, "id: r7") + 4


def test_an_evaluation_over_the_budget_at_run_time_rejects_the_event(monkeypatch):
    expression = compile_points("event.amount / 10000", [{"event": {"amount": 10_000}, "client": {}}])
    monkeypatch.setattr(expressions, "EVALUATION_BUDGET_SECONDS", 0.0)
    with pytest.raises(EvaluationError, match="took .* on this event; at most 0 ms, so the event is rejected"):
        expression.evaluate({"event": {"amount": 10_000}, "client": {}})


# --- the matching core --------------------------------------------------------------------------------

def test_257_unconditional_rules_on_one_event_type_are_refused_with_a_clear_message(tmp_path):
    rules = [f"  - id: bulk-{n}\n    when: {{event: loan.drawn}}\n    award: {{points: 1}}\n"
             for n in range(MAX_RULES_PER_EVENT_TYPE + 2)]
    problem = refused(with_rules(tmp_path, *rules), "rules can match one loan.drawn event",
                      f"at most {MAX_RULES_PER_EVENT_TYPE}")
    assert "error code" not in problem["message"]


def test_rules_told_apart_by_eq_may_exceed_that_number(tmp_path):
    rules = [f"  - id: by-term-{n}\n    when: {{event: loan.drawn, where: {{term_months: {{eq: {n + 1}}}}}}}\n"
             f"    award: {{points: 1}}\n" for n in range(300)]
    assert len(load_programmes(with_rules(tmp_path, *rules)).current.rules) > 300


def test_too_many_rules_with_alternatives_on_one_event_type_are_refused(tmp_path):
    rules = [f"  - id: tiered-{n}\n    when: {{event: loan.drawn, client: {{min_tier: silver}}}}\n"
             f"    award: {{points: 1}}\n" for n in range(MAX_ALTERNATIVE_RULES_PER_EVENT_TYPE + 1)]
    refused(with_rules(tmp_path, *rules), "condition with alternatives", f"at most {MAX_ALTERNATIVE_RULES_PER_EVENT_TYPE}")


# --- property tests -------------------------------------------------------------------------------------

_ATOMS = st.sampled_from(["1", "7", "event.amount", "event.term_months", "client.tenure_months", "0", "2.5",
                          "'a'", "true", "has(event.term_months)", "size('abc')"])
_LISTS = st.lists(st.sampled_from(["1", "2", "'x'", "x"]), max_size=40).map(lambda items: "[" + ", ".join(items) + "]")


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "%", "==", "<", "&&", "||"]), children)
          .map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        children.map(lambda c: f"({c})"),
        st.tuples(children, children, children).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        st.tuples(_LISTS, st.sampled_from(["all", "exists", "exists_one", "map", "filter"]), children)
          .map(lambda t: f"{t[0]}.{t[1]}(x, {t[2]})"),
        st.tuples(children, st.integers(1, 150)).map(lambda t: " + ".join([t[0]] * t[1])),
    )


CEL_SOURCES = st.recursive(_ATOMS, _combine, max_leaves=40)
SAMPLES = [{"event": {"amount": amount, "term_months": months}, "client": {"tenure_months": 3}}
           for amount in (0, 1, 999_999_999_999_999) for months in (1, 360)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CEL_SOURCES)
def test_any_generated_expression_compiles_or_is_refused_never_crashes(source):
    try:
        expression = compile_points(source, SAMPLES)
    except ExpressionError as exc:
        assert str(exc)
        return
    for sample in SAMPLES:
        try:
            expression.evaluate(sample)
        except EvaluationError:
            pass


_SCALARS = st.sampled_from(["1", "x", "'q'", "true", "2025-01-01", "null"])


@st.composite
def yaml_documents(draw) -> str:
    """A YAML text with anchors, aliases (some nested in each other), merge keys and nesting."""
    lines = []
    anchors: list[str] = []
    for n in range(draw(st.integers(1, 12))):
        depth = draw(st.integers(0, 40))
        refs = [f"*{name}" for name in draw(st.lists(st.sampled_from(anchors), max_size=12))] if anchors else []
        items = refs + draw(st.lists(_SCALARS, max_size=4))
        value = "[" * depth + "[" + ", ".join(items) + "]" + "]" * depth
        if anchors and draw(st.booleans()):
            value = "{<<: " + f"*{draw(st.sampled_from(anchors))}" + ", k: 1}" if draw(st.booleans()) else value
        lines.append(f"k{n}: &a{n} {value}")
        anchors.append(f"a{n}")
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None)
@given(yaml_documents())
def test_any_generated_yaml_loads_or_is_refused_alike_whether_counted_before_or_after_composing(text):
    outcomes = []
    for fast in (True, False):  # rule files (tried in a child first), case files (counted while parsed)
        try:
            outcomes.append(load_yaml("generated.yaml", text, fast).data)
        except RuleFileError as exc:
            assert all(problem.line for problem in exc.problems), exc.problems
            outcomes.append("refused")
    assert outcomes[0] == outcomes[1]


def test_a_recursive_alias_is_refused_at_its_line(tmp_path):
    refused(write(tmp_path, "loop: &a [1, *a]\n" + SHIPPED), "refers to the list or mapping that contains it")


def test_rules_sharing_an_expression_are_each_named_in_its_refusal(tmp_path, monkeypatch):
    # The expression is compiled once per event type and its refusal reused: each rule's problem names it.
    monkeypatch.setattr(expressions, "EVALUATION_BUDGET_SECONDS", 0.0)
    path = with_rules(tmp_path, points_rule("event.amount > 900000000 ? 7 : 1", rule_id="first"),
                      points_rule("event.amount > 900000000 ? 7 : 1", rule_id="second"))
    with pytest.raises(RuleFileError) as caught:
        load_programmes(path)
    named = {problem.line: problem.message for problem in caught.value.problems if "took" in problem.message}
    assert named[line_of(path, "id: first") + 4].startswith("the points expression of rule first took")
    assert named[line_of(path, "id: second") + 4].startswith("the points expression of rule second took")
