"""A review report's lists as short text, for the terminal and the CSV files alike."""
from __future__ import annotations


def reasons_text(reasons: list[dict]) -> str:
    """The checks behind a tier change as one line: "gold: loan_volume 31000000 gte 30000000 met; ..."."""
    return " | ".join(f"{verdict['tier']}: " + "; ".join(_check_text(c) for c in verdict["checks"])
                      for verdict in reasons)


def signals_text(signals: list[dict]) -> str:
    """Churn signals as one line: "dormant=212 (gte 180); ..."."""
    return "; ".join(f"{s['id']}={s['value']} ({s['operator']} {s['threshold']})" for s in signals)


def tier_order(report: dict) -> list[str]:
    """The programme's tiers, lowest first, then any other tier the counts name (so no count is dropped)."""
    seen = dict.fromkeys(report.get("tiers", []))
    for source, counts in report.get("migration", {}).items():
        seen.update(dict.fromkeys([source, *counts]))
    seen.update(dict.fromkeys([*report.get("tiers_before", {}), *report.get("tiers_after", {})]))
    return list(seen)


def _check_text(check: dict) -> str:
    value = "no value" if check.get("value") is None else check["value"]
    return f"{check['metric']} {value} {check['operator']} {check['threshold']} {'met' if check['met'] else 'not met'}"
