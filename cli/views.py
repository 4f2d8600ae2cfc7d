"""How each command shows its result to a person (rich tables on stdout). `--json` output is not here."""
from __future__ import annotations

from decimal import Decimal

from rich.markup import escape
from rich.table import Table

from cli.output import console


def add_row(table: Table, *cells: str) -> None:
    """Add a row of plain text (user text is never read as rich markup)."""
    table.add_row(*(escape(cell) for cell in cells))


def _checks(reasons: list[dict], tiers: tuple) -> str:
    return "; ".join(f"{c['metric']} {c['value']} {c['operator']} {c['threshold']} {'ok' if c['met'] else 'no'}"
                     for verdict in reasons if verdict["tier"] in tiers for c in verdict["checks"])


def print_rule_check(report: dict) -> None:
    """`rules check`: each file with its version or its problems (sorted by line), then the counts."""
    for result in report["results"]:
        loaded = {version["file"]: version for version in result["versions"]}
        by_file: dict[str, list[dict]] = {file: [] for file in loaded}
        for problem in result["problems"]:
            by_file.setdefault(problem["file"], []).append(problem)
        for file, problems in by_file.items():
            version = loaded.get(file)
            about = (f"{version['programme']} {version['version']}, {version['rules']} rules" if version
                     else "does not load")
            counts = _problem_counts(sum(p["severity"] == "error" for p in problems),
                                     sum(p["severity"] == "warning" for p in problems))
            status = f"[yellow]{counts}[/]" if problems else "[green]ok[/]"
            console.print(f"[bold]{escape(file)}[/]: {escape(about)}: {status}", highlight=False)
            for problem in problems:
                where = problem["file"]
                if problem["line"]:
                    where += f":{problem['line']}" + (f":{problem['column']}" if problem["column"] else "")
                colour = "red" if problem["severity"] == "error" else "yellow"
                console.print(f"  {escape(where)}: [{colour}]{problem['severity']}[/]: "
                              f"{escape(problem['path'] or '<top>')}: {escape(problem['message'])}", highlight=False)
    verdict = "[green]passed[/]" if report["valid"] else "[bold red]failed[/]"
    rule = "warnings fail with --strict" if report["strict"] else "warnings pass; --strict fails on them"
    console.print(f"{report['files']} file(s) checked: {_problem_counts(report['errors'], report['warnings'])}: "
                  f"{verdict} ({rule})", highlight=False)


def _problem_counts(errors: int, warnings: int) -> str:
    return f"{errors} error{'' if errors == 1 else 's'}, {warnings} warning{'' if warnings == 1 else 's'}"


def print_benefits(answer: dict) -> None:
    """`benefits`: tier, points, discount, service benefits and the entitlements behind them."""
    client_id, product = answer["client_id"], answer["product"]
    console.print(f"[bold]{escape(client_id)}[/]  tier [bold]{escape(answer['tier_name'])}[/]  points {answer['points_balance']:,}"
                  f"  (as of {answer['as_of']})")
    if product:
        d = answer["rate_discount"]
        capped = f" (capped from {d['uncapped_bps']})" if d["uncapped_bps"] > d["ceiling_bps"] else ""
        saving = (f"; on {answer['amount']} {answer['currency']} that is {answer['interest_saved_per_year']} "
                  "less interest a year" if answer["interest_saved_per_year"] else "")
        console.print(f"rate discount on {product}: [bold]{answer['rate_discount_bps']} bps[/]{capped}, "
                      f"ceiling {d['ceiling_bps']} bps{saving}")
    else:
        shown = ", ".join(f"{p} {bps}" for p, bps in answer["rate_discount_bps_by_product"].items())
        console.print(f"rate discount (bps) by product: {shown}")
    lane = (f"{answer['fast_track_lane']} ({answer['fast_track_sla_hours']} h)" if answer["fast_track_lane"]
            else "none")
    console.print(f"fast track: {lane}; relationship manager: {'yes' if answer['relationship_manager'] else 'no'};"
                  f" fee waiver: {answer['fee_waiver_pct']}%")
    if answer["entitlements"]:
        table = Table("id", "kind", "use", "amount", "products", "rule", "version", "event", "valid to", "held by")
        for e in answer["entitlements"]:
            amount = f"{e['bps']} bps" if e["bps"] else ", ".join(f"{k}={v}" for k, v in e["detail"].items()) or "-"
            add_row(table, str(e["id"]), e["kind"], e["use"], amount, ",".join(e["products"]) or "-", e["rule_id"],
                          e["programme_version"], e["event_id"] or "-", (e["valid_to"] or "-")[:10],
                          e["reserved_by_quote"] or "-")
        console.print(table)


