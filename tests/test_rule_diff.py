"""`loyalty rules diff`: the shipped rule file against edited copies, through the pure diff and the CLI."""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cli.main import app
from cli.rule_diff import format_value
from engine.loader import load_programme
from engine.rule_diff import ProgrammeDiff, diff_programmes
from service import rule_trial
from tests.conftest import RULES, run_cli

RUNNER = CliRunner()

SHIPPED = RULES / "corporate_lending.yaml"


def edited(tmp_path: Path, *replacements: tuple[str, str], name: str = "proposed.yaml") -> Path:
    """A copy of the shipped file with each text replaced (each must occur exactly once)."""
    text = SHIPPED.read_text(encoding="utf-8")
    for old, new in replacements:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in the shipped file"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def round_tripped(tmp_path: Path, change: Callable[[dict], None] = lambda data: None,
                  name: str = "proposed.yaml") -> Path:
    """The shipped file loaded, changed and written back by PyYAML: comments gone, keys sorted, styles changed."""
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=True, default_flow_style=False), encoding="utf-8")
    return path


def diff_to(path: Path) -> ProgrammeDiff:
    return diff_programmes(load_programme(SHIPPED).model, load_programme(path).model)


def changes(diff: ProgrammeDiff, section: str) -> Unordered:
    return Unordered((c.kind, c.item, c.field, c.old, c.new) for c in diff.changes if c.section == section)


class Unordered(list):
    """A list that equals another list holding the same items in any order (items may hold dicts)."""

    def __eq__(self, expected: object) -> bool:
        expected = list(expected)  # type: ignore[call-overload]
        return len(self) == len(expected) and all(item in expected for item in self) and \
            all(item in self for item in expected)

    __hash__ = None  # type: ignore[assignment]


def tier(data: dict, tier_id: str) -> dict:
    return next(t for t in data["tiers"] if t["id"] == tier_id)


def rule(data: dict, rule_id: str) -> dict:
    return next(r for r in data["rules"] if r["id"] == rule_id)


# --- the pure diff -----------------------------------------------------------------------------------

def test_layout_comments_key_order_and_item_order_are_not_differences(tmp_path):
    def shuffle(data: dict) -> None:
        data["catalogue"].reverse()
        data["churn"]["signals"].reverse()
        data["event_types"] = dict(reversed(data["event_types"].items()))
        data["loan_products"].reverse()
        tier(data, "silver")["benefits"]["points_multiplier"] = "1.20"  # 1.2 spelled differently
        rule(data, "large-drawdown-discount")["when"]["where"]["product"]["in"].reverse()
        rule(data, "drawdown-points")["award"]["points"] = "event.amount/10000"  # spacing in CEL
        # Rules of different priorities swap places: who fires first does not change.
        data["rules"][0], data["rules"][1] = data["rules"][1], data["rules"][0]

    diff = diff_to(round_tripped(tmp_path, shuffle))
    assert diff.identical, diff.changes
    assert diff.as_dict() == {"identical": True, "differences": 0, "counts": {}, "changes": []}


