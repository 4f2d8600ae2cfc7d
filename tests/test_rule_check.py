"""`loyalty rules check` end to end: one broken file per kind of error and warning, asserting the
place (line, column, key path) and the message; --strict, --json, several files, a good file.

Most runs go through typer's CliRunner (the `loyalty` app in this process, fast); the exit codes and
the human output are also checked once in a subprocess, as an operator runs the command. A property
test holds the reasoning behind "can never hold" and "overlap" to brute force, since a wrong "never"
would keep a good file from loading.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from engine.lint import _Attribute, _condition_tests, _tested
from engine.schema import AttributeSpec, Condition
from tests.conftest import RULES, run_cli

SHIPPED = RULES / "corporate_lending.yaml"
RUNNER = CliRunner()
NEW_RULES_AT = "\n# What clients may redeem"  # new rules are appended to the rules section, before this


def variant(tmp_path: Path, *edits: tuple[str, str], name: str = "rules.yaml") -> Path:
    """The shipped file with each (old, new) edit applied once, written to `tmp_path / name`."""
    text = SHIPPED.read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} must occur once in the shipped file"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def with_rule(tmp_path: Path, rule: str) -> Path:
    """The shipped file with one more rule (YAML lines indented as under `rules:`)."""
    return variant(tmp_path, (NEW_RULES_AT, "\n" + rule + NEW_RULES_AT))


def place(path: Path, needle: str, key: str) -> tuple[int, int]:
    """(line, column), 1-based, of the first `key` on the line where `needle` first appears."""
    text = path.read_text()
    line = text[: text.index(needle)].count("\n") + 1
    return line, text.splitlines()[line - 1].index(key) + 1


def line_of(path: Path, needle: str) -> int:
    """Line of the first `needle` in the file."""
    return place(path, needle, needle)[0]


def check(*args: object) -> tuple[int, dict]:
    """Run `loyalty rules check ARGS --json`; (exit code, parsed report)."""
    result = RUNNER.invoke(app, ["rules", "check", *map(str, args), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, json.loads(result.stdout)


def only_problem(path: Path, *options: str) -> tuple[int, dict]:
    """(exit code, the one problem) of checking `path`."""
    code, report = check(path, *options)
    problems = report["results"][0]["problems"]
    assert len(problems) == 1, problems
    return code, problems[0]


def assert_problem(problem: dict, severity: str, at: tuple[int, int], path: str, *fragments: str) -> None:
    assert problem["severity"] == severity, problem
    assert (problem["line"], problem["column"]) == at, problem
    assert problem["path"] == path, problem
    for fragment in fragments:
        assert fragment in problem["message"], (fragment, problem["message"])


# --- a good file ---------------------------------------------------------------------------------------

def test_the_shipped_rules_pass_even_with_strict():
    code, report = check(SHIPPED, "--strict")
    assert code == 0
    assert (report["valid"], report["errors"], report["warnings"], report["files"]) == (True, 0, 0, 1)
    [result] = report["results"]
    assert result["problems"] == [] and result["versions"][0]["version"] == "2026.1"


# --- errors: tier thresholds -----------------------------------------------------------------------------

def test_a_higher_tier_asking_less_is_an_error_naming_both_tiers(tmp_path):
    path = variant(tmp_path, ("        - {metric: loan_volume, gte: 100000000}",
                              "        - {metric: loan_volume, gte: 20000000}"))
    code, problem = only_problem(path)
    gold_line = line_of(path, "{metric: loan_volume, gte: 30000000}")
    assert code == 1
    assert_problem(problem, "error", place(path, "{metric: loan_volume, gte: 20000000}", "{"), "tiers[3].qualification.all[0]",
                   "tier 'diamond' asks loan_volume gte 20000000, less than the lower tier 'gold' asks "
                   f"(gte 30000000, line {gold_line}): thresholds must rise with the tiers")


DIAMOND_ALL = "      all:\n        - {metric: loan_volume, gte: 100000000}\n        - {metric: on_time_repayment_ratio, gte: 0.95}"


def test_an_any_group_counts_only_when_every_branch_bounds_the_metric(tmp_path):
    certain = variant(tmp_path, (DIAMOND_ALL, "      any:\n        - all:\n"
                                              "            - {metric: loan_volume, gte: 25000000}\n"
                                              "            - {metric: products_held, gte: 3}\n"
                                              "        - {metric: loan_volume, gte: 150000000}"))
    code, problem = only_problem(certain)
    assert code == 1
    assert_problem(problem, "error", place(certain, "{metric: loan_volume, gte: 25000000}", "{"),
                   "tiers[3].qualification.any[0].all[0]",
                   "tier 'diamond' asks loan_volume gte 25000000, less than the lower tier 'gold'")
    # One branch without a loan_volume threshold: a client may reach diamond through it, so nothing is certain.
    uncertain = variant(tmp_path, (DIAMOND_ALL, "      any:\n        - all:\n"
                                                "            - {metric: loan_volume, gte: 25000000}\n"
                                                "            - {metric: products_held, gte: 3}\n"
                                                "        - {metric: products_held, gte: 5}"), name="uncertain.yaml")
    code, report = check(uncertain, "--strict")
    assert code == 0 and report["results"][0]["problems"] == []


def test_a_higher_tier_allowing_more_is_an_error(tmp_path):
    path = variant(tmp_path,
                   ("        - {metric: on_time_repayment_ratio, gte: 0.9}",
                    "        - {metric: on_time_repayment_ratio, gte: 0.9}\n        - {metric: late_repayments, lte: 1}"),
                   ("        - {metric: on_time_repayment_ratio, gte: 0.95}",
                    "        - {metric: on_time_repayment_ratio, gte: 0.95}\n        - {metric: late_repayments, lte: 3}"))
    code, problem = only_problem(path)
    assert code == 1
    assert_problem(problem, "error", place(path, "{metric: late_repayments, lte: 3}", "{"), "tiers[3].qualification.all[2]",
                   "tier 'diamond' allows late_repayments lte 3, more than the lower tier 'gold' allows "
                   f"(lte 1, line {line_of(path, 'late_repayments, lte: 1')})")


def test_a_qualification_that_can_never_hold(tmp_path):
    path = variant(tmp_path, ("        - {metric: on_time_repayment_ratio, gte: 0.9}",
                              "        - {metric: on_time_repayment_ratio, gte: 0.9}\n"
                              "        - {metric: loan_volume, lt: 10000000}"))
    code, problem = only_problem(path)
    assert code == 1
    assert_problem(problem, "error", place(path, "{metric: loan_volume, lt: 10000000}", "{"), "tiers[2].qualification.all[2]",
                   f"can never hold: loan_volume gte 30000000 (line {line_of(path, 'gte: 30000000')}) and "
                   "loan_volume lt 10000000 are both required; tier 'gold' can never be reached")


def test_a_threshold_outside_its_metrics_values(tmp_path):
    path = variant(tmp_path, ("on_time_repayment_ratio, gte: 0.9}", "on_time_repayment_ratio, gte: 1.5}"))
    code, problem = only_problem(path)  # diamond's 0.95 is not compared with an impossible 1.5
    assert code == 1
    assert_problem(problem, "error", place(path, "gte: 1.5", "gte"), "tiers[2].qualification.all[1].gte",
                   "on_time_repayment_ratio gte 1.5 can never be met: on_time_repayment_ratio is a share from 0 to 1")


# --- errors: conditions that can never hold --------------------------------------------------------------

CLIENT_DAY = "        kind: {eq: client_day}\n    award:\n      points: 500"
ON_TIME = "        days_late: {eq: 0}\n    award:\n      points: event.amount / 20000"
GOLD_ONLY = "        min_tier: gold\n    award:"
SURVEY = "      event: survey.answered\n    award:"


@pytest.mark.parametrize(("old", "new", "needle", "key", "path", "message"), [
    pytest.param("        amount: {gte: 50000000}\n", "        amount: {gte: 50000000, lt: 100}\n",
                 "amount: {gte: 50000000, lt", "amount", "rules[1].when.where.amount",
                 "can never hold: no value is both gte 50000000 and lt 100; rule 'large-drawdown-discount' never fires",
                 id="gt-and-lt"),
    pytest.param("        amount: {gte: 50000000}\n", "        amount: {lte: 0}\n", "amount: {lte: 0}", "lte",
                 "rules[1].when.where.amount.lte",
                 "can never hold: lte 0 leaves no possible value: amount is an amount above 0", id="money-at-or-below-0"),
    pytest.param(CLIENT_DAY, CLIENT_DAY.replace("{eq: client_day}", "{eq: client_day, ne: client_day}"),
                 "ne: client_day", "kind", "rules[7].when.where.kind",
                 "can never hold: no value is both eq client_day and ne client_day", id="eq-and-ne"),
    pytest.param("        product: {in: [working_capital, term_loan]}",
                 "        product: {in: [working_capital, term_loan], not_in: [term_loan, working_capital]}",
                 "not_in: [term_loan", "product", "rules[1].when.where.product",
                 "no value is both in [working_capital, term_loan] and not_in [term_loan, working_capital]",
                 id="in-emptied-by-not_in"),
    pytest.param(ON_TIME, ON_TIME.replace("{eq: 0}", "{gte: 4000}"), "days_late: {gte: 4000}", "gte",
                 "rules[2].when.where.days_late.gte",
                 "gte 4000 leaves no possible value: days_late is a whole number from 0 to 3650",
                 id="outside-declared-range"),
    pytest.param(GOLD_ONLY, "        min_tier: gold\n        tier: {eq: silver}\n    award:", "tier: {eq: silver}", "tier",
                 "rules[9].when.client.tier",
                 "no tier is both eq silver and min_tier gold (gold or higher); rule 'gold-client-day-fast-track' "
                 "never fires", id="tier-below-min_tier"),
    pytest.param(SURVEY, "      event: survey.answered\n      where:\n        csat: {exists: false, gte: 3}\n    award:",
                 "csat: {exists", "csat", "rules[6].when.where.csat",
                 "exists: false needs csat absent, but gte 3 needs it present", id="exists-false-with-gte"),
    pytest.param(ON_TIME, ON_TIME.replace("{eq: 0}", "{exists: false}"), "days_late: {exists", "exists",
                 "rules[2].when.where.days_late.exists",
                 "exists: false needs days_late absent, but it is required: every event has it",
                 id="exists-false-on-required"),
])
def test_a_condition_that_can_never_hold_says_why(tmp_path, old, new, needle, key, path, message):
    file = variant(tmp_path, (old, new))
    code, problem = only_problem(file)
    assert code == 1
    assert_problem(problem, "error", place(file, needle, key), path, message)


# --- errors: misspelt names, each with a suggestion ---------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "needle", "key", "path", "message"), [
    pytest.param("      event: product.purchased", "      event: product.purchase", "event: product.purchase", "event",
                 "rules[4].when.event", "unknown event type 'product.purchase' (did you mean 'product.purchased'?)",
                 id="event-type"),
    pytest.param("        amount: {gte: 50000000}", "        amout: {gte: 50000000}", "amout:", "amout",
                 "rules[1].when.where.amout", "unknown attribute of loan.drawn 'amout' (did you mean 'amount'?)",
                 id="attribute"),
    pytest.param("        - {metric: loan_volume, gte: 30000000}", "        - {metric: loan_volme, gte: 30000000}",
                 "loan_volme", "metric", "tiers[2].qualification.all[0].metric",
                 "unknown metric 'loan_volme' (did you mean 'loan_volume'?)", id="metric"),
    pytest.param(GOLD_ONLY, "        min_tier: gld\n    award:", "min_tier: gld", "min_tier",
                 "rules[9].when.client.min_tier", "unknown tier 'gld' (did you mean 'gold'?)", id="min_tier"),
    pytest.param(GOLD_ONLY, "        tier: {in: [gold, diamnd]}\n    award:", "tier: {in: [gold, diamnd]}", "in",
                 "rules[9].when.client.tier.in", "unknown tier 'diamnd' (did you mean 'diamond'?)", id="tier-value"),
    pytest.param("products: [working_capital, term_loan], use: single, valid_for_days: 180}\n    cap",
                 "products: [working_capital, term_lone], use: single, valid_for_days: 180}\n    cap",
                 "term_lone", "term_lone", "rules[1].award.rate_discount.products[1]",
                 "unknown loan product 'term_lone' (did you mean 'term_loan'?)", id="product"),
    pytest.param("      points: event.amount / 20000", "      points: event.amont / 20000", "event.amont", "points",
                 "rules[2].award.points", "points expression reads event.amont: unknown attribute of repayment.made "
                 "'amont' (did you mean 'amount'?)", id="expression-attribute"),
    pytest.param(CLIENT_DAY, CLIENT_DAY.replace("client_day}", "clientday}"), "clientday", "eq",
                 "rules[7].when.where.kind.eq", "unknown value 'clientday' (did you mean 'client_day'?)",
                 id="enum-value"),
])
def test_a_misspelt_name_gets_a_suggestion(tmp_path, old, new, needle, key, path, message):
    file = variant(tmp_path, (old, new))
    code, problem = only_problem(file)
    assert code == 1
    assert_problem(problem, "error", place(file, needle, key), path, message)


# --- warnings ------------------------------------------------------------------------------------------------

JUMBO = """  - id: jumbo-drawdown-discount
    when:
      event: loan.drawn
      where:
        amount: {AMOUNT}
    award:
      rate_discount: {bps: 5, products: [working_capital], use: single, valid_for_days: 90}
    cap: {per: year, times: 1}
