"""The files a tier review leaves for people: one CSV per table and one self-contained HTML page.

The CSV files hold every row. The page holds the first rows of each table, the figures and the charts
(inline SVG drawn with matplotlib's object-oriented API, so no pyplot state and no GUI backend), and
nothing it would fetch: no external URL, script or font, so it can be mailed or archived as it is.
Money stays the decimal text the report gives; nothing is ever turned into a float.
"""
from __future__ import annotations

import csv
import re
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from io import StringIO
from pathlib import Path
from typing import NamedTuple

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from service.review_text import reasons_text, signals_text, tier_order

HTML_ROWS = 500  # per table on the page; the CSV files always have every row
HTML_FILE = "report.html"

# matplotlib does not promise thread safety (font caches, rcParams), and the charts are small:
# drawing one at a time costs little and lets reviews write their files from any thread.
_MATPLOTLIB = threading.Lock()
# No creator, date or Dublin Core block: they carry URLs and make the page differ run to run.
_SVG_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}
# Spreadsheets run a cell starting with one of these as a formula; client ids and pin reasons are user data.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Table(NamedTuple):
    """A table of the report: its CSV file, title, columns and rows."""

    file: str
    title: str
    header: tuple[str, ...]
    rows: list[tuple]
    numeric: frozenset[str] = frozenset()  # columns right-aligned on the page


def write_report(report: dict, directory: Path) -> list[Path]:
    """Write the review's CSV files and report.html into `directory` (created if needed); return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tables = _tables(report)
    written = [write_csv(directory / "summary.csv", ("key", "value"), _summary(report))]
    written += [write_csv(directory / table.file, table.header, table.rows) for table in tables]
    page = directory / HTML_FILE
    page.write_text(_render(report, tables), encoding="utf-8")
    return [*written, page]


# -- tables -------------------------------------------------------------------------------------

def _sections(report: dict) -> tuple[list[dict], list[dict], dict, dict, dict]:
    """The optional parts of the report, empty when absent (a plain review has no holds, pins or churn)."""
    churn = report.get("churn") or {}
    return (report.get("held") or [], report.get("pins") or [], churn,
            report.get("points_expired") or {}, report.get("standing_discounts") or {})


def _summary(report: dict) -> list[tuple]:
    _, _, churn, expired, discounts = _sections(report)
    return [("review_id", report.get("review_id")), ("as_of", report["as_of"]),
            ("programme_version", report["programme_version"]), ("trigger", report.get("trigger")),
            ("dry_run", report["dry_run"]), ("clients", report["clients"]), ("upgrades", report["upgrades"]),
            ("downgrades", report["downgrades"]), ("points_expired", expired.get("points", 0)),
            ("lots_expired", expired.get("lots", 0)), ("clients_with_expiry", expired.get("clients", 0)),
            ("churn_flagged", len(churn.get("flagged", []))), ("churn_cleared", len(churn.get("cleared", []))),
            ("standing_discount_change_per_year", discounts.get("change_per_year", "0")),
            ("currency", report.get("currency"))]


def _tables(report: dict) -> list[Table]:
    held, pins, churn, _, discounts = _sections(report)
    tiers = tier_order(report)
    migration = report.get("migration", {})
    return [
        Table("migration.csv", "Migration (from \u2192 to)", ("from_tier", *tiers),
               [(source, *(migration.get(source, {}).get(target, 0) for target in tiers)) for source in tiers],
               frozenset(tiers)),
        Table("changes.csv", "Upgrades and downgrades",
               ("client_id", "from", "to", "direction", "effective_from", "policy", "reasons"),
               [(c["client_id"], c["from"], c["to"], c["direction"], c["effective_from"], c.get("policy"),
                 reasons_text(c.get("reasons", []))) for c in report.get("changes", [])]),
        Table("held.csv", "Held (downgrades deferred)",
               ("client_id", "tier", "qualifies_for", "hold", "detail", "until"),
               [(h["client_id"], h["tier"], h["qualifies_for"], h["hold"], h.get("detail"), h.get("until"))
                for h in held]),
        Table("pins.csv", "Pins honoured", ("client_id", "tier", "qualifies_for", "until", "reason", "author"),
               [(p["client_id"], p["tier"], p["qualifies_for"], p.get("until"), p.get("reason"), p.get("author"))
                for p in pins]),
        Table("churn.csv", "Churn flags (most valuable first)",
               ("client_id", "tier", "loan_volume", "new", "signals"),
               [(f["client_id"], f["tier"], f.get("loan_volume"), f.get("new", False), signals_text(f["signals"]))
                for f in churn.get("flagged", [])], frozenset({"loan_volume"})),
        Table("churn_cleared.csv", "Churn flags cleared", ("client_id", "tier", "raised_at"),
               [(c["client_id"], c["tier"], c.get("raised_at")) for c in churn.get("cleared", [])]),
        Table("discounts.csv", "Standing-discount change per client",
               ("client_id", "from", "to", "loan_volume", "change_per_year"),
               [(d["client_id"], d["from"], d["to"], d.get("loan_volume"), d["change_per_year"])
                for d in discounts.get("clients", [])], frozenset({"loan_volume", "change_per_year"})),
    ]


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    """Write one CSV table, cells a spreadsheet will not run as formulas."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows([_csv_cell(value) for value in row] for row in rows)
    return path


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    # A negative amount like -15000.00 is a number, not a formula: keep it exactly as given.
    if text.startswith(_FORMULA_START) and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


