"""Rule files: the shipped programme loads, and each kind of mistake is reported at its line."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.errors import RuleFileError
from engine.loader import load_programme, load_programmes
from tests.conftest import RULES

SHIPPED = RULES / "corporate_lending.yaml"


def shipped_data() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def write(tmp_path: Path, text: str, name: str = "programme.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list:
    with pytest.raises(RuleFileError) as caught:
        load_programme(path)
    return caught.value.problems


def replace_in_shipped(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """The shipped file with one edit, and the line number of the edit."""
    text = SHIPPED.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in the shipped file"
    line = text[: text.index(old)].count("\n") + 1
    return write(tmp_path, text.replace(old, new)), line


def two_versions(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    """A folder with the shipped programme and a version 2026.2 from 2026-07-01, with `edits` applied to it."""
    (tmp_path / "a.yaml").write_text(SHIPPED.read_text())
    text = SHIPPED.read_text().replace('version: "2026.1"', 'version: "2026.2"') \
        .replace("effective_from: 2025-01-01", "effective_from: 2026-07-01")
    for old, new in edits:
        text = text.replace(old, new)
    (tmp_path / "b.yaml").write_text(text)
    return tmp_path


def test_shipped_programme_loads_with_every_rule():
    programme = load_programmes(RULES).current
    assert programme.id == "corporate-lending"
    assert programme.tier_ids == ["standard", "silver", "gold", "diamond"]
    assert len(programme.rules) == len(shipped_data()["rules"])
    assert programme.tier("diamond").benefits.relationship_manager
    assert programme.tier("diamond").benefits.fast_track.sla_hours == 48
    assert programme.ceiling_bps("working_capital") == 50
    assert programme.ceiling_bps("project_finance") == 40


def test_misspelt_key_is_reported_at_its_line_with_a_suggestion(tmp_path):
    path, line = replace_in_shipped(tmp_path, "      points: event.amount / 10000", "      pionts: event.amount / 10000")
    [problem] = problems_of(path)
    assert problem.line == line
    assert problem.path == "rules[0].award.pionts"
    assert "did you mean 'points'" in problem.message


def test_missing_required_key_names_the_key(tmp_path):
    path, _ = replace_in_shipped(tmp_path, "  currency: CNY\n", "")
    [problem] = problems_of(path)
    assert problem.path == "programme.currency"
    assert "required key 'currency' is missing" in problem.message
    text = SHIPPED.read_text()
    assert problem.line == text[: text.index("programme:\n")].count("\n") + 1  # the enclosing key's line


def test_wrong_type_reports_value_and_expectation(tmp_path):
    path, line = replace_in_shipped(tmp_path, "sla_hours: 48}", "sla_hours: soon}")
    [problem] = problems_of(path)
    assert problem.line == line
    assert problem.path == "tiers[3].benefits.fast_track.sla_hours"
    assert "integer" in problem.message and "'soon'" in problem.message


def test_unknown_event_type_in_rule(tmp_path):
    path, line = replace_in_shipped(tmp_path, "      event: product.purchased", "      event: product.purchase")
    [problem] = problems_of(path)
    assert problem.line == line
    assert "unknown event type 'product.purchase'" in problem.message
    assert "did you mean 'product.purchased'" in problem.message


def test_unknown_attribute_in_condition(tmp_path):
    path, line = replace_in_shipped(tmp_path, "        amount: {gte: 50000000}", "        amout: {gte: 50000000}")
    [problem] = problems_of(path)
    assert problem.line == line
    assert problem.path == "rules[1].when.where.amout"
    assert "did you mean 'amount'" in problem.message


def test_unknown_product_in_grant(tmp_path):
    path, line = replace_in_shipped(
        tmp_path, "rate_discount: {bps: 5, products: [working_capital], use: single, valid_for_days: 365}",
        "rate_discount: {bps: 5, products: [working_capitol], use: single, valid_for_days: 365}")
    [problem] = problems_of(path)
    assert problem.line == line
    assert "unknown loan product 'working_capitol'" in problem.message


def test_enum_condition_value_must_be_declared(tmp_path):
    path, line = replace_in_shipped(tmp_path, "        kind: {eq: client_day}\n    award:\n      points: 500",
                                    "        kind: {eq: clientday}\n    award:\n      points: 500")
    [problem] = problems_of(path)
    assert problem.line == line
    assert "unknown value 'clientday'" in problem.message and "client_day" in problem.message


def test_order_comparison_on_enum_is_refused(tmp_path):
    path, _ = replace_in_shipped(tmp_path, "        kind: {eq: client_day}\n    award:\n      points: 500",
                                 "        kind: {gt: client_day}\n    award:\n      points: 500")
    [problem] = problems_of(path)
    assert "gt compares order" in problem.message


def test_cel_syntax_error_is_reported_at_the_expression_line(tmp_path):
    path, line = replace_in_shipped(tmp_path, "      points: event.amount / 20000", "      points: event.amount / ")
    [problem] = problems_of(path)
    assert problem.line == line
    assert problem.path == "rules[2].award.points"
    assert "does not compile" in problem.message


def test_cel_expression_giving_a_fraction_is_refused_at_load(tmp_path):
    path, line = replace_in_shipped(tmp_path, "      points: event.amount / 20000",
                                    "      points: double(event.amount) / 20000.0")
    [problem] = problems_of(path)
    assert problem.line == line
    assert "must give a whole number" in problem.message


def test_cel_expression_reading_an_unknown_attribute_is_refused(tmp_path):
    path, _ = replace_in_shipped(tmp_path, "      points: event.amount / 20000", "      points: event.amont / 20000")
    [problem] = problems_of(path)
    assert "'amont'" in problem.message


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path, line = replace_in_shipped(tmp_path, "  version: \"2026.1\"\n", "  version: \"2026.1\"\n  version: \"2026.2\"\n")
    [problem] = problems_of(path)
    assert problem.line == line + 1
    assert "duplicate key" in problem.message


def test_yaml_syntax_error_has_a_line(tmp_path):
    path = write(tmp_path, "format: 1\nprogramme: {id: x\n")
    [problem] = problems_of(path)
    assert problem.line is not None and "not valid YAML" in problem.message


def test_unquoted_version_number_asks_for_quotes(tmp_path):
    path, _ = replace_in_shipped(tmp_path, 'version: "2026.1"', "version: 2026.1")
    [problem] = problems_of(path)
    assert "quoted string" in problem.message


def test_naive_effective_from_is_refused(tmp_path):
    path, _ = replace_in_shipped(tmp_path, "effective_from: 2025-01-01T00:00:00Z", "effective_from: 2025-01-01T00:00:00")
    [problem] = problems_of(path)
    assert problem.path == "programme.effective_from"
    assert "timezone" in problem.message.lower()


def test_standing_discount_above_the_ceiling_is_refused(tmp_path):
    path, line = replace_in_shipped(tmp_path, "{working_capital: 20, term_loan: 15", "{working_capital: 60, term_loan: 15")
    [problem] = problems_of(path)
    assert problem.line == line
    assert "above the ceiling" in problem.message


def test_duplicate_rule_ids_and_several_errors_reported_together(tmp_path):
    text = SHIPPED.read_text().replace("- id: referral\n", "- id: cross-sell\n")
    text = text.replace("products: [working_capital, term_loan], use: single", "products: [working_capital, loan], use: single")
    problems = problems_of(write(tmp_path, text))
    messages = " | ".join(p.message for p in problems)
    assert "'cross-sell' appears more than once" in messages
    assert "unknown loan product 'loan'" in messages
    assert len(problems) == 2


def test_several_schema_errors_reported_together(tmp_path):
    text = SHIPPED.read_text().replace("sla_hours: 48}", "sla_hours: -1}").replace("fee_waiver_pct: 25", "fee_waiver_pct: 250")
    problems = problems_of(write(tmp_path, text))
    assert sorted(p.path for p in problems) == ["tiers[2].benefits.fee_waiver_pct", "tiers[3].benefits.fast_track.sla_hours"]


def test_too_many_equality_values_are_refused_before_the_engine_hangs(tmp_path):
    data = shipped_data()
    data["event_types"]["product.purchased"]["attributes"]["product"]["values"] = [f"p{i}" for i in range(600)]
    data["rules"] = [{"id": f"r{i}", "when": {"event": "product.purchased", "where": {"product": {"eq": f"p{i}"}}},
                      "award": {"points": "1"}} for i in range(512)]
    data["programme"]["effective_from"] = "2025-01-01T00:00:00Z"
    problems = problems_of(write(tmp_path, yaml.safe_dump(data)))
    assert any("at most 511" in p.message and "'product'" in p.message for p in problems)


def test_a_broken_file_in_a_directory_loads_nothing(tmp_path):
    with pytest.raises(RuleFileError) as caught:
        load_programmes(two_versions(tmp_path, ("format: 1", "format: 2")))
    assert [p.path for p in caught.value.problems] == ["format"]


def test_versions_are_chosen_by_event_time(tmp_path):
    programmes = load_programmes(two_versions(tmp_path))
    from datetime import UTC, datetime

    assert programmes.at(datetime(2026, 6, 30, tzinfo=UTC)).version == "2026.1"
    assert programmes.at(datetime(2026, 7, 1, tzinfo=UTC)).version == "2026.2"
    assert programmes.at(datetime(2024, 12, 31, tzinfo=UTC)) is None


def test_a_value_of_no_accepted_type_gets_one_message(tmp_path):
    path, line = replace_in_shipped(tmp_path, "amount: {gte: 50000000}", "amount: {gte: [1]}")
    [problem] = problems_of(path)
    assert problem.line == line and "expected a single value" in problem.message


def test_id_patterns_are_explained_in_words(tmp_path):
    path, _ = replace_in_shipped(tmp_path, "  - id: standard", "  - id: Standard")
    [problem] = problems_of(path)
    assert problem.path == "tiers[0].id"
    assert "lower-case letters, digits and _" in problem.message and "'Standard'" in problem.message


def test_constant_points_may_be_written_as_numbers():
    programme = load_programmes(RULES).current
    cross_sell = next(r for r in programme.rules if r.rule.id == "cross-sell")
    assert cross_sell.rule.award.points == "2000"


def test_a_later_version_must_keep_every_tier(tmp_path):
    with pytest.raises(RuleFileError) as caught:
        load_programmes(two_versions(tmp_path, ("  - id: standard\n    name: Standard", "  - id: basic\n    name: Basic")))
    [problem] = caught.value.problems
    assert problem.file.endswith("b.yaml") and "tiers standard of version 2026.1" in problem.message


def test_arithmetic_failing_only_on_a_sample_value_is_not_an_error(tmp_path):
    path, _ = replace_in_shipped(tmp_path, "      points: event.amount / 20000",
                                 "      points: event.amount / (event.days_late * 1000)")
    assert load_programme(path).rules[2].points is not None


def test_structural_yaml_mistakes_are_reported_not_raised(tmp_path):
    [problem] = problems_of(write(tmp_path, "format: 1\n? [a, b]\n: 1\n"))
    assert problem.line == 2 and "key must be plain text" in problem.message
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes(b"format: 1\nprogramme:\n  name: caf\xe9\n")
    [problem] = problems_of(binary)
    assert problem.line == 3 and "not UTF-8" in problem.message


def test_every_tier_above_the_lowest_needs_a_qualification(tmp_path):
    text = SHIPPED.read_text()
    start = text.index("    qualification:\n      all:\n        - {metric: loan_volume, gte: 30000000}")
    end = text.index("    benefits:", start)
    [problem] = problems_of(write(tmp_path, text[:start] + text[end:]))
    assert problem.path == "tiers[2]" and "has no qualification" in problem.message


def test_threshold_mistakes_are_named_plainly(tmp_path):
    path, line = replace_in_shipped(tmp_path, "        - {metric: loan_volume, gte: 30000000}",
                                    "        - {metric: loan_volme, gte: 1, lt: 5}")
    [problem] = problems_of(path)
    assert problem.path == "tiers[2].qualification.all[0]" and "exactly one of gte, gt, lte, lt" in problem.message
    path, _ = replace_in_shipped(tmp_path, "        - {metric: loan_volume, gte: 30000000}",
                                 "        - {metric: loan_volme, gte: 30000000}")
    [problem] = problems_of(path)
    assert "unknown metric 'loan_volme'" in problem.message and "did you mean 'loan_volume'" in problem.message


def test_metric_inputs_must_have_the_types_metrics_read(tmp_path):
    path, line = replace_in_shipped(tmp_path, "      nps: {type: integer, min: 0, max: 10}", "      nps: {type: string}")
    [problem] = problems_of(path)
    assert problem.line == line and "read survey.answered nps as integer" in problem.message


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("rate_discount: {bps: 10, products: [term_loan], use: single, valid_for_days: 180}",
     "rate_discount: {bps: 10, products: [term_lone], use: single, valid_for_days: 180}",
     "did you mean 'term_loan'"),
    ("    min_tier: silver\n    rate_discount: {bps: 10",
     "    min_tier: platinum\n    rate_discount: {bps: 10", "unknown tier 'platinum'"),
    ("  - id: fee-waiver-full", "  - id: rate-cut-5", "appears more than once"),
    ("    benefit: {kind: fee_waiver, fee_waiver_pct: 100, use: single, valid_for_days: 90}",
     "    benefit: {kind: fee_waiver, fee_waiver_pct: 100, use: single, valid_for_days: 90}\n"
     "    rate_discount: {bps: 5, products: [term_loan]}", "exactly one of rate_discount, benefit"),
    ("    points: 8000", "    points: 0", "greater than 0"),
])
def test_catalogue_mistakes_are_reported_at_their_line(tmp_path, old, new, expected):
    path, line = replace_in_shipped(tmp_path, old, new)
    found = problems_of(path)
    assert any(expected in str(problem) for problem in found), [str(p) for p in found]
    assert all(problem.line and abs(problem.line - line) <= 3 for problem in found), [str(p) for p in found]


def test_a_whole_number_written_as_a_decimal_is_a_number_not_true(tmp_path):
    # YAML reads 50000000.0 as a float; a lax bool would have taken 1.0 and 0.0 as true and false.
    path, _ = replace_in_shipped(tmp_path, "amount: {gte: 50000000}", "amount: {gte: 1.0}")
    rule = next(r for r in load_programme(path).model.rules if r.id == "large-drawdown-discount")
    assert rule.when.where["amount"].gte == 1 and rule.when.where["amount"].gte is not True