def test_programme_header_products_ceilings_and_event_types(tmp_path):
    path = edited(
        tmp_path,
        ('version: "2026.1"', 'version: "2026.2"'),
        ("effective_from: 2025-01-01T00:00:00Z", "effective_from: 2026-07-01T00:00:00+08:00"),
        ("name: Corporate lending client programme", "name: Corporate client programme"),
        ("loan_products: [working_capital, term_loan, project_finance, trade_finance]",
         "loan_products: [working_capital, term_loan, project_finance, trade_finance, green_loan]"),
        ("  project_finance: 40\n", "  project_finance: 45\n  green_loan: 30\n"),
        ("product: {type: enum, values: [working_capital, term_loan, project_finance, trade_finance]}",
         "product: {type: enum, values: [working_capital, term_loan, project_finance, green_loan, trade_finance]}"),
        ("      industry: {type: string, required: false}\n", ""),
        ("      term_months: {type: integer, min: 1, max: 360}",
         "      term_months: {type: integer, min: 1, max: 480}\n      channel: {type: string, required: false}"),
        ("      csat: {type: integer, min: 1, max: 5, required: false}", "      csat: {type: integer, min: 1, max: 5}"),
        ("  event.attended:", "  esg.report_filed:\n    attributes:\n      year: {type: integer}\n  event.attended:"),
    )
    diff = diff_to(path)
    assert changes(diff, "programme") == [
        ("changed", "version", "", "2026.1", "2026.2"),
        ("changed", "effective_from", "", datetime(2025, 1, 1, tzinfo=UTC),
         datetime(2026, 6, 30, 16, tzinfo=UTC)),
        ("changed", "name", "", "Corporate lending client programme", "Corporate client programme"),
    ]
    assert changes(diff, "loan_products") == [("added", "green_loan", "", None, None)]
    assert changes(diff, "discount_ceiling_bps") == [("changed", "project_finance", "", 40, 45),
                                                     ("added", "green_loan", "", None, 30)]
    assert changes(diff, "event_types") == [
        ("added", "loan.drawn", "attributes.product.values", None, "green_loan"),
        ("changed", "loan.drawn", "attributes.term_months.max", 360, 480),
        ("added", "loan.drawn", "attributes.channel", None, {"type": "string", "required": False}),
        ("removed", "client.onboarded", "attributes.industry", {"type": "string", "required": False}, None),
        ("changed", "survey.answered", "attributes.csat.required", False, True),
        ("added", "esg.report_filed", "", None, {"attributes": {"year": {"type": "integer", "required": True}}}),
    ]
    assert diff.as_dict()["counts"] == {"programme": 3, "loan_products": 1, "discount_ceiling_bps": 2,
                                        "event_types": 6}


def test_threshold_changes_per_tier_with_nested_groups(tmp_path):
    path = edited(
        tmp_path,
        ("        - {metric: loan_volume, gte: 30000000}", "        - {metric: loan_volume, gte: 50000000}"),
        ("            - {metric: tenure_months, gte: 6}",
         ("            - {metric: tenure_months, gte: 12}\n"
          "            - {metric: products_held, gte: 2}")),
        ("        - {metric: on_time_repayment_ratio, gte: 0.9}\n",
         ("        - {metric: on_time_repayment_ratio, gt: 0.9}\n"
          "        - {metric: late_repayments, lt: 2}\n")),
        ("        - {metric: on_time_repayment_ratio, gte: 0.95}\n",
         ("        - {metric: on_time_repayment_ratio, gte: 0.95}\n"
          "        - any:\n            - {metric: referrals, gte: 1}\n            - {metric: events_attended, gte: 3}\n")),
    )
    assert changes(diff_to(path), "qualification") == [
        ("changed", "silver", "any[1].all: tenure_months gte", Decimal(6), Decimal(12)),
        ("added", "silver", "any[1].all: products_held gte", None, Decimal(2)),
        ("changed", "gold", "loan_volume gte", Decimal(30_000_000), Decimal(50_000_000)),
        ("removed", "gold", "on_time_repayment_ratio gte", Decimal("0.9"), None),
        ("added", "gold", "on_time_repayment_ratio gt", None, Decimal("0.9")),
        ("added", "gold", "late_repayments lt", None, Decimal(2)),
        ("added", "diamond", "all[2].any: referrals gte", None, Decimal(1)),
        ("added", "diamond", "all[2].any: events_attended gte", None, Decimal(3)),
    ]


def test_group_combinators_and_removed_groups(tmp_path):
    path = edited(
        tmp_path,
        ("      any:\n        - {metric: loan_volume, gte: 10000000}\n        - all:",
         "      all:\n        - {metric: loan_volume, gte: 10000000}\n        - any:"),
        ("      all:\n        - {metric: loan_volume, gte: 30000000}", "      any:\n        - {metric: loan_volume, gte: 30000000}"),
    )
    assert changes(diff_to(path), "qualification") == [
        ("changed", "silver", "qualification", "any", "all"),
        ("changed", "silver", "all[1]", "all", "any"),
        ("changed", "gold", "qualification", "all", "any"),
    ]
    nested = ("        - all:\n            - {metric: average_deposit_balance, gte: 5000000}\n"
              "            - {metric: tenure_months, gte: 6}\n")
    flat = edited(tmp_path, (nested, ""), name="flat.yaml")
    assert changes(diff_to(flat), "qualification") == [
        ("removed", "silver", "any[1].all: average_deposit_balance gte", Decimal(5_000_000), None),
        ("removed", "silver", "any[1].all: tenure_months gte", Decimal(6), None),
    ]