"""


def test_overlapping_rate_discounts_warn_and_fail_only_with_strict(tmp_path):
    path = with_rule(tmp_path, JUMBO.replace("{AMOUNT}", "{gte: 80000000}"))
    code, problem = only_problem(path)
    assert code == 0
    first = line_of(path, "- id: large-drawdown-discount")
    assert_problem(problem, "warning", place(path, "[working_capital], use: single, valid_for_days: 90}", "rate_discount"),
                   "rules[11].award.rate_discount",
                   f"rules 'large-drawdown-discount' (line {first}) and 'jumbo-drawdown-discount' both grant a rate "
                   "discount on working_capital for one event, e.g. loan.drawn with amount 80000000.00, product "
                   "working_capital: such a client gets both")
    strict_code, strict = check(path, "--strict")
    assert strict_code == 1 and strict["valid"] is False and strict["warnings"] == 1


def test_rules_with_exclusive_conditions_do_not_overlap(tmp_path):
    path = with_rule(tmp_path, JUMBO.replace("{AMOUNT}", "{lt: 50000000}"))
    code, report = check(path, "--strict")
    assert code == 0 and report["results"][0]["problems"] == []


@pytest.mark.parametrize(("edits", "needle", "key", "path", "message"), [
    pytest.param([(NEW_RULES_AT, """
  - id: diamond-event-fast-track
    when:
      event: event.attended
      where:
        kind: {in: [client_day, forum]}
      client:
        min_tier: diamond
    award:
      benefit: {kind: fast_track, lane: express_24h, sla_hours: 12, use: single, valid_for_days: 30}
