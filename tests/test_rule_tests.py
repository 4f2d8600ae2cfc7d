"""`loyalty rules test`: the shipped rule tests pass, failures show a diff, broken case files are located,
`--programme` runs a future-dated version, and rules no case exercises are reported.

The runner works in scratch in-memory databases only, so these tests need no database fixture; one
test checks that the configured database is left alone.
"""
from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from engine.errors import RuleFileError
from engine.loader import load_programmes, rule_files
from engine.yaml_source import MAX_FILE_BYTES, MAX_NODES
from service.rule_tests import EARLIEST, only_version, run_rule_tests
from tests.conftest import RULES, cli_json, run_cli

CASES = RULES / "tests"
SHIPPED = (RULES / "corporate_lending.yaml").read_text(encoding="utf-8")
DRAWDOWN = ("{type: loan.drawn, at: 2026-03-01T10:00:00Z, "
            "data: {loan_id: L-1, product: working_capital, amount: 30000000, currency: CNY, term_months: 12}}")


def case_file(folder: Path, body: str, name: str = "cases.yaml") -> Path:
    """A case file in `folder` with `body` (dedented YAML)."""
    path = folder / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def future_version(folder: Path, change: tuple[str, str] = ("", "")) -> Path:
    """The shipped rule file as version 2027.1 starting 2027-01-01 (after every shipped case's events)."""
    text = (SHIPPED.replace('version: "2026.1"', 'version: "2027.1"')
            .replace("effective_from: 2025-01-01T00:00:00Z", "effective_from: 2027-01-01T00:00:00Z")
            .replace(*change))
    assert '"2027.1"' in text and "2027-01-01T00:00:00Z" in text and (not change[0] or change[1] in text)
    path = folder / "corporate_lending.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def shipped_case_count() -> int:
    return sum(len(yaml.safe_load(path.read_text())["cases"]) for path in sorted(CASES.glob("*.yaml")))


def test_the_shipped_cases_pass_and_cover_every_rule(tmp_path):
    database = tmp_path / "untouched.db"
    human = run_cli("rules", "test", db_url=f"sqlite:///{database}")
    assert human.returncode == 0, human.stdout + human.stderr
    lines = human.stdout.splitlines()
    count = shipped_case_count()
    assert count >= 11 and sum(line.startswith("PASS ") for line in lines) == count
    assert "PASS a gold client drawing a working-capital loan earns 1.5x points (rules/tests/earning.yaml:" \
        in human.stdout
    assert f"{count} passed, 0 failed in " in lines[-1] and "not covered" not in human.stdout
    assert not database.exists()  # scratch databases only: the configured one is never created

    report = cli_json("rules", "test")
    assert (report["ok"], report["passed"], report["failed"], report["uncovered_rules"]) == (True, count, 0, [])
    assert {case["status"] for case in report["cases"]} == {"passed"}
    assert all(case["file"].startswith("rules/tests/") and case["line"] > 0 for case in report["cases"])
    programme = load_programmes(RULES).current
    assert len(programme.rules) == 11  # the rules the cases must cover; a new rule needs a case too


def test_the_case_folder_is_not_read_as_rule_files():
    assert [path.name for path in rule_files(RULES)] == ["corporate_lending.yaml"]
    assert any(CASES.glob("*.yaml"))