def test_benefit_changes_per_tier(tmp_path):
    path = edited(
        tmp_path,
        ("      points_multiplier: 1.5\n", "      points_multiplier: 1.75\n"),
        ("      rate_discount_bps: {working_capital: 10, term_loan: 10, trade_finance: 10, project_finance: 5}",
         "      rate_discount_bps: {working_capital: 15, term_loan: 10, trade_finance: 10}"),
        ("      fast_track: {lane: express, sla_hours: 72}",
         "      fast_track: {lane: express_plus, sla_hours: 48}\n      relationship_manager: true"),
        ("      fee_waiver_pct: 10\n", ""),
        ("      rate_discount_bps: {working_capital: 5, trade_finance: 5}",
         "      rate_discount_bps: {working_capital: 5, trade_finance: 5, term_loan: 5}"),
    )
    assert changes(diff_to(path), "benefits") == [
        ("added", "silver", "rate_discount_bps.term_loan", None, 5),
        ("changed", "silver", "fee_waiver_pct", 10, 0),
        ("changed", "gold", "points_multiplier", Decimal("1.5"), Decimal("1.75")),
        ("changed", "gold", "rate_discount_bps.working_capital", 10, 15),
        ("removed", "gold", "rate_discount_bps.project_finance", 5, None),
        ("changed", "gold", "fast_track.lane", "express", "express_plus"),
        ("changed", "gold", "fast_track.sla_hours", 72, 48),
        ("changed", "gold", "relationship_manager", False, True),
    ]


def test_tiers_added_removed_renamed_and_reordered(tmp_path):
    platinum = {"id": "platinum", "name": "Platinum",
                "qualification": {"all": [{"metric": "loan_volume", "gte": 60000000}]},
                "benefits": {"points_multiplier": 1.75, "fast_track": {"lane": "express", "sla_hours": 60}}}

    def change(data: dict) -> None:
        data["tiers"].insert(3, platinum)
        tier(data, "gold")["name"] = "Gold plus"

    diff = diff_to(round_tripped(tmp_path, change))
    order = ["standard", "silver", "gold", "diamond"]
    assert changes(diff, "tiers") == [
        ("changed", "gold", "name", "Gold", "Gold plus"),
        ("added", "platinum", "", None, {"name": "Platinum"}),
        ("changed", "order", "", order, order[:3] + ["platinum", "diamond"]),
    ]
    assert changes(diff, "qualification") == [("added", "platinum", "loan_volume gte", None, Decimal(60_000_000))]
    # A new tier shows the benefits it sets, not every default.
    assert changes(diff, "benefits") == [
        ("added", "platinum", "points_multiplier", None, Decimal("1.75")),
        ("added", "platinum", "fast_track", None, {"lane": "express", "sla_hours": 60}),
    ]
    removed = diff_programmes(load_programme(round_tripped(tmp_path, change)).model, load_programme(SHIPPED).model)
    assert ("removed", "platinum", "", {"name": "Platinum"}, None) in changes(removed, "tiers")
    assert ("removed", "platinum", "loan_volume gte", Decimal(60_000_000), None) in changes(removed, "qualification")

    def swap(data: dict) -> None:  # gold and diamond trade places, each keeping its name (thresholds must rise)
        gold, diamond = data["tiers"][2], data["tiers"][3]
        for key in ("id", "name", "description"):
            gold[key], diamond[key] = diamond[key], gold[key]

    swapped = round_tripped(tmp_path, swap, name="swap.yaml")
    assert changes(diff_to(swapped), "tiers") == [("changed", "order", "", order, ["standard", "silver", "diamond", "gold"])]