""" + NEW_RULES_AT)], "sla_hours: 12, use", "benefit", "rules[11].award.benefit",
        "rules 'gold-client-day-fast-track' (line {gold-client-day-fast-track}) and 'diamond-event-fast-track' both "
        "grant a fast_track benefit for one event, e.g. event.attended with kind client_day, client.tier diamond",
        id="overlapping-benefits"),
    pytest.param([("rate_discount: {bps: 5, products: [working_capital], use: single, valid_for_days: 365}",
                   "rate_discount: {bps: 5, products: [working_capital], use: standing}")],
                 "use: standing}", "rate_discount", "rules[5].award.rate_discount",
                 "the 5 bps discount on working_capital is standing with no valid_for_days: every firing of rule "
                 "'referral' adds one that never expires", id="standing-discount-forever"),
    pytest.param([(CLIENT_DAY, CLIENT_DAY + "\n      benefit: {kind: fee_waiver, fee_waiver_pct: 20}")],
                 "fee_waiver_pct: 20", "benefit", "rules[7].award.benefit",
                 "the fee_waiver benefit has no valid_for_days and rule 'client-day' has no cap: every matching event "
                 "grants one more, and none ever expires", id="single-use-unbounded"),
    pytest.param([("    benefit: {kind: fee_waiver, fee_waiver_pct: 100, use: single, valid_for_days: 90}",
                   "    benefit: {kind: fee_waiver, fee_waiver_pct: 100, use: standing}")],
                 "fee_waiver_pct: 100, use: standing", "benefit", "catalogue[2].benefit",
                 "the fee_waiver benefit is standing with no valid_for_days: one redemption of 'fee-waiver-full' "
                 "gives it for ever", id="catalogue-standing-forever"),
    pytest.param([("rate_discount: {bps: 5, products: [working_capital], use: single, valid_for_days: 365}",
                   "rate_discount: {bps: 60, products: [working_capital], use: single, valid_for_days: 365}")],
                 "bps: 60, products: [", "working_capital", "rules[5].award.rate_discount.products[0]",
                 "'referral' grants 60 bps on working_capital, above its discount ceiling of 50 bps: at most 50 bps of "
                 "it ever applies", id="above-ceiling"),
    pytest.param([("      points: 2000\n", "      points: 2000\n    cap: {per: month, points: 1000}\n")],
                 "cap: {per: month, points: 1000}", "points", "rules[4].cap.points",
                 "the cap of 1000 points per month is below the rule's constant award of 2000: rule 'cross-sell' never "
                 "gives its full award", id="cap-below-award"),
    pytest.param([("      points_multiplier: 2\n", "      points_multiplier: 1.4\n")],
                 "points_multiplier: 1.4", "points_multiplier", "tiers[3].benefits.points_multiplier",
                 "tier 'diamond' multiplies points by 1.4, less than the tier below, 'gold' (1.5): a client moving up "
                 "loses out", id="tier-benefit-falls"),
    pytest.param([("{lane: green_channel, sla_hours: 48}", "{lane: green_channel, sla_hours: 96}")],
                 "sla_hours: 96", "sla_hours", "tiers[3].benefits.fast_track.sla_hours",
                 "tier 'diamond' has a 96 h fast track, slower than the tier below, 'gold' (72 h)", id="slower-fast-track"),
    pytest.param([(SURVEY, "      event: survey.answered\n      where:\n        csat: {exists: false, ne: 3}\n    award:")],
                 "csat: {exists: false, ne: 3}", "ne", "rules[6].when.where.csat.ne",
                 "ne 3 adds nothing: exists: false already leaves csat absent", id="exists-false-with-ne"),
])
def test_each_kind_of_warning_is_reported_at_its_place(tmp_path, edits, needle, key, path, message):
    file = variant(tmp_path, *edits)
    code, problem = only_problem(file)
    assert code == 0
    rule = "gold-client-day-fast-track"
    message = message.replace("{" + rule + "}", str(line_of(file, f"- id: {rule}")))
    assert_problem(problem, "warning", place(file, needle, key), path, message)
    assert check(file, "--strict")[0] == 1


def test_a_rule_that_never_fires_overlaps_with_nothing(tmp_path):
    grant = "\n      benefit: {kind: fast_track, lane: express_24h, sla_hours: 24, valid_for_days: 30}"
    overlapping = variant(tmp_path, (CLIENT_DAY, CLIENT_DAY + grant))
    code, problem = only_problem(overlapping)
    assert code == 0 and "both grant a fast_track benefit" in problem["message"]
    never = variant(tmp_path, (CLIENT_DAY, CLIENT_DAY + grant),
                    (GOLD_ONLY, "        min_tier: gold\n        tier: {eq: silver}\n    award:"), name="never.yaml")
    code, problem = only_problem(never)
    assert code == 1 and problem["path"] == "rules[9].when.client.tier" and "never fires" in problem["message"]


# --- several files, --json and the human output --------------------------------------------------------------

def broken_with_warning(tmp_path: Path) -> Path:
    return variant(tmp_path, ("      points_multiplier: 2\n", "      points_multiplier: 1.4\n"),
                   ("        amount: {gte: 50000000}\n", "        amount: {gte: 50000000, lt: 100}\n"),
                   ("      event: product.purchased", "      event: product.purchase"), name="broken.yaml")


def test_all_problems_at_once_grouped_per_file_and_sorted_by_line(tmp_path):
    broken = broken_with_warning(tmp_path)
    code, report = check(broken, SHIPPED)
    assert code == 1
    assert (report["valid"], report["files"], report["errors"], report["warnings"]) == (False, 2, 2, 1)
    first, second = report["results"]
    assert (first["valid"], first["errors"], first["warnings"], first["versions"]) == (False, 2, 1, [])
    places = [(p["line"], p["column"]) for p in first["problems"]]
    assert places == sorted(places) and len(places) == 3
    assert [p["severity"] for p in first["problems"]] == ["warning", "error", "error"]
    for problem in first["problems"]:
        assert set(problem) == {"file", "line", "column", "path", "severity", "message"}
        assert problem["file"] == str(broken)
    assert second["valid"] is True and second["problems"] == []


def test_a_directory_is_checked_as_versions_of_one_programme(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "a.yaml").write_text(SHIPPED.read_text())
    later = SHIPPED.read_text().replace('version: "2026.1"', 'version: "2026.2"') \
        .replace("effective_from: 2025-01-01", "effective_from: 2026-07-01") \
        .replace("  - id: standard\n    name: Standard", "  - id: basic\n    name: Basic") \
        .replace("      points_multiplier: 2\n", "      points_multiplier: 1.4\n")
    (folder / "b.yaml").write_text(later)
    code, report = check(folder)
    assert code == 1
    [result] = report["results"]
    assert [v["file"] for v in result["versions"]] == [str(folder / "a.yaml"), str(folder / "b.yaml")]
    assert [(p["file"], p["severity"], p["path"]) for p in result["problems"]] == [
        (str(folder / "b.yaml"), "error", "tiers"), (str(folder / "b.yaml"), "warning", "tiers[3].benefits.points_multiplier")]
    assert "tiers standard of version 2026.1" in result["problems"][0]["message"]


def test_the_command_prints_file_line_column_and_exits_as_documented(tmp_path):
    broken = broken_with_warning(tmp_path)
    human = run_cli("rules", "check", str(broken), str(SHIPPED))
    assert human.returncode == 1, human.stderr
    line, column = place(broken, "amount: {gte: 50000000, lt", "amount")
    assert f"{broken}:{line}:{column}: error: rules[1].when.where.amount: can never hold" in human.stdout
    assert f"{broken}: does not load: 2 errors, 1 warning" in human.stdout
    assert f"{SHIPPED}: corporate-lending 2026.1, 11 rules: ok" in human.stdout
    assert "2 file(s) checked: 2 errors, 1 warning: failed" in human.stdout
    only_warning = variant(tmp_path, ("      points_multiplier: 2\n", "      points_multiplier: 1.4\n"))
    assert run_cli("rules", "check", str(only_warning)).returncode == 0
    strict = run_cli("rules", "check", str(only_warning), "--strict", "--json")
    assert strict.returncode == 1 and json.loads(strict.stdout)["warnings"] == 1
    assert "--strict" in run_cli("rules", "check", "--help").stdout


# --- the reasoning behind "can never hold" and "overlap", against brute force --------------------------------

def _passes(value: object, op: str, operand: object) -> bool:
    """The matching core's semantics: an absent attribute (None) passes ne and not_in and fails the rest."""
    if op == "exists":
        return (value is not None) == operand
    if value is None:
        return op in ("ne", "not_in")
    return {"eq": lambda: value == operand, "ne": lambda: value != operand, "in": lambda: value in operand,
            "not_in": lambda: value not in operand, "gt": lambda: value > operand, "gte": lambda: value >= operand,
            "lt": lambda: value < operand, "lte": lambda: value <= operand}[op]()


