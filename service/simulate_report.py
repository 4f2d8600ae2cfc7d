"""The files a simulation leaves for people: one CSV per table and one self-contained HTML page.

Built like the tier review's report (service/review_files.py, whose CSV, chart and table helpers it
uses): every row in the CSV files, the first rows of each table and inline SVG charts on the page
(points by rule, tiers current vs new, the migration heat map, interest forgone by product), and
nothing the page would fetch. Money stays the decimal text of the impact; a chart's bar lengths are
whole currency units, its labels the exact text.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from jinja2 import Environment, StrictUndefined
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from service.review_files import (
    CHARTS_HTML,
    HTML_FILE,
    PAGE_STYLE,
    TABLES_HTML,
    Table,
    draw_distribution,
    draw_migration,
    figure_text,
    html_table,
    plain,
    svg,
    write_csv,
)
from service.simulate import CURRENT, NEW

_CURRENT_COLOUR, _NEW_COLOUR = "#9ca3af", "#2563eb"  # the review report's before / after
_TRIPLE = ("current", "new", "difference")


def write_report(impact: dict, directory: Path) -> list[Path]:
    """Write the simulation's CSV files and report.html into `directory` (created if needed); return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tables = _tables(impact)
    written = [write_csv(directory / "summary.csv", ("key", "current", "new", "difference"), _summary(impact))]
    written += [write_csv(directory / table.file, table.header, table.rows) for table in tables]
    page = directory / HTML_FILE
    page.write_text(_render(impact, tables), encoding="utf-8")
    return [*written, page]


# -- tables -------------------------------------------------------------------------------------

def _values(figures: dict) -> tuple:
    return tuple(figures[key] for key in _TRIPLE)


def _summary(impact: dict) -> list[tuple]:
    events, clients = impact["events"], impact["clients"]
    return [
        ("as_of", impact["as_of"], impact["as_of"], ""),
        ("programme", *(f"{impact['programmes'][side]['id']} {', '.join(impact['programmes'][side]['versions'])}"
                        for side in (CURRENT, NEW)), ""),
        *((key, events[CURRENT][key], events[NEW][key], events[NEW][key] - events[CURRENT][key])
          for key in ("replayed", "applied", "rejected")),
        ("tier_reviews", len(impact["review_moments"][CURRENT]), len(impact["review_moments"][NEW]),
         len(impact["review_moments"][NEW]) - len(impact["review_moments"][CURRENT])),
        ("points_issued", *_values(impact["points"]["issued"])),
        ("points_expired", *_values(impact["points"]["expired"])),
        ("rate_discount_grants", *_values(impact["discounts"]["grants"])),
        (f"interest_forgone_per_year_{impact['currency']}", *_values(impact["interest_forgone_per_year"]["total"])),
        ("clients", *_values(clients["total"])),
        ("clients_affected", "", "", clients["affected"]),
        *((f"clients_affected_by_{key}", "", "", count) for key, count in clients["affected_by"].items()),
    ]


def _rows(key: str, rows: list[dict]) -> list[tuple]:
    return [(row[key], *_values(row)) for row in rows]


def _client_rows(rows: list[dict]) -> list[tuple]:
    return [(row["client_id"], row["tier_current"], row["tier_new"], *_values(row["points"]),
             *_values(row["interest_forgone"])) for row in rows]


def _tables(impact: dict) -> list[Table]:
    numbers = frozenset(_TRIPLE)
    interest = impact["interest_forgone_per_year"]
    tiers = impact["tiers"]["order"]
    migration = impact["tiers"]["migration"]
    client_header = ("client_id", "tier_current", "tier_new", "points_current", "points_new", "points_difference",
                     "interest_current", "interest_new", "interest_difference")
    client_numbers = frozenset(client_header[3:])
    volume = {row["product"]: row for row in interest["discounted_volume"]}
    return [
        Table("points_by_rule.csv", "Points issued by rule", ("rule_id", *_TRIPLE),
               _rows("rule_id", impact["points"]["by_rule"]), numbers),
        Table("discounts_by_product.csv", "Rate-discount grants by product", ("product", *_TRIPLE),
               _rows("product", impact["discounts"]["by_product"]), numbers),
        Table("discounts_by_rule.csv", "Rate-discount grants by rule (tier:… are standing tier benefits)",
               ("rule_id", *_TRIPLE), _rows("rule_id", impact["discounts"]["by_rule"]), numbers),
        Table("interest_by_product.csv", f"Interest forgone a year by product ({impact['currency']})",
               ("product", *_TRIPLE, "discounted_volume_current", "discounted_volume_new"),
               [(*row, *(volume.get(row[0], {}).get(side, "0") for side in (CURRENT, NEW)))
                for row in _rows("product", interest["by_product"])],
               numbers | {"discounted_volume_current", "discounted_volume_new"}),
        Table("tiers.csv", "Clients per tier at the end", ("tier", *_TRIPLE),
               _rows("tier", impact["tiers"]["distribution"]), numbers),
        Table("migration.csv", "Migration (current tier \u2192 new tier)", ("current_tier", *tiers),
               [(source, *(migration.get(source, {}).get(target, 0) for target in tiers)) for source in tiers],
               frozenset(tiers)),
        Table("top_by_points.csv", "Most affected clients: points", client_header,
               _client_rows(impact["clients"]["top_by_points"]), client_numbers),
        Table("top_by_interest.csv", "Most affected clients: interest forgone a year", client_header,
               _client_rows(impact["clients"]["top_by_interest"]), client_numbers),
        Table("rejected.csv", "Rejected lines", ("programme", "line", "id", "error"),
               [(side, error["line"], error["id"], error["error"])
                for side in (CURRENT, NEW) for error in impact["events"][side]["errors"]]),
    ]