def test_rules_added_removed_renamed_and_changed_part_by_part(tmp_path):
    def change(data: dict) -> None:
        drawdown = rule(data, "large-drawdown-discount")
        drawdown["when"]["where"]["amount"] = {"gte": 80000000}
        drawdown["when"]["where"]["product"]["in"] = ["working_capital", "project_finance"]
        drawdown["when"]["where"]["term_months"] = {"lte": 36}
        drawdown["award"]["rate_discount"]["bps"] = 15
        drawdown["cap"]["times"] = 2
        drawdown["priority"] = 25
        rule(data, "drawdown-points")["award"]["points"] = "event.amount / 5000"
        rule(data, "survey-feedback")["award"]["tier_multiplier"] = True
        rule(data, "survey-feedback")["description"] = "200 points per survey answer."
        rule(data, "client-day").update(cap={"per": "year", "times": 4})
        fast = rule(data, "gold-client-day-fast-track")
        fast["when"]["client"] = {"min_tier": "diamond"}
        fast["award"]["benefit"]["sla_hours"] = 12
        rule(data, "special-assistance-recovery")["when"]["client"]["tenure_months"] = {"gte": 24}
        rule(data, "forum-salon-training")["when"]["event"] = "survey.answered"
        rule(data, "forum-salon-training")["when"]["where"] = {}
        rule(data, "cross-sell")["id"] = "cross-sale"  # a rename
        data["rules"] = [r for r in data["rules"] if r["id"] != "referral"]
        data["rules"].append({"id": "green-loan", "description": "Points for project finance.",
                              "when": {"event": "loan.drawn", "where": {"product": {"eq": "project_finance"}}},
                              "award": {"points": 1000}})

    assert changes(diff_to(round_tripped(tmp_path, change)), "rules") == [
        ("changed", "drawdown-points", "award.points", "event.amount / 10000", "event.amount / 5000"),
        ("changed", "large-drawdown-discount", "priority", 20, 25),
        ("changed", "large-drawdown-discount", "when.where.amount.gte", 50000000, 80000000),
        ("removed", "large-drawdown-discount", "when.where.product.in", "term_loan", None),
        ("added", "large-drawdown-discount", "when.where.product.in", None, "project_finance"),
        ("added", "large-drawdown-discount", "when.where.term_months", None, {"lte": 36}),
        ("changed", "large-drawdown-discount", "award.rate_discount.bps", 10, 15),
        ("changed", "large-drawdown-discount", "cap.times", 1, 2),
        ("changed", "survey-feedback", "description",
         "200 points for answering a relationship survey, whatever the score; at most twice a year.",
         "200 points per survey answer."),
        ("changed", "survey-feedback", "award.tier_multiplier", False, True),
        ("added", "client-day", "cap", None, {"per": "year", "times": 4}),
        ("changed", "gold-client-day-fast-track", "when.client.min_tier", "gold", "diamond"),
        ("changed", "gold-client-day-fast-track", "award.benefit.sla_hours", 24, 12),
        ("changed", "special-assistance-recovery", "when.client.tenure_months.gte", 12, 24),
        ("changed", "forum-salon-training", "when.event", "event.attended", "survey.answered"),
        ("removed", "forum-salon-training", "when.where.kind", {"in": ["forum", "salon", "training"]}, None),
        ("removed", "cross-sell", "", {"description": "2,000 points for each non-loan product taken up.",
                                       "priority": 100, "when": {"event": "product.purchased"},
                                       "award": {"points": "2000", "tier_multiplier": True}}, None),
        ("removed", "referral", "", {
            "description": "5,000 points and a one-off 5 bps working-capital discount for a referral that becomes "
                           "a borrower.",
            "priority": 100, "when": {"event": "referral.converted"},
            "award": {"points": "5000", "tier_multiplier": True,
                      "rate_discount": {"bps": 5, "products": ["working_capital"], "use": "single",
                                        "valid_for_days": 365}},
            "cap": {"per": "year", "times": 3}}, None),
        ("added", "cross-sale", "", None, {"description": "2,000 points for each non-loan product taken up.",
                                           "priority": 100, "when": {"event": "product.purchased"},
                                           "award": {"points": "2000", "tier_multiplier": True}}),
        ("added", "green-loan", "", None, {"description": "Points for project finance.", "priority": 100,
                                           "when": {"event": "loan.drawn",
                                                    "where": {"product": {"eq": "project_finance"}}},
                                           "award": {"points": "1000", "tier_multiplier": True}}),
    ]