def test_a_wrong_expectation_fails_with_an_expected_versus_actual_diff(tmp_path):
    path = case_file(tmp_path, f"""\
        cases:
          - name: right
            given: {{tier: gold, segment: strategic, onboarded: 2025-01-01}}
            events: [{DRAWDOWN}]
            expect: {{points: 4500}}
          - name: wrong points and benefits
            given: {{tier: gold, segment: strategic, onboarded: 2025-01-01}}
            events: [{DRAWDOWN}]
            expect:
              points: 4000
              earned: {{drawdown-points: 4000}}
              tier: diamond
              grants: [{{rule: large-drawdown-discount}}]
              benefits: {{rate_discount_bps: {{working_capital: 20}}, fast_track: null}}
        """)
    result = run_cli("rules", "test", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"PASS right ({path}:2)" in out and f"FAIL wrong points and benefits ({path}:6)" in out
    # 30,000,000 / 10,000 x 1.5 = 4,500, not 4,000
    assert "points: expected 4000, got 4500" in out
    assert "earned.drawdown-points: expected 4000, got 4500" in out
    assert "tier: expected diamond, got gold" in out
    assert "grants[0]: expected {rule: large-drawdown-discount}" in out
    assert "got nothing held from large-drawdown-discount" in out
    assert "benefits.rate_discount_bps.working_capital: expected 20, got 10" in out
    assert "benefits.fast_track: expected null" in out and "got {lane: express, sla_hours: 72}" in out
    assert "1 passed, 1 failed in " in out

    report = cli_json("rules", "test", str(path), expect_code=1)
    [right, wrong] = report["cases"]
    assert right["status"] == "passed" and wrong["status"] == "failed" and wrong["line"] == 6
    assert {d["field"]: (d["expected"], d["actual"]) for d in wrong["differences"]} == {
        "points": (4000, 4500), "earned.drawdown-points": (4000, 4500), "tier": ("diamond", "gold"),
        "grants[0]": ({"rule": "large-drawdown-discount"}, "nothing held from large-drawdown-discount"),
        "benefits.rate_discount_bps.working_capital": (20, 10),
        "benefits.fast_track": (None, {"lane": "express", "sla_hours": 72})}


def test_a_broken_case_file_exits_2_naming_file_line_and_key(tmp_path):
    broken = case_file(tmp_path, """\
        cases:
          - name: misspelt key
            evnts: []
            expect: {points: 0}
          - name: naive time
            events:
              - {type: product.purchased, at: 2026-02-01T03:00:00, data: {product: payroll}}
            expect: {points: 2000}
          - name: unknown rule
            events:
              - {type: product.purchased, at: 2026-02-01T03:00:00Z, data: {product: payroll}}
            expect:
              earned: {cross-sel: 2000}
          - name: unknown attribute
            events:
              - {type: product.purchased, at: 2026-02-01T03:00:00Z, data: {prodct: payroll}}
            expect: {points: 2000}
        """)
    expected = [(3, "cases[0].evnts", "unknown key 'evnts' (did you mean 'events'?)"),
                (7, "cases[1].events[0].at", "timestamp 2026-02-01T03:00:00 has no time zone; add Z for UTC"),
                (13, "cases[2].expect.earned.cross-sel", "unknown rule 'cross-sel' (did you mean 'cross-sell'?)"),
                (16, "cases[3].events[0].data.prodct", "unknown attribute (did you mean 'product'?)")]
    human = run_cli("rules", "test", str(broken))
    assert human.returncode == 2 and "the case files do not load" in human.stderr and not human.stdout
    for line, path, message in expected:
        assert any(text.startswith(f"  {broken}:{line}:") and path in text and message in text
                   for text in human.stderr.splitlines()), (line, human.stderr)
    answer = cli_json("rules", "test", str(broken), expect_code=2)
    assert [(p["file"], p["line"], p["path"]) for p in answer["problems"]] == [
        (str(broken), line, path) for line, path, _ in expected]
    assert all(message in p["message"] for p, (_, _, message) in zip(answer["problems"], expected))


def test_every_problem_of_every_case_is_reported_at_once(tmp_path):
    broken = case_file(tmp_path, """\
        cases:
          - name: one
            given: {tier: goldd, segment: mid_market, onboarded: 2025-01-01}
            expect: {tier: platinum}
          - name: two
            events:
              - {type: loan.drawn, at: 2026-03-01T10:00:00Z,
                 data: {loan_id: L-1, product: working_capital, amount: 30000000.5, currency: CNY, term_months: 12}}
              - {type: loan.drawnn, at: 2026-03-01T10:00:00Z}
            review: 2024-12-31
            expect:
              grants: [{rule: "tier:gold", products: [wc]}]
          - name: one
            given: {tier: gold}
            expect: {bogus: 1}
        """)
    problems = cli_json("rules", "test", str(broken), expect_code=2)["problems"]
    found = {(p["line"], p["path"]) for p in problems}
    assert found == {
        (3, "cases[0].given.tier"), (3, "cases[0].given.segment"), (4, "cases[0].expect.tier"),
        (8, "cases[1].events[0].data.amount"), (9, "cases[1].events[1].type"), (10, "cases[1].review[0]"),
        (12, "cases[1].expect.grants[0].products[0]"),
        # the third case's structure error (bogus) does not hide its other problems
        (13, "cases[2]"), (13, "cases[2].name"), (14, "cases[2].given.tier"), (15, "cases[2].expect.bogus")}, problems
    by_path = {p["path"]: p["message"] for p in problems}
    assert "quote it" in by_path["cases[1].events[0].data.amount"]
    assert "did you mean 'loan.drawn'" in by_path["cases[1].events[1].type"]
    assert "before the programme begins" in by_path["cases[1].review[0]"]


def test_programme_runs_the_cases_under_a_future_dated_version(tmp_path):
    future = future_version(tmp_path)
    # As the active rules, the 2027 version is not in force at the cases' 2025-2026 reviews ...
    active = run_cli("rules", "test", str(CASES), rules=future)
    assert active.returncode == 2 and "is before the programme begins (2027-01-01" in active.stderr
    # ... under --programme it is in force from the start, so every case runs, and passes, under it
    report = cli_json("rules", "test", "--programme", str(future))
    assert (report["ok"], report["passed"]) == (True, shipped_case_count())

    # A changed rule in the new version fails the cases that pin its figures, with the difference.
    (tmp_path / "doubled").mkdir()
    doubled = future_version(tmp_path / "doubled", ("points: event.amount / 10000", "points: event.amount / 5000"))
    changed = cli_json("rules", "test", "--programme", str(doubled), expect_code=1)
    gold = next(case for case in changed["cases"] if case["name"].startswith("a gold client drawing"))
    # 30,000,000 / 5,000 = 6,000 x 1.5 = 9,000
    assert {"field": "points", "expected": 4500, "actual": 9000} in gold["differences"]
    assert changed["uncovered_rules"] == []


def test_programme_that_does_not_load_exits_2(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(SHIPPED.replace("id: gold\n", "id: Gold\n"), encoding="utf-8")
    result = run_cli("rules", "test", "--programme", str(broken))
    assert result.returncode == 2 and f"the rule file {broken} does not load" in result.stderr
    assert f"{broken}:" in result.stderr and "tiers[2].id" in result.stderr


def test_rules_no_case_exercises_are_reported(tmp_path):
    path = case_file(tmp_path, """\
        cases:
          - name: a cross-sale
            events:
              - {type: product.purchased, at: 2026-02-01T03:00:00Z, data: {product: payroll}}
            expect: {earned: {cross-sell: 2000}}
          - name: a capped fourth referral gives nothing
            events:
              - {type: referral.converted, at: 2026-01-10T04:00:00Z, data: {referred_client_id: C-201}}
            expect: {points: 5000}
        """)
    report = cli_json("rules", "test", str(path))
    uncovered = [rule["rule_id"] for rule in report["uncovered_rules"]]
    expected = [rule.rule.id for rule in load_programmes(RULES).current.rules if rule.rule.id not in
                ("cross-sell", "referral")]
    assert uncovered == expected and len(uncovered) == 9
    assert {(rule["programme"], rule["version"]) for rule in report["uncovered_rules"]} == {("corporate-lending",
                                                                                            "2026.1")}
    human = run_cli("rules", "test", str(path))
    assert human.returncode == 0
    assert (f"warning: 9 rule(s) of corporate-lending 2026.1 not covered by any case: {', '.join(expected)}"
            in human.stdout)


def test_no_case_files_exits_2(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "corporate_lending.yaml").write_text(SHIPPED, encoding="utf-8")
    result = run_cli("rules", "test", rules=rules)
    assert result.returncode == 2 and f"no case files (*.yaml) in {rules / 'tests'}" in result.stderr


# --- the runner's API (what `loyalty rules activate` calls) --------------------------------------------

def test_history_before_the_programme_earns_nothing_but_counts_for_the_tier(programmes, tmp_path):
    path = case_file(tmp_path, """\
        cases:
          - name: history
            events:
              - {type: loan.drawn, at: 2024-06-01T09:00:00Z,
                 data: {loan_id: L-0, product: working_capital, amount: 30000000, currency: CNY, term_months: 12}}
            review: 2025-03-01
            expect:
              # effective_from 2025-01-01: the drawdown earns nothing; the window 2024-03-01 .. 2025-03-01
              # holds its 30,000,000 >= 10,000,000: silver
              points: 0
              tier: silver
        """)
    report = run_rule_tests(programmes, [path])
    assert report.ok and report.passed == 1 and len(report.uncovered) == 11
    # One version alone, in force from the start: the same drawdown now earns 30,000,000 / 10,000 = 3,000.
    alone = run_rule_tests(only_version(programmes.current), [path])
    [result] = alone.cases
    assert [(d.field, d.expected, d.actual) for d in result.differences] == [("points", 0, 3000)]


def test_only_version_moves_the_start_and_keeps_the_rules(programmes):
    alone = only_version(programmes.current)
    [version] = alone.versions
    assert version.effective_from == EARLIEST == datetime(1900, 1, 1, tzinfo=UTC)
    assert version.rules is programmes.current.rules and version.version == programmes.current.version
    assert programmes.current.effective_from == datetime(2025, 1, 1, tzinfo=UTC)  # the original is untouched


def test_a_broken_case_file_raises_every_problem(programmes, tmp_path):
    good = case_file(tmp_path, f"cases:\n  - {{name: ok, events: [{DRAWDOWN}], expect: {{points: 3000}}}}\n", "a.yaml")
    bad = case_file(tmp_path, "cases: []\n", "b.yaml")
    empty = case_file(tmp_path, "\n", "c.yaml")
    with pytest.raises(RuleFileError) as caught:
        run_rule_tests(programmes, [good, bad, empty])
    assert [(p.file, p.line, p.path) for p in caught.value.problems] == [(str(bad), 1, "cases"), (str(empty), 1, "")]
    assert run_rule_tests(programmes, [good]).ok


def test_a_huge_or_oversized_case_file_is_refused_before_it_is_built(programmes, tmp_path):
    # Case files are read in this process, not in a trial child: their size and values are bounded first.
    huge = case_file(tmp_path, "cases: [" + "{}, " * (MAX_NODES + 1) + "]\n", "huge.yaml")
    large = tmp_path / "large.yaml"
    large.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(RuleFileError) as caught:
        run_rule_tests(programmes, [huge, large])
    assert [(p.file, p.line) for p in caught.value.problems] == [(str(huge), 1), (str(large), None)]
    assert f"more than {MAX_NODES:,} values" in caught.value.problems[0].message
    assert f"at most {MAX_FILE_BYTES:,} bytes" in caught.value.problems[1].message


def test_an_event_the_engine_refuses_fails_the_case_with_the_reason(programmes, tmp_path):
    path = case_file(tmp_path, """\
        cases:
          - name: a corrected event needs a new id
            events:
              - {id: E-1, type: product.purchased, at: 2026-02-01T03:00:00Z, data: {product: payroll}}
              - {id: E-1, type: product.purchased, at: 2026-02-01T03:00:00Z, data: {product: payroll}}
              - {id: E-1, type: product.purchased, at: 2026-02-01T03:00:00Z, data: {product: insurance}}
            expect: {points: 2000}
        """)
    [result] = run_rule_tests(programmes, [path]).cases
    # the repeat is a duplicate (no change); the different content under the same id is a conflict
    assert not result.passed and result.differences == ()
    assert result.error.startswith("the event at line 6 (E-1) was rejected: conflict")


def test_an_expectation_that_checks_nothing_is_refused_with_its_place(programmes, tmp_path):
    path = case_file(tmp_path, f"""\
        cases:
          - name: null points
            events: [{DRAWDOWN}]
            expect: {{points: }}
          - name: only nulls and empty lists
            events: [{DRAWDOWN}]
            expect: {{tier: null, qualifies_for: null, benefits: null, grants: [], no_grants: []}}
          - name: empty earned
            events: [{DRAWDOWN}]
            expect: {{earned: {{}}}}
          - name: empty benefits
            events: [{DRAWDOWN}]
            expect: {{benefits: {{}}}}
          - name: empty discounts and null benefit fields
            events: [{DRAWDOWN}]
            expect: {{benefits: {{rate_discount_bps: {{}}, relationship_manager: null, fee_waiver_pct: null}}}}
          - name: a null criterion matches nothing, so no_grants would always pass
            events: [{DRAWDOWN}]
            expect: {{no_grants: [{{rule: large-drawdown-discount, bps: null}}]}}
          - name: only a moment
            events: [{DRAWDOWN}]
            expect: {{at: 2026-04-01}}
          - name: no fast track is an expectation
            events: [{DRAWDOWN}]
            expect: {{benefits: {{fast_track: null}}}}
        """)
    with pytest.raises(RuleFileError) as caught:
        run_rule_tests(programmes, [path])
    found = [(p.line, p.path, p.message) for p in caught.value.problems]
    null, empty = "null is not a value to check", "checks nothing: list what to expect"
    assert [(line, where) for line, where, _ in found] == [
        (4, "cases[0].expect.points"),
        (7, "cases[1].expect.tier"), (7, "cases[1].expect.qualifies_for"), (7, "cases[1].expect.benefits"),
        (7, "cases[1].expect.grants"), (7, "cases[1].expect.no_grants"),
        (10, "cases[2].expect.earned"), (13, "cases[3].expect.benefits"),
        (16, "cases[4].expect.benefits.rate_discount_bps"), (16, "cases[4].expect.benefits.relationship_manager"),
        (16, "cases[4].expect.benefits.fee_waiver_pct"), (19, "cases[5].expect.no_grants[0].bps"),
        (22, "cases[6].expect")], found
    messages = [message for _, _, message in found]
    assert all(null in messages[i] for i in (0, 1, 2, 3, 9, 10, 11))
    assert all(empty in messages[i] for i in (4, 5, 6, 8))
    assert "give any of rate_discount_bps, fast_track" in messages[7]
    assert "a case that checks nothing always passes" in messages[12]


def test_expect_at_reads_points_and_earned_at_that_moment(programmes, tmp_path):
    path = case_file(tmp_path, """\
        cases:
          - name: in March only the February cross-sale is in
            events:
              - {type: product.purchased, at: 2026-02-01T03:00:00Z, data: {product: payroll}}
              - {type: product.purchased, at: 2026-06-01T03:00:00Z, data: {product: insurance}}
            expect: {at: 2026-03-01, points: 2000, earned: {cross-sell: 2000}}
          - name: before any event there is nothing
            events:
              - {type: product.purchased, at: 2026-02-01T03:00:00Z, data: {product: payroll}}
              - {type: product.purchased, at: 2026-06-01T03:00:00Z, data: {product: insurance}}
            expect: {at: 2026-01-15, points: 0, earned: {cross-sell: 0}}
          - name: by default both are in
            events:
              - {type: product.purchased, at: 2026-02-01T03:00:00Z, data: {product: payroll}}
              - {type: product.purchased, at: 2026-06-01T03:00:00Z, data: {product: insurance}}
            expect: {points: 4000, earned: {cross-sell: 4000}}
        """)
    report = run_rule_tests(programmes, [path])
    assert [(result.name, result.differences, result.error) for result in report.cases] == [
        (result.name, (), None) for result in report.cases]


def test_structure_problems_do_not_hide_the_programme_cross_checks(tmp_path):
    broken = case_file(tmp_path, """\
        cases:
          - name: both kinds
            given: {tier: goldd, segment: strategic, onboarded: 2025-01-01}
            events:
              - {type: product.purchased, at: 2026-02-01T03:00:00, data: {product: payroll}}
              - {type: product.purchasedd, at: 2026-02-01T03:00:00Z, data: {product: payroll}}
            review: [2024-12-31, not a date]
            expect:
              tier: goldd
              points: -1
              earned: {cross-sel: 2000, referral: -5}
              grants: [{rule: cross-sell, bps: -1}, {rule: nope}]
              no_grants: [{rule: referral, products: [wc]}]
              benefits: {rate_discount_bps: {wc: 10}, fee_waiver_pct: -1}
          - name: both kinds
            given: {tier: gold}
            expect: {bogus: 1}
        """)
    problems = cli_json("rules", "test", str(broken), expect_code=2)["problems"]
    assert [(p["line"], p["path"]) for p in problems] == [
        (3, "cases[0].given.tier"),  # unknown tier
        (5, "cases[0].events[0].at"),  # no time zone
        (6, "cases[0].events[1].type"),  # unknown event type
        (7, "cases[0].review[0]"),  # before the programme
        (7, "cases[0].review[1]"),  # not a date
        (9, "cases[0].expect.tier"),  # unknown tier
        (10, "cases[0].expect.points"),  # negative
        (11, "cases[0].expect.earned.cross-sel"),  # unknown rule
        (11, "cases[0].expect.earned.referral"),  # negative
        (12, "cases[0].expect.grants[0].bps"),  # negative
        (12, "cases[0].expect.grants[1].rule"),  # unknown rule
        (13, "cases[0].expect.no_grants[0].products[0]"),  # unknown product
        (14, "cases[0].expect.benefits.rate_discount_bps.wc"),  # unknown product
        (14, "cases[0].expect.benefits.fee_waiver_pct"),  # negative
        (15, "cases[1].name"),  # the name is taken
        (15, "cases[1]"),  # neither events nor an onboarding
        (16, "cases[1].given.tier"),  # a tier needs an onboarding
        (17, "cases[1].expect.bogus")], problems

    # A misspelt key of the file does not hide its cases' problems either.
    typo = case_file(tmp_path, "descripton: typo\ncases:\n  - {name: a, given: {tier: gold}, expect: {tier: goldd}}\n",
                     "typo.yaml")
    problems = cli_json("rules", "test", str(typo), expect_code=2)["problems"]
    assert [(p["line"], p["path"]) for p in problems] == [
        (1, "descripton"), (3, "cases[0]"), (3, "cases[0].given.tier"), (3, "cases[0].expect.tier")], problems