# -- charts -------------------------------------------------------------------------------------

def _charts(impact: dict) -> list[tuple[str, object]]:
    tiers = impact["tiers"]["order"]
    by_rule = impact["points"]["by_rule"]
    by_product = impact["interest_forgone_per_year"]["by_product"]
    charts = []
    if by_rule:
        charts.append(("Points issued by rule, current / new", svg(
            lambda f: _draw_pairs(f, by_rule, "rule_id", "points"), (7.5, 0.55 * len(by_rule) + 1.4), "chart1-")))
    counts = {side: {row["tier"]: row[side] for row in impact["tiers"]["distribution"]} for side in (CURRENT, NEW)}
    charts.append(("Clients per tier at the end, current / new", svg(
        lambda f: draw_distribution(f, tiers, counts[CURRENT], counts[NEW], labels=(CURRENT, NEW)),
        (1.3 * len(tiers) + 2.5, 3.4), "chart2-")))
    charts.append(("Migration (current tier \u2192 new tier)", svg(
        lambda f: draw_migration(f, tiers, impact["tiers"]["migration"], sides=(CURRENT, NEW)),
        (1.1 * len(tiers) + 2.2, 0.9 * len(tiers) + 1.6), "chart3-")))
    if by_product:
        charts.append((f"Interest forgone a year by product ({impact['currency']}), current / new", svg(
            lambda f: _draw_pairs(f, by_product, "product", impact["currency"]),
            (7.5, 0.55 * len(by_product) + 1.4), "chart4-")))
    return charts


def _draw_pairs(figure: Figure, rows: list[dict], key: str, unit: str) -> None:
    """Horizontal bars, current and new side by side per row; labelled with the exact figures."""
    axes = figure.subplots()
    height = 0.4
    for offset, side, colour in ((-height / 2, CURRENT, _CURRENT_COLOUR), (height / 2, NEW, _NEW_COLOUR)):
        values = [Decimal(str(row[side])) for row in rows]
        bars = axes.barh([i + offset for i in range(len(rows))], [int(v.to_integral_value()) for v in values],
                         height, label=side, color=colour)
        axes.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=7, padding=2)
    axes.set_yticks(range(len(rows)), [plain(str(row[key])) for row in rows])
    axes.invert_yaxis()  # first row on top, as in the table
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{int(value):,}"))
    axes.set_xlabel(plain(unit))
    axes.margins(x=0.25)  # room for the labels at the bars' ends
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False, loc="lower right")


# -- page ---------------------------------------------------------------------------------------

def _render(impact: dict, tables: list[Table]) -> str:
    """The simulation as one self-contained HTML page (inline CSS and SVG, user text escaped)."""
    interest = impact["interest_forgone_per_year"]["total"]
    clients = impact["clients"]
    figures = [("points issued, new \u2212 current", _signed(impact["points"]["issued"]["difference"])),
               (f"interest forgone a year ({impact['currency']}), new \u2212 current", _signed(interest["difference"])),
               ("rate-discount grants, new \u2212 current", _signed(impact["discounts"]["grants"]["difference"])),
               ("clients affected", figure_text(clients["affected"])),
               ("tier at the end changed", figure_text(clients["affected_by"]["tier"])),
               ("events replayed", figure_text(impact["events"][NEW]["replayed"]))]
    programme = impact["programmes"]
    return _PAGE.render(
        impact=impact, style=PAGE_STYLE, figures=figures, charts=_charts(impact),
        names={side: f"{programme[side]['id']} {', '.join(programme[side]['versions'])} "
                     f"({', '.join(programme[side]['source'])})" for side in (CURRENT, NEW)},
        tables=[html_table(table, None) for table in tables])


def _signed(value: object) -> str:
    amount = Decimal(str(value))
    return f"{amount:+,}" if amount else f"{amount:,}"


_PAGE_SOURCE_SIMULATION = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Simulation as of {{ impact.as_of }}</title>
{{ style }}
</head>
<body>
<header>
<h1>Simulation: new against current</h1>
<p class="meta">new: {{ names.new }}<br>current: {{ names.current }}<br>
events from {{ impact.first_event }} to {{ impact.as_of }} &middot; tier reviews {{ impact.review_moments.current|length }}
(current) / {{ impact.review_moments.new|length }} (new)</p>
</header>
<ul class="figures">
{% for label, value in figures %}
<li><strong>{{ value }}</strong>{{ label }}</li>
{% endfor %}
</ul>
{% for warning in impact.warnings %}
<p class="note">{{ warning }}</p>
{% endfor %}
""" + CHARTS_HTML + TABLES_HTML + """</body>
</html>
"""
_PAGE = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                    undefined=StrictUndefined).from_string(_PAGE_SOURCE_SIMULATION)