def test_condition_values_compare_by_attribute_type_and_show_as_written(tmp_path):
    # The same amounts, dates and tenure spelled another way: the engine matches them the same.
    repaid = "        days_late: {eq: 0}\n    award:\n      points: event.amount / 20000"
    def version(name: str, amount: str, amounts: str, due: str, tenure: str) -> Path:
        return edited(tmp_path, ("        amount: {gte: 50000000}", f"        amount: {{gte: {amount}}}"),
                      (repaid, repaid.replace("{eq: 0}", f"{{eq: 0}}\n        due_date: {{gte: {due}}}\n"
                                                         f"        amount: {{in: [{amounts}]}}")),
                      ("        tenure_months: {gte: 12}", f"        tenure_months: {{gte: {tenure}}}"), name=name)

    old = version("old.yaml", "50000000", '10000000, "20000000.50"', "2026-01-01", "12")
    same = version("same.yaml", '"50000000.00"', '"20000000.5", 10000000.00', '"2026-01-01"', "12.0")
    diff = diff_programmes(load_programme(old).model, load_programme(same).model)
    assert diff.identical, diff.changes
    moved = version("moved.yaml", '"60000000.00"', '"10000000.00", 30000000', "2026-02-01", "24")
    assert changes(diff_programmes(load_programme(old).model, load_programme(moved).model), "rules") == [
        ("changed", "large-drawdown-discount", "when.where.amount.gte", 50000000, "60000000.00"),
        ("changed", "on-time-repayment", "when.where.due_date.gte", date(2026, 1, 1), date(2026, 2, 1)),
        ("removed", "on-time-repayment", "when.where.amount.in", "20000000.50", None),
        ("added", "on-time-repayment", "when.where.amount.in", None, 30000000),
        ("changed", "special-assistance-recovery", "when.client.tenure_months.gte", 12, 24),
    ]
    result = run_cli("rules", "diff", str(old), str(moved))
    lines = {line.strip() for line in result.stdout.splitlines()}
    assert '~ large-drawdown-discount: when.where.amount.gte 50,000,000 → "60000000.00"' in lines, result.stdout
    assert "- on-time-repayment: when.where.amount.in \"20000000.50\"" in lines
    assert run_cli("rules", "diff", str(old), str(same), "--exit-code").returncode == 0


def test_firing_order_is_compared_among_rules_of_one_event_type_and_priority(tmp_path):
    def move(rule_id: str, before: str | None = None) -> Callable[[dict], None]:
        def change(data: dict) -> None:
            moving = rule(data, rule_id)
            data["rules"].remove(moving)
            data["rules"].insert(data["rules"].index(rule(data, before)) if before else 0, moving)
        return change

    # Every other rule at priority 100 reacts to another event type: moving client-day to the top changes nothing.
    assert diff_to(round_tripped(tmp_path, move("client-day"))).identical
    assert diff_to(round_tripped(tmp_path, move("cross-sell", "drawdown-points"))).identical
    (change,) = diff_to(round_tripped(tmp_path, move("forum-salon-training", "client-day"))).changes
    assert (change.section, change.kind, change.item, change.field, change.old, change.new) == (
        "rules", "changed", "firing order of event.attended rules at priority 100", "",
        ["client-day", "forum-salon-training"], ["forum-salon-training", "client-day"])

    def more(data: dict) -> None:  # three more event.attended rules at priority 100, after client-day and forum…
        data["rules"].extend({"id": f"extra-{n}", "when": {"event": "event.attended"}, "award": {"points": n}}
                             for n in (1, 2, 3))

    def more_then_move(data: dict) -> None:
        more(data)
        move("extra-3", "extra-1")(data)

    old = round_tripped(tmp_path, more, name="old.yaml")
    new = round_tripped(tmp_path, more_then_move, name="new.yaml")
    # Only the rules that changed places relative to another are listed.
    assert changes(diff_programmes(load_programme(old).model, load_programme(new).model), "rules") == [
        ("changed", "firing order of event.attended rules at priority 100", "", ["extra-1", "extra-2", "extra-3"],
         ["extra-3", "extra-1", "extra-2"])]
    result = run_cli("rules", "diff", str(old), str(new))
    assert "  ~ firing order of event.attended rules at priority 100: extra-1, extra-2, extra-3 → " \
           "extra-3, extra-1, extra-2" in result.stdout.splitlines(), result.stdout