_OPERAND = st.integers(-4, 8)
_INTEGER_CONDITION = st.dictionaries(
    st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists"]), _OPERAND, min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(condition=_INTEGER_CONDITION, other=_INTEGER_CONDITION, low=st.none() | st.integers(-3, 3),
       high=st.none() | st.integers(0, 6), required=st.booleans(), lists=st.lists(_OPERAND, min_size=1, max_size=3))
def test_never_holds_and_overlap_agree_with_brute_force(condition, other, low, high, required, lists):
    spec = AttributeSpec(type="integer", min=low, max=max(high, low) if high is not None and low is not None else high,
                         required=required)
    attribute = _Attribute("x", spec, "CNY")

    def written(ops: dict) -> dict:
        return {op: (lists if op in ("in", "not_in") else (v > 2 if op == "exists" else v)) for op, v in ops.items()}

    values = [v for v in range(-10, 15) if (spec.min is None or v >= spec.min) and (spec.max is None or v <= spec.max)]
    candidates = values + ([] if required else [None])
    domains, holds = [], []
    for ops in (written(condition), written(other)):
        domains.append(_tested(attribute, (), _condition_tests(attribute, (), Condition.model_validate(ops))).domain)
        holds.append({v for v in candidates if all(_passes(v, op, operand) for op, operand in ops.items())})
    for domain, truth in zip(domains, holds):
        assert domain.is_empty() == (not truth)
    assert domains[0].meet(domains[1]).is_empty() == (not holds[0] & holds[1])