def print_profile(profile: dict) -> None:
    """`client`: profile, tier, metrics and tier history with the checks behind each move."""
    client_id = profile["client_id"]
    console.print(f"[bold]{escape(client_id)}[/] {escape(profile['name'] or '')}  segment "
                  f"{escape(profile['segment'] or '-')}  industry {escape(profile['industry'] or '-')}")
    console.print(f"tier [bold]{escape(profile['tier'])}[/] (metrics qualify for {escape(profile['qualifies_for'])})"
                  f"  points {profile['points_balance']:,}  (as of {escape(profile['as_of'])})")
    if profile["pin"]:
        pin = profile["pin"]
        console.print(f"pinned to {escape(pin['tier'])} until {pin['until'][:10]} by {escape(pin['author'])}: "
                      f"{escape(pin['reason'])}", highlight=False)
    if profile["grace"]:
        grace = profile["grace"]
        console.print(f"[yellow]grace period[/]: no longer qualifies for {escape(grace['tier'])}, keeps it until "
                      f"{grace['until'][:10]} (since review {escape(grace['review_id'])})", highlight=False)
    if profile["churn_flag"]:
        flag = profile["churn_flag"]
        signals = "; ".join(f"{s['id']} ({s['metric']} {s['value']})" for s in flag["signals"])
        console.print(f"[red]churn risk[/] since {flag['raised_at'][:10]}: {escape(signals)}", highlight=False)
    metrics = Table("metric", "value", title=f"Metrics over {profile['window_months']} months")
    for name, value in profile["metrics"].items():
        add_row(metrics, name, "-" if value is None else value)
    console.print(metrics)
    history = Table("from", "tier", "previous", "reason", "checks", "review", title="Tier history")
    for row in profile["tier_history"]:
        checks = _checks(row["reasons"], (row["tier"], row["from_tier"]))
        add_row(history, row["valid_from"][:19], row["tier"], row["from_tier"] or "-", row["reason"],
                 checks or "-", row["review_id"] or "-")
    console.print(history)


def print_demo(result, clients: int, months: int) -> None:  # noqa: ANN001 - a demo.run.DemoResult
    """`demo`: what was ingested, each quarterly review, and the portfolio summary."""
    report = result.ingest
    console.print(f"{result.events:,} events for {clients:,} clients over {months} months: applied "
                  f"{report.applied:,}, duplicates {report.duplicates:,}, rejected {report.rejected:,}")
    reviews = Table("review as of", "clients", "up", "down", "held", "churn flags", "points expired",
                    "standing discounts / year", title="Quarterly tier reviews", show_edge=False)
    for review_report in result.reviews:
        view = review_report.as_dict()
        add_row(reviews, view["as_of"][:10], str(view["clients"]), str(view["upgrades"]), str(view["downgrades"]),
                str(len(view["held"])), str(len(view["churn"]["flagged"])), f"{view['points_expired']['points']:,}",
                view["standing_discounts"]["change_per_year"])
    console.print(reviews)
    print_summary(result.summary)


def print_summary(summary: dict) -> None:
    """The portfolio summary: tiers (as a bar chart), points, discounts, top clients."""
    per_tier = summary["clients_per_tier"]
    widest = max(per_tier.values(), default=0) or 1
    chart = Table("tier", "clients", "", title="Clients per tier", show_edge=False)
    for tier, count in per_tier.items():
        add_row(chart, tier, f"{count:,}", "█" * max(1 if count else 0, round(40 * count / widest)))
    console.print(chart)
    points = summary["points"]
    console.print(f"points earned {points['earned']:,}, reversed {points['reversed']:,}, redeemed {points['redeemed']:,}, outstanding "
                  f"{points['outstanding']:,}")
    grants = Table("rule", "use", "granted", "active now", title="Rate-discount grants")
    for row in summary["discount_grants"]:
        add_row(grants, row["rule_id"], row["use"], f"{row['granted']:,}", f"{row['active']:,}")
    console.print(grants)
    standing = summary["standing_discounts"]
    console.print(f"standing discounts applied to {Decimal(standing['discounted_drawdowns']):,.0f} CNY drawn in the "
                  f"last {standing['window_months']} months: about "
                  f"{Decimal(standing['interest_forgone_per_year']):,.0f} CNY of interest a year on those amounts")
    top = Table("client", "tier", "loan volume", "avg deposit", "on-time ratio", title="Top clients by loan volume")
    for row in summary["top_clients"]:
        add_row(top, row["client_id"], row["tier"] or "-", f"{Decimal(row['loan_volume']):,.0f}",
                 f"{Decimal(row['average_deposit_balance']):,.0f}", row["on_time_repayment_ratio"] or "-")
    console.print(top)
    for answer in summary["featured_benefits"]:
        lane = f"{answer['fast_track_lane']} {answer['fast_track_sla_hours']}h" if answer["fast_track_lane"] else "none"
        console.print(f"  {escape(answer['client_id'])} ({escape(answer['tier'])}): {answer['rate_discount_bps']} bps on "
                      f"{answer['product']}, fast track {escape(lane)}, relationship manager "
                      f"{'yes' if answer['relationship_manager'] else 'no'}, fee waiver {answer['fee_waiver_pct']}%, "
                      f"points {answer['points_balance']:,}")


def print_entries(entries: list[dict], limit: int) -> None:
    """`ledger CLIENT`: entries newest first."""
    table = Table("id", "when", "kind", "reason", "amount", "rule", "version", "event", "reverses")
    for e in entries:
        amount = f"{e['points']:+,} pts" if e["kind"] == "points" else (
            f"{e['bps']:+} bps" if e["bps"] else ", ".join(f"{k}={v}" for k, v in e["detail"].items()) or "-")
        add_row(table, str(e["id"]), e["valid_from"][:19], e["kind"], e["reason"], amount, e["rule_id"] or "-",
                      e["programme_version"] or "-", e["event_id"] or "-", str(e["reverses_entry_id"] or ""))
    console.print(table)
    if len(entries) == limit:
        console.print(f"showing the {limit} newest entries; --limit N shows more")


def print_api_keys(keys: list[dict]) -> None:
    """API keys as a table."""
    if not keys:
        console.print("no API keys; create one with `loyalty apikey create --name NAME --scope benefits:read`")
        return
    table = Table("id", "name", "scopes", "created", "revoked")
    for key in keys:
        table.add_row(key["id"], escape(key["name"]), " ".join(key["scopes"]), key["created_at"][:19],
                      key["revoked_at"][:19] if key["revoked_at"] else "")
    console.print(table)
