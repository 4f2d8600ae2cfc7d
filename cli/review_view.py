"""A tier review's report for people in a terminal: header, migration matrix, counts and the first rows
of each list (the files from service.review_files hold everything). Empty sections are left out."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.review_text import reasons_text, signals_text, tier_order

SHOW_CHANGES = 20
SHOW_HELD = 20
SHOW_PINS = 20
SHOW_CHURN = 10


def print_review(report: dict, console: Console) -> None:
    """Print the review report: header, migration matrix, summary line, then changes, holds, pins and churn."""
    console.print(_header(report), highlight=False)
    console.print(_migration(report))
    console.print(_summary(report), highlight=False)
    for table, more in (_changes(report), _held(report), _pins(report), _churn(report)):
        if table.row_count:
            console.print(table)
            if more:
                console.print(f"\u2026 and {more:,} more", highlight=False)


def short_reason(change: dict) -> str:
    """Why a change happened, in brief: the checks the old tier failed (down) or the new tier met (up)."""
    down = change["direction"] == "downgrade"
    deciding = change["from"] if down else change["to"]
    for verdict in change.get("reasons", []):
        if verdict["tier"] == deciding:
            checks = [c for c in verdict["checks"] if c["met"] != down] or verdict["checks"]
            return reasons_text([{"tier": verdict["tier"], "checks": checks}])
    # A capped or grace-ended move may have no verdict of its own tier: show what there is.
    return reasons_text(change.get("reasons", [])[:1])


def _row(table: Table, *cells: object) -> None:
    # User text (client ids, pin reasons) is never read as rich markup.
    table.add_row(*(escape("" if cell is None else str(cell)) for cell in cells))


def _header(report: dict) -> str:
    mode = "[bold yellow]dry run[/], nothing written" if report["dry_run"] else escape(report["review_id"] or "")
    trigger = f", {escape(report['trigger'])}" if report.get("trigger") else ""
    return (f"[bold]Tier review[/] {mode} as of {escape(report['as_of'])}, programme "
            f"{escape(report['programme_version'])}{trigger}")


def _migration(report: dict) -> Table:
    tiers = tier_order(report)
    table = Table("from \\ to", *(escape(t) for t in tiers), title="Tier migration")
    for source in tiers:
        row = report.get("migration", {}).get(source, {})
        _row(table, source, *(row.get(target) or "" for target in tiers))
    return table


def _summary(report: dict) -> str:
    churn = report.get("churn") or {}
    expired = (report.get("points_expired") or {}).get("points", 0)
    change = (report.get("standing_discounts") or {}).get("change_per_year", "0")
    return (f"{report['clients']:,} clients, {report['upgrades']:,} up, {report['downgrades']:,} down, "
            f"{len(report.get('held') or []):,} held, {len(report.get('pins') or []):,} pinned; churn "
            f"{len(churn.get('flagged', [])):,} flagged / {len(churn.get('cleared', [])):,} cleared; "
            f"{expired:,} points expired; standing discounts {escape(str(change))} "
            f"{escape(report.get('currency') or '')} per year")


def _changes(report: dict) -> tuple[Table, int]:
    changes = report.get("changes", [])
    table = Table("client", "move", "policy", "reason", title="Tier changes")
    for change in changes[:SHOW_CHANGES]:
        _row(table, change["client_id"], f"{change['from']} \u2192 {change['to']}", change.get("policy"),
             short_reason(change))
    return table, max(len(changes) - SHOW_CHANGES, 0)


def _held(report: dict) -> tuple[Table, int]:
    held = report.get("held") or []
    table = Table("client", "keeps", "qualifies for", "hold", "until", "detail", title="Held (downgrade deferred)")
    for h in held[:SHOW_HELD]:
        _row(table, h["client_id"], h["tier"], h["qualifies_for"], h["hold"], (h.get("until") or "-")[:10],
             h.get("detail"))
    return table, max(len(held) - SHOW_HELD, 0)


def _pins(report: dict) -> tuple[Table, int]:
    pins = report.get("pins") or []
    table = Table("client", "pinned to", "qualifies for", "until", "reason", "author", title="Pins honoured")
    for p in pins[:SHOW_PINS]:
        _row(table, p["client_id"], p["tier"], p["qualifies_for"], (p.get("until") or "-")[:10], p.get("reason"),
             p.get("author"))
    return table, max(len(pins) - SHOW_PINS, 0)


def _churn(report: dict) -> tuple[Table, int]:
    flagged = (report.get("churn") or {}).get("flagged", [])
    table = Table("client", "tier", "loan volume", "new", "signals", title="Churn flags (most valuable first)")
    for f in flagged[:SHOW_CHURN]:  # already in order of value
        _row(table, f["client_id"], f["tier"], f.get("loan_volume"), "new" if f.get("new") else "",
             signals_text(f["signals"]))
    return table, max(len(flagged) - SHOW_CHURN, 0)