def test_catalogue_and_review_points_churn_policies(tmp_path):
    def change(data: dict) -> None:
        data["catalogue"][0]["points"] = 25000
        data["catalogue"][1]["min_tier"] = "gold"
        data["catalogue"] = [r for r in data["catalogue"] if r["id"] != "fee-waiver-full"]
        data["review"]["downgrade"]["grace_days"] = 60
        data["review"]["instant_upgrade"] = ["diamond"]
        data["review"]["schedule"]["timezone"] = "UTC"
        data["points"]["expire_after_months"] = 36
        data["churn"]["min_tier"] = "gold"
        signals = data["churn"]["signals"]
        signals[0]["gte"] = 120
        signals[1].pop("lte")
        signals[1]["lt"] = -0.4
        signals[2]["description"] = "Detractor."
        signals.pop(3)
        signals.append({"id": "no-events", "metric": "events_attended", "lt": 1})

    diff = diff_to(round_tripped(tmp_path, change))
    assert changes(diff, "catalogue") == [
        ("changed", "rate-cut-5", "points", 20000, 25000),
        ("changed", "rate-cut-10", "min_tier", "silver", "gold"),
        ("removed", "fee-waiver-full", "", {"name": "Arrangement fee waived on the next loan", "points": 15000,
                                            "benefit": {"kind": "fee_waiver", "fee_waiver_pct": 100, "use": "single",
                                                        "valid_for_days": 90}}, None),
    ]
    assert changes(diff, "review") == [
        ("changed", "downgrade.grace_days", "", 30, 60),
        ("removed", "instant_upgrade", "", "gold", None),
        ("changed", "schedule.timezone", "", "Asia/Shanghai", "UTC"),
    ]
    assert changes(diff, "points") == [("changed", "expire_after_months", "", 24, 36)]
    assert changes(diff, "churn") == [
        ("changed", "min_tier", "", "silver", "gold"),
        ("changed", "signals.dormant", "days_since_loan_activity gte", Decimal(180), Decimal(120)),
        ("removed", "signals.volume-drop", "loan_volume_change lte", Decimal("-0.5"), None),
        ("added", "signals.volume-drop", "loan_volume_change lt", None, Decimal("-0.4")),
        ("changed", "signals.unhappy", "description", "Latest NPS answer 6 or below (a detractor).", "Detractor."),
        ("removed", "signals.late-payer", "", {"description": "Three or more late repayments in the window.",
                                               "metric": "late_repayments", "gte": Decimal(3)}, None),
        ("added", "signals.no-events", "", None, {"metric": "events_attended", "lt": Decimal(1)}),
    ]


def test_values_are_shown_in_the_file_terms():
    assert format_value(Decimal(150000000)) == "150,000,000"
    assert format_value(Decimal("1E+8")) == "100,000,000"
    assert format_value(Decimal("-0.5")) == "-0.5"
    assert format_value(datetime(2026, 7, 1, tzinfo=UTC)) == "2026-07-01T00:00:00Z"
    assert format_value("2026.1") == '"2026.1"'  # a version is quoted text, as in the file
    assert format_value("event.amount / 10000") == '"event.amount / 10000"'
    assert format_value({"gte": Decimal(50000000), "in": ["a", "b"], "exists": False}) == \
        "{gte: 50000000, in: [a, b], exists: false}"


# --- through the CLI ---------------------------------------------------------------------------------

def proposal(tmp_path: Path) -> Path:
    return edited(
        tmp_path,
        ('version: "2026.1"', 'version: "2026.2"'),
        ("        - {metric: loan_volume, gte: 100000000}", "        - {metric: loan_volume, gte: 150000000}"),
        ("      fee_waiver_pct: 50\n", "      fee_waiver_pct: 75\n"),
        ("    cap: {per: year, times: 3}", "    cap: {per: year, times: 5}"),
        ("  - id: cross-sell\n", "  - id: cross-sale\n"),
    )