# -- charts -------------------------------------------------------------------------------------

def _charts(report: dict) -> list[tuple[str, Markup]]:
    tiers = tier_order(report)
    charts = []
    if tiers:
        charts.append(("Tier distribution before / after", svg(
            lambda f: draw_distribution(f, tiers, report.get("tiers_before", {}), report.get("tiers_after", {})),
            (1.3 * len(tiers) + 2.5, 3.4), "chart1-")))
        charts.append(("Migration", svg(lambda f: draw_migration(f, tiers, report.get("migration", {})),
                                         (1.1 * len(tiers) + 2.2, 0.9 * len(tiers) + 1.6), "chart2-")))
    signals = _signal_counts(_sections(report)[2].get("flagged", []))
    if signals:
        charts.append(("Churn signals (flagged clients per signal)",
                       svg(lambda f: _draw_signals(f, signals), (6.5, 0.45 * len(signals) + 1.4), "chart3-")))
    return charts


def _signal_counts(flagged: list[dict]) -> dict[str, int]:
    """Flagged clients per signal id, most frequent first (a client counts once per signal)."""
    counts: dict[str, int] = {}
    for client in flagged:
        for signal_id in {s["id"] for s in client["signals"]}:
            counts[signal_id] = counts.get(signal_id, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def draw_distribution(figure: Figure, tiers: list[str], before: dict, after: dict,
                      labels: tuple[str, str] = ("before", "after")) -> None:
    """Clients per tier, two bars a tier (before and after, or the `labels` given)."""
    axes = figure.subplots()
    width = 0.4
    for offset, label, counts, colour in ((-width / 2, labels[0], before, "#9ca3af"),
                                          (width / 2, labels[1], after, "#2563eb")):
        bars = axes.bar([i + offset for i in range(len(tiers))], [counts.get(t, 0) for t in tiers], width,
                        label=label, color=colour)
        axes.bar_label(bars, fontsize=8)
    axes.set_xticks(range(len(tiers)), [plain(t) for t in tiers])
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("clients")
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False)


