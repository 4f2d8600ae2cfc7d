"""Review report files (CSV per table, one self-contained HTML page) and the terminal view of a report."""
from __future__ import annotations

import copy
import csv
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rich.console import Console

from cli.review_view import print_review
from service.review_files import HTML_ROWS, write_report

TIERS = ["standard", "silver", "gold", "diamond"]
FILES = ["summary.csv", "migration.csv", "changes.csv", "held.csv", "pins.csv", "churn.csv", "churn_cleared.csv",
         "discounts.csv", "report.html"]
ODD_ID = "C-<b>1</b>"


def check(metric, operator, threshold, value, met):
    return {"metric": metric, "operator": operator, "threshold": threshold, "value": value, "met": met}


def signal(signal_id, metric, threshold, value):
    return {"id": signal_id, "description": f"{signal_id} signal", "metric": metric, "operator": "gte",
            "threshold": threshold, "value": value}


def full_report() -> dict:
    """A review of 120 clients with every section filled."""
    upgrade = {"client_id": "C-1", "from": "silver", "to": "gold", "direction": "upgrade",
               "effective_from": "2026-04-01T00:00:00+00:00", "policy": "review",
               "reasons": [{"tier": "gold", "qualifies": True,
                            "checks": [check("loan_volume", "gte", "30000000", "31000000", True),
                                       check("on_time_repayment_ratio", "gte", "0.9", "0.95", True)]},
                           {"tier": "diamond", "qualifies": False,
                            "checks": [check("loan_volume", "gte", "100000000", "31000000", False)]}]}
    downgrade = {"client_id": "C-2", "from": "gold", "to": "silver", "direction": "downgrade",
                 "effective_from": "2026-04-01T00:00:00+00:00", "policy": "grace ended",
                 "reasons": [{"tier": "gold", "qualifies": False,
                              "checks": [check("loan_volume", "gte", "30000000", "31000000", True),
                                         check("on_time_repayment_ratio", "gte", "0.9", "0.85", False)]}]}
    odd = {**upgrade, "client_id": ODD_ID, "from": "standard", "to": "silver", "policy": "instant",
           "reasons": [{"tier": "silver", "qualifies": True,
                        "checks": [check("loan_volume", "gte", "5000000", None, True)]}]}
    formula = {**upgrade, "client_id": "=HYPERLINK(\"x\")"}
    return {
        "review_id": "review-20260401T000000Z-1a2b3c", "as_of": "2026-04-01T00:00:00+00:00",
        "programme_version": "2026.1", "trigger": "scheduled", "dry_run": False, "currency": "CNY",
        "tiers": TIERS, "clients": 120, "upgrades": 3, "downgrades": 1,
        "tiers_before": {"standard": 80, "silver": 25, "gold": 10, "diamond": 5},
        "tiers_after": {"standard": 75, "silver": 28, "gold": 12, "diamond": 5},
        "migration": {"standard": {"standard": 75, "silver": 5}, "silver": {"silver": 22, "gold": 3},
                      "gold": {"silver": 1, "gold": 9}, "diamond": {"diamond": 5}},
        "changes": [upgrade, downgrade, odd, formula],
        "held": [{"client_id": "C-9", "tier": "gold", "qualifies_for": "silver", "hold": "grace",
                  "detail": "keeps gold until 2026-05-01 (grace period of 30 days)",
                  "until": "2026-05-01T00:00:00+00:00"},
                 {"client_id": "C-10", "tier": "silver", "qualifies_for": "standard", "hold": "new_client",
                  "detail": "new client: no downgrade in the first year", "until": None}],
        "pins": [{"client_id": "C-5", "tier": "diamond", "qualifies_for": "gold", "until": "2026-12-31T00:00:00+00:00",
                  "reason": "compte stratégique — 战略客户", "author": "ana"}],
        "churn": {"flagged": [{"client_id": "C-7", "tier": "gold", "loan_volume": "45000000.00", "new": True,
                               "signals": [signal("dormant", "days_since_loan_activity", "180", "212"),
                                           signal("late", "days_late_max", "30", "45")]},
                              {"client_id": "C-6", "tier": "silver", "loan_volume": "9000000.50", "new": False,
                               "signals": [signal("dormant", "days_since_loan_activity", "180", "190")]}],
                  "cleared": [{"client_id": "C-3", "tier": "silver", "raised_at": "2026-01-01T00:00:00+00:00"}]},
        "points_expired": {"points": 125000, "lots": 40, "clients": 12},
        "standing_discounts": {"change_per_year": "-15000.00",
                               "clients": [{"client_id": "C-1", "from": "silver", "to": "gold",
                                            "loan_volume": "31000000.00", "change_per_year": "15500.00"},
                                           {"client_id": "C-2", "from": "gold", "to": "silver",
                                            "loan_volume": "31000000.00", "change_per_year": "-30500.00"}]},
        "skipped": [{"client_id": "C-8", "reason": "a later tier decision exists"}],
    }