def test_cli_text_diff_a_reviewer_reads(tmp_path):
    result = run_cli("rules", "diff", str(SHIPPED), str(proposal(tmp_path)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "corporate-lending 2026.1" in out and "corporate-lending 2026.2" in out and "6 differences" in out
    sections = [line for line in out.splitlines() if line and not line.startswith(" ")][1:]
    assert sections == ["Programme", "Qualification thresholds", "Tier benefits", "Rules"]
    lines = {line.strip() for line in out.splitlines()}
    assert '~ version: "2026.1" → "2026.2"' in lines
    assert "~ diamond: loan_volume gte 100,000,000 → 150,000,000" in lines
    assert "~ diamond: fee_waiver_pct 50 → 75" in lines
    assert "~ referral: cap.times 3 → 5" in lines
    assert "- cross-sell" in lines and "+ cross-sale" in lines
    assert "when: {event: product.purchased}" in lines  # the whole removed or added rule is shown


def test_cli_json_and_exit_code(tmp_path):
    path = proposal(tmp_path)
    result = run_cli("rules", "diff", str(SHIPPED), str(path), "--json", "--exit-code")
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert answer["old"] == {"file": str(SHIPPED), "programme": "corporate-lending", "version": "2026.1"}
    assert answer["new"]["version"] == "2026.2"
    assert (answer["identical"], answer["differences"]) == (False, 6)
    assert answer["counts"] == {"programme": 1, "qualification": 1, "benefits": 1, "rules": 3}
    assert {"section": "qualification", "kind": "changed", "item": "diamond", "field": "loan_volume gte",
            "old": "100000000", "new": "150000000"} in answer["changes"]
    assert run_cli("rules", "diff", str(SHIPPED), str(path)).returncode == 0  # differences alone are no failure


def test_cli_identical_files_and_layout_only_changes(tmp_path):
    reformatted = round_tripped(tmp_path)
    result = run_cli("rules", "diff", str(SHIPPED), str(reformatted), "--exit-code")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("no semantic differences")
    answer = json.loads(run_cli("rules", "diff", str(SHIPPED), str(SHIPPED), "--json", "--exit-code").stdout)
    assert (answer["identical"], answer["changes"]) == (True, [])


def test_cli_broken_or_missing_file_exits_2_naming_the_line(tmp_path):
    broken = edited(tmp_path, ("      points: event.amount / 20000", "      pionts: event.amount / 20000"))
    line = next(number for number, text in enumerate(broken.read_text().splitlines(), 1) if "pionts" in text)
    result = run_cli("rules", "diff", str(SHIPPED), str(broken), "--exit-code")
    assert result.returncode == 2 and result.stdout == ""
    assert f"{broken}:{line}" in result.stderr
    assert "rules[2].award.pionts: unknown key 'pionts' (did you mean 'points'?)" in result.stderr
    answer = json.loads(run_cli("rules", "diff", str(broken), str(SHIPPED), "--json").stdout)
    (problem,) = answer["problems"]
    assert (problem["file"], problem["line"], problem["path"], problem["message"]) == \
        (str(broken), line, "rules[2].award.pionts", "unknown key 'pionts' (did you mean 'points'?)")
    missing = run_cli("rules", "diff", str(tmp_path / "nope.yaml"), str(SHIPPED))
    assert missing.returncode == 2 and "nope.yaml: <top>: cannot read the file" in missing.stderr
    folder = run_cli("rules", "diff", str(RULES), str(SHIPPED))
    assert folder.returncode == 2 and "is a directory; name one rule file" in folder.stderr


def test_cli_help_teaches_with_an_example():
    result = run_cli("rules", "diff", "--help")
    assert result.returncode == 0
    assert "loyalty rules diff rules/corporate_lending.yaml proposed.yaml --exit-code" in result.stdout
    assert "--exit-code" in result.stdout and "--json" in result.stdout


def test_both_files_are_tried_in_a_child_process_first(tmp_path, monkeypatch):
    # A proposed file is untrusted: what the trial refuses (here, a trial that crashes) is never compiled here.
    rule_trial.clear_cache()
    monkeypatch.setattr(rule_trial, "RULE_TARGET", "tests.test_rule_trial:segfault")
    result = RUNNER.invoke(app, ["rules", "diff", str(RULES / "corporate_lending.yaml"), str(edited(tmp_path))])
    rule_trial.clear_cache()
    assert result.exit_code == 2, result.output
    assert "crashed the process that compiled it (killed by SIGSEGV while compiling)" in result.output
    assert "Traceback" not in result.output