def draw_migration(figure: Figure, tiers: list[str], migration: dict,
                   sides: tuple[str, str] = ("from", "to")) -> None:
    """A heat map of clients moved from each tier (rows) to each tier (columns)."""
    counts = [[migration.get(source, {}).get(target, 0) for target in tiers] for source in tiers]
    top = max(max(row) for row in counts)
    axes = figure.subplots()
    # A vector mesh rather than imshow: imshow embeds a bitmap that browsers blur when scaling.
    axes.pcolormesh(counts, cmap="Blues", vmin=0, vmax=max(top, 1), edgecolors="white", linewidth=1)
    for row, line in enumerate(counts):
        for column, count in enumerate(line):
            axes.text(column + 0.5, row + 0.5, str(count), ha="center", va="center", fontsize=9,
                      color="white" if count > top / 2 else "#1f2937")
    labels = [plain(t) for t in tiers]
    axes.set_xticks([i + 0.5 for i in range(len(tiers))], labels)
    axes.set_yticks([i + 0.5 for i in range(len(tiers))], labels)
    axes.invert_yaxis()  # lowest tier in the top row, as in the table
    axes.set_xlabel(sides[1])
    axes.set_ylabel(sides[0])
    axes.set_aspect("equal")
    axes.tick_params(length=0)
    for spine in axes.spines.values():
        spine.set_visible(False)


def _draw_signals(figure: Figure, signals: dict[str, int]) -> None:
    axes = figure.subplots()
    bars = axes.barh([plain(s) for s in signals], list(signals.values()), color="#b45309")
    axes.bar_label(bars, fontsize=8, padding=2)
    axes.invert_yaxis()  # most frequent on top
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("flagged clients")
    axes.spines[["top", "right"]].set_visible(False)


def plain(label: str) -> str:
    """A label matplotlib draws as written ("$" would start mathtext and can fail to parse)."""
    return label.replace("$", r"\$")


def svg(draw: Callable[[Figure], None], size: tuple[float, float], prefix: str) -> Markup:
    """Draw a chart and return it as an <svg> element ready to inline, with ids unique to `prefix`."""
    buffer = StringIO()
    with _MATPLOTLIB:
        figure = Figure(figsize=size, layout="constrained")  # room for any tier or signal name
        try:
            draw(figure)
            figure.savefig(buffer, format="svg", metadata=_SVG_METADATA)
        finally:
            figure.clear()  # breaks the figure/axes cycles now rather than at the next collection
    return Markup(_inline(buffer.getvalue(), prefix))


def _inline(svg: str, prefix: str) -> str:
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE (the DOCTYPE names a URL)
    head, rest = svg.split(">", 1)
    # Inside HTML the parser puts <svg> in the SVG namespace itself; the declarations are only URLs.
    head = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", head)
    # Every chart numbers its elements from 1 (figure_1, axes_1...): prefix them so ids stay unique
    # on a page with several charts, and references point into their own chart.
    svg = re.sub(r'\bid="', f'id="{prefix}', head + ">" + rest)
    return re.sub(r'(href="#|url\(#)', rf"\g<1>{prefix}", svg)


# -- page ---------------------------------------------------------------------------------------

def _render(report: dict, tables: list[Table]) -> str:
    """The review as one self-contained HTML page (inline CSS and SVG, user text escaped)."""
    held, pins, churn, expired, discounts = _sections(report)
    currency = report.get("currency") or ""
    figures = [("clients", report["clients"]), ("upgrades", report["upgrades"]),
               ("downgrades", report["downgrades"]), ("held", len(held)), ("pins honoured", len(pins)),
               ("churn flagged", len(churn.get("flagged", []))), ("churn cleared", len(churn.get("cleared", []))),
               ("points expired", expired.get("points", 0)),
               ("standing discounts / year", f"{discounts.get('change_per_year', '0')} {currency}".strip())]
    intros = {"discounts.csv": f"Total change per year: {discounts.get('change_per_year', '0')} {currency}".strip()}
    return _PAGE.render(
        report=report, style=PAGE_STYLE, title=report.get("review_id") or "dry run",
        figures=[(label, figure_text(value)) for label, value in figures],
        charts=_charts(report), tables=[html_table(t, intros.get(t.file)) for t in tables],
        expired=_expired_text(expired))