def empty_report() -> dict:
    """A dry run that changed nothing: no changes, holds, pins, churn or expiry."""
    counts = {"standard": 3, "silver": 1, "gold": 0, "diamond": 0}
    return {"review_id": None, "as_of": "2026-04-01T00:00:00+00:00", "programme_version": "2026.1",
            "trigger": "manual", "dry_run": True, "currency": "CNY", "tiers": TIERS, "clients": 4,
            "upgrades": 0, "downgrades": 0, "tiers_before": counts, "tiers_after": dict(counts),
            "migration": {"standard": {"standard": 3}, "silver": {"silver": 1}}, "changes": [], "held": [],
            "pins": [], "churn": {"flagged": [], "cleared": []},
            "points_expired": {"points": 0, "lots": 0, "clients": 0},
            "standing_discounts": {"change_per_year": "0.00", "clients": []}, "skipped": []}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("review") / "nested" / "out"  # does not exist yet
    return directory, write_report(full_report(), directory)


@pytest.fixture(scope="module")
def empty(tmp_path_factory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("empty")
    return directory, write_report(empty_report(), directory)


@pytest.fixture(scope="module")
def long(tmp_path_factory) -> list[Path]:
    """A review with more changes than the page shows, written by two threads at once."""
    report = empty_report()
    first = full_report()["changes"][0]
    report["changes"] = [{**first, "client_id": f"L-{n:04d}"} for n in range(HTML_ROWS + 3)]
    given = copy.deepcopy(report)
    directories = [tmp_path_factory.mktemp(f"long-{n}") for n in range(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        written = list(pool.map(lambda d: write_report(report, d), directories))
    assert written == [[d / name for name in FILES] for d in directories]
    assert report == given  # the report is read, never changed
    return directories


def rows(directory: Path, name: str) -> list[dict]:
    with (directory / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def html(directory: Path) -> str:
    return (directory / "report.html").read_text(encoding="utf-8")


def test_every_file_is_written_in_a_stable_order(full, empty):
    for directory, paths in (full, empty):
        assert paths == [directory / name for name in FILES]
        assert all(path.is_file() and path.stat().st_size for path in paths)


def test_summary_has_the_figures_and_keeps_money_as_given(full, empty):
    summary = {r["key"]: r["value"] for r in rows(full[0], "summary.csv")}
    assert list(summary) == ["review_id", "as_of", "programme_version", "trigger", "dry_run", "clients", "upgrades",
                             "downgrades", "points_expired", "lots_expired", "clients_with_expiry", "churn_flagged",
                             "churn_cleared", "standing_discount_change_per_year", "currency"]
    assert summary["review_id"] == "review-20260401T000000Z-1a2b3c"
    assert (summary["dry_run"], summary["clients"], summary["upgrades"], summary["downgrades"]) == ("false", "120",
                                                                                                   "3", "1")
    assert (summary["points_expired"], summary["lots_expired"], summary["clients_with_expiry"]) == ("125000", "40",
                                                                                                   "12")
    assert (summary["churn_flagged"], summary["churn_cleared"]) == ("2", "1")
    assert summary["standing_discount_change_per_year"] == "-15000.00"  # a number, not a formula: untouched
    empty_summary = {r["key"]: r["value"] for r in rows(empty[0], "summary.csv")}
    assert (empty_summary["review_id"], empty_summary["dry_run"], empty_summary["trigger"]) == ("", "true", "manual")


def test_migration_has_a_row_and_column_per_tier_in_programme_order(full):
    migration = rows(full[0], "migration.csv")
    assert [r["from_tier"] for r in migration] == TIERS
    assert list(migration[0]) == ["from_tier", *TIERS]
    gold = migration[2]
    assert {t: gold[t] for t in TIERS} == {"standard": "0", "silver": "1", "gold": "9", "diamond": "0"}
    assert sum(int(r[t]) for r in migration for t in TIERS) == 120


def test_changes_flatten_the_reasons_to_readable_text(full):
    changes = {r["client_id"]: r for r in rows(full[0], "changes.csv")}
    assert changes["C-2"]["reasons"] == ("gold: loan_volume 31000000 gte 30000000 met; "
                                         "on_time_repayment_ratio 0.85 gte 0.9 not met")
    assert changes["C-1"]["reasons"].endswith(" | diamond: loan_volume 31000000 gte 100000000 not met")
    assert changes[ODD_ID]["reasons"] == "silver: loan_volume no value gte 5000000 met"
    assert (changes["C-2"]["direction"], changes["C-2"]["policy"], changes["C-2"]["to"]) == ("downgrade",
                                                                                           "grace ended", "silver")


def test_a_client_id_spreadsheets_would_run_as_a_formula_is_neutralised(full):
    ids = [r["client_id"] for r in rows(full[0], "changes.csv")]
    assert "'=HYPERLINK(\"x\")" in ids and "=HYPERLINK(\"x\")" not in ids


def test_held_pins_churn_and_discounts(full):
    directory = full[0]
    held = rows(directory, "held.csv")
    assert [(h["client_id"], h["hold"], h["until"]) for h in held] == [
        ("C-9", "grace", "2026-05-01T00:00:00+00:00"), ("C-10", "new_client", "")]
    assert rows(directory, "pins.csv") == [{"client_id": "C-5", "tier": "diamond", "qualifies_for": "gold",
                                            "until": "2026-12-31T00:00:00+00:00",
                                            "reason": "compte stratégique — 战略客户", "author": "ana"}]
    churn = rows(directory, "churn.csv")
    assert [c["client_id"] for c in churn] == ["C-7", "C-6"]  # the order given: most valuable first
    assert churn[0]["signals"] == "dormant=212 (gte 180); late=45 (gte 30)"
    assert (churn[0]["loan_volume"], churn[0]["new"], churn[1]["new"]) == ("45000000.00", "true", "false")
    assert rows(directory, "churn_cleared.csv") == [{"client_id": "C-3", "tier": "silver",
                                                     "raised_at": "2026-01-01T00:00:00+00:00"}]
    discounts = rows(directory, "discounts.csv")
    assert [(d["client_id"], d["change_per_year"]) for d in discounts] == [("C-1", "15500.00"), ("C-2", "-30500.00")]


def test_the_empty_review_writes_headers_only(empty):
    directory = empty[0]
    for name in FILES[2:-1]:
        assert rows(directory, name) == [], name
    with (directory / "changes.csv").open(encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["client_id", "from", "to", "direction", "effective_from", "policy", "reasons"]
    assert [r["standard"] for r in rows(directory, "migration.csv")] == ["3", "0", "0", "0"]


def test_the_page_is_self_contained(full, empty):
    for directory, _ in (full, empty):
        page = html(directory)
        assert page.startswith("<!DOCTYPE html>")
        for external in ("http://", "https://", 'src="http', "<link", "<script", "<?xml", "<!DOCTYPE svg", "@import"):
            assert external not in page, external


def test_the_page_has_the_charts_and_skips_churn_when_none(full, empty):
    page, quiet = html(full[0]), html(empty[0])
    assert page.count("<svg") == 3 and quiet.count("<svg") == 2
    assert "Churn signals" in page and "Churn signals" not in quiet
    for caption in ("Tier distribution before / after", "Migration"):
        assert caption in page and caption in quiet
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # three charts on one page: no id is defined twice
    assert '<span class="badge">dry run</span>' in quiet and "badge\">dry run" not in page


def test_the_page_shows_the_tables_and_escapes_user_text(full):
    page = html(full[0])
    for text in ("review-20260401T000000Z-1a2b3c", "2026.1", "C-1", "C-2", "C-9", "C-5", "C-7", "C-3",
                 "compte stratégique — 战略客户", "on_time_repayment_ratio 0.85 gte 0.9 not met", "-15000.00 CNY",
                 "125,000 points in 40 lots, 12 clients", "dormant=212 (gte 180)"):
        assert text in page, text
    assert "<b>1</b>" not in page and "C-&lt;b&gt;1&lt;/b&gt;" in page
    assert page.index("C-7") < page.index("C-6")
    assert "more in" not in page


def test_long_tables_are_cut_on_the_page_but_not_in_the_csv(long):
    page = html(long[0])
    assert f"L-{HTML_ROWS - 1:04d}" in page and f"L-{HTML_ROWS:04d}" not in page
    assert "3 more in changes.csv" in page
    assert [r["client_id"] for r in rows(long[0], "changes.csv")][-2:] == [f"L-{HTML_ROWS + 1:04d}",
                                                                           f"L-{HTML_ROWS + 2:04d}"]


def test_writing_from_threads_at_once_gives_complete_files(long, full):
    for directory in long:
        assert sorted(p.name for p in directory.iterdir()) == sorted(FILES)
        assert html(directory).count("<svg") == 2
        for name in FILES[:-1]:
            assert rows(directory, name) == rows(long[0], name), name
    assert rows(long[1], "changes.csv")[HTML_ROWS]["client_id"] == f"L-{HTML_ROWS:04d}"
    assert html(full[0]).count("<svg") == 3  # and the earlier call in this process is not disturbed


def test_print_review_shows_the_matrix_the_changes_and_escapes_markup():
    report = full_report()
    report["changes"].append({**report["changes"][0], "client_id": "C-[red]9[/red]"})
    console = Console(record=True, width=160)
    print_review(report, console)
    text = console.export_text()
    assert "review-20260401T000000Z-1a2b3c" in text and "Tier migration" in text
    gold_row = next(line for line in text.splitlines() if line.lstrip("│┃ ").startswith("gold "))
    assert re.findall(r"\d+", gold_row) == ["1", "9"]
    assert "120 clients, 3 up, 1 down, 2 held, 1 pinned; churn 2 flagged / 1 cleared" in text
    assert "125,000 points expired" in text and "-15000.00 CNY per year" in text
    assert "C-2" in text and "gold → silver" in text and "on_time_repayment_ratio 0.85 gte 0.9 not met" in text
    assert "C-[red]9[/red]" in text and ODD_ID in text
    assert "dormant=212 (gte 180)" in text and "compte stratégique" in text
    assert "more" not in text


def test_print_review_cuts_long_lists_and_omits_empty_sections():
    report = full_report()
    report["changes"] = [{**report["changes"][1], "client_id": f"D-{n:02d}"} for n in range(25)]
    console = Console(record=True, width=160)
    print_review(report, console)
    text = console.export_text()
    assert "D-19" in text and "D-20" not in text and "… and 5 more" in text

    quiet = Console(record=True, width=160)
    print_review(empty_report(), quiet)
    text = quiet.export_text()
    assert "dry run" in text and "Tier migration" in text and "4 clients, 0 up, 0 down" in text
    for section in ("Tier changes", "Held", "Pins honoured", "Churn flags"):
        assert section not in text, section