def _expired_text(expired: dict) -> str | None:
    if not expired.get("points"):
        return None
    return (f"{figure_text(expired['points'])} points in {figure_text(expired.get('lots', 0))} lots, "
            f"{figure_text(expired.get('clients', 0))} clients")


def figure_text(value: object) -> str:
    """A figure as people read it: whole numbers with thousands separators."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def html_table(table: Table, intro: str | None) -> dict:
    """What the page template needs of a table: its first rows as text, and how many more the CSV has."""
    shown = table.rows[:HTML_ROWS]
    return {"title": table.title, "file": table.file, "intro": intro,
            "header": [column.replace("_", " ") for column in table.header],
            "numeric": [column in table.numeric for column in table.header],
            "rows": [[_html_cell(value) for value in row] for row in shown],
            "more": figure_text(len(table.rows) - len(shown)) if len(table.rows) > len(shown) else None}


def _html_cell(value: object) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# Shared with the simulation report: the page style, and the charts and tables of a report.
PAGE_STYLE = Markup("""\
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2937; max-width: 80rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.4; }
h1 { margin: 0 0 .25rem; font-size: 1.6rem; }
h2 { margin-top: 2rem; font-size: 1.2rem; border-bottom: 1px solid #e5e7eb; padding-bottom: .2rem; }
.meta { color: #4b5563; margin: 0; }
.badge { display: inline-block; padding: .1rem .5rem; border-radius: .25rem; font-size: .8rem;
         font-weight: 600; vertical-align: middle; background: #b45309; color: #fff; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .6rem;
           list-style: none; padding: 0; margin: 1.2rem 0; }
.figures li { border: 1px solid #e5e7eb; border-radius: .375rem; padding: .5rem .75rem; color: #4b5563; }
.figures strong { display: block; font-size: 1.35rem; color: #111827; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-weight: 600; margin-bottom: .3rem; }
figure svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: .88rem; margin: .4rem 0; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e5e7eb; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
td { overflow-wrap: anywhere; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #6b7280; font-style: italic; }
</style>
""")
CHARTS_HTML = """\
<section class="charts">
{% for caption, svg in charts %}
<figure>
<figcaption>{{ caption }}</figcaption>
{{ svg }}
</figure>
{% endfor %}
</section>
"""
TABLES_HTML = """\
{% for table in tables %}
<section>
<h2>{{ table.title }}</h2>
{% if table.intro %}<p>{{ table.intro }}</p>{% endif %}
{% if table.rows %}
<table>
<thead><tr>{% for column in table.header %}<th{% if table.numeric[loop.index0] %} class="num"{% endif %}>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in table.rows %}
<tr>{% for cell in row %}<td{% if table.numeric[loop.index0] %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% if table.more %}<p class="note">{{ table.more }} more in {{ table.file }}</p>{% endif %}
{% else %}
<p class="note">None.</p>
{% endif %}
</section>
{% endfor %}
"""
_PAGE_SOURCE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tier review {{ title }}</title>
{{ style }}
</head>
<body>
<header>
<h1>Tier review {{ title }}{% if report.dry_run %} <span class="badge">dry run</span>{% endif %}</h1>
<p class="meta">as of {{ report.as_of }} &middot; programme {{ report.programme_version }}
{%- if report.trigger %} &middot; {{ report.trigger }}{% endif %}</p>
</header>
<ul class="figures">
{% for label, value in figures %}
<li><strong>{{ value }}</strong>{{ label }}</li>
{% endfor %}
</ul>
""" + CHARTS_HTML + TABLES_HTML + """<section>
<h2>Points expired</h2>
{% if expired %}<p>{{ expired }}</p>{% else %}<p class="note">None.</p>{% endif %}
</section>
</body>
</html>
"""
_PAGE = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                    undefined=StrictUndefined).from_string(_PAGE_SOURCE)
