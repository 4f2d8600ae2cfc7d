"""`loyalty simulate`: replaying a history under a proposed programme and the current one, compared.

The replay must give what really ingesting the history would (same points, tiers and discounts as a
real database fed the same events with the same reviews, on SQLite and PostgreSQL), must follow
through (a tier reached earlier changes later awards), and must never touch the live database.
"""
from __future__ import annotations

import csv
import json
import sqlite3
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from cli.main import app
from demo.generator import generate
from engine.loader import load_programmes
from rewards.kinds import Kind, Reason
from service.ingest import Ingestor
from service.portfolio import portfolio_summary
from service.review import run_review
from service.simulate import (
    CURRENT,
    NEW,
    Candidate,
    SimulationError,
    impact,
    read_history,
    replay,
    review_moments,
    simulate,
)
from storage.db import make_engine
from storage.models import LedgerEntry
from tests.conftest import RULES, SAMPLE, event, ndjson, run_cli

ENTRY = LedgerEntry.__table__
RUNNER = CliRunner()


def moment(text_: str) -> datetime:
    return datetime.fromisoformat(text_.replace("Z", "+00:00"))


def proposed_rules(folder: Path) -> Path:
    """The shipped file with drawdown points doubled and gold reached from 15M CNY (30M now)."""
    source = (RULES / "corporate_lending.yaml").read_text()
    changed = source.replace("points: event.amount / 10000", "points: event.amount / 5000") \
        .replace("{metric: loan_volume, gte: 30000000}", "{metric: loan_volume, gte: 15000000}") \
        .replace('version: "2026.1"', 'version: "2026.2"')
    assert changed.count("/ 5000") == 1 and "gte: 15000000" in changed
    path = folder / "proposed.yaml"
    path.write_text(changed)
    return path


# C-1 draws 20M and repays on time before the first scheduled review (2025-03-31 18:00 UTC), then
# draws 5M. Current rules: the review makes it silver (10M), so the 5M earns 500 x 1.2. Proposed:
# 20M and on-time repayments qualify for gold (15M, an instant-upgrade tier) at the end of the batch,
# so the 5M earns 1,000 x 1.5, and its drawdown holds gold's 10 bps instead of silver's 5.
# C-2 draws 60M (a one-off 10 bps discount, not for that drawdown itself), is silver from the
# 2025-06-30 review, then draws twice: the first uses the one-off (5 + 10 bps), the second not (5).
HISTORY = [
    event("h-1", "C-1", "client.onboarded", "2025-01-10T09:00:00Z", name="One", segment="transactional"),
    event("h-2", "C-1", "loan.drawn", "2025-02-03T10:00:00Z", loan_id="L-1", product="working_capital",
          amount="20000000.00", currency="CNY", term_months=12),
    event("h-3", "C-1", "repayment.made", "2025-03-03T10:00:00Z", loan_id="L-1", amount="1000000.00",
          due_date="2025-03-03", days_late=0),
    event("h-4", "C-1", "loan.drawn", "2025-04-15T10:00:00Z", loan_id="L-2", product="working_capital",
          amount="5000000.00", currency="CNY", term_months=12),
    event("h-5", "C-2", "client.onboarded", "2025-01-10T09:00:00Z", name="Two", segment="strategic"),
    event("h-6", "C-2", "loan.drawn", "2025-05-05T10:00:00Z", loan_id="L-3", product="term_loan",
          amount="60000000.00", currency="CNY", term_months=36),
    event("h-7", "C-2", "loan.drawn", "2025-07-10T10:00:00Z", loan_id="L-4", product="working_capital",
          amount="10000000.00", currency="CNY", term_months=12),
    event("h-8", "C-2", "loan.drawn", "2025-08-10T10:00:00Z", loan_id="L-5", product="working_capital",
          amount="10000000.00", currency="CNY", term_months=12),
]


@pytest.fixture(scope="module")
def shipped():
    return load_programmes(RULES)


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    path.write_text(ndjson(*HISTORY))
    return path


@pytest.fixture(scope="module")
def proposed(tmp_path_factory) -> Path:
    return proposed_rules(tmp_path_factory.mktemp("proposed"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, shipped):
    """A small demo portfolio, and its simulation under the shipped rules against themselves."""
    events = generate(30, 12, seed=3)
    path = tmp_path_factory.mktemp("demo") / "demo.jsonl"
    path.write_text(ndjson(*events))
    same = Candidate(CURRENT, RULES, shipped)
    result = simulate(same, Candidate(NEW, RULES, shipped), path, parallel=False)
    return events, result, impact(result)


def ingest_like_the_demo(engine, programmes, events: list[dict], moments: list[datetime]) -> None:
    """What demo/run.py does: ingest up to each review moment, review there; then the rest."""
    ingestor = Ingestor(engine, programmes)
    position = 0
    for at in moments:
        upto = position
        while upto < len(events) and moment(events[upto]["occurred_at"]) <= at:
            upto += 1
        assert ingestor.ingest_lines([json.dumps(e) for e in events[position:upto]]).rejected == 0
        position = upto
        run_review(engine, programmes, at)
    assert ingestor.ingest_lines([json.dumps(e) for e in events[position:]]).rejected == 0


def test_review_moments_follow_the_rule_files_schedule(shipped):
    # "0 2 1 1,4,7,10 *" in Asia/Shanghai: 02:00 on the first of each quarter there, 18:00 UTC the day before.
    assert review_moments(shipped, moment("2025-02-01T00:00:00Z"), moment("2026-01-01T00:00:00Z")) == [
        moment("2025-03-31T18:00:00Z"), moment("2025-06-30T18:00:00Z"), moment("2025-09-30T18:00:00Z"),
        moment("2025-12-31T18:00:00Z")]
    # None before the programme's first version (2025-01-01), the end included, the start not.
    assert review_moments(shipped, moment("2024-01-01T00:00:00Z"), moment("2025-03-31T18:00:00Z")) == [
        moment("2025-03-31T18:00:00Z")]
    assert review_moments(shipped, moment("2025-03-31T18:00:00Z"), moment("2025-06-01T00:00:00Z")) == []


def test_the_same_rules_make_no_difference(demo_run):
    _, result, found = demo_run
    assert found["clients"]["affected"] == 0
    assert found["clients"]["top_by_points"] == found["clients"]["top_by_interest"] == []
    for figures in (found["points"]["issued"], found["discounts"]["grants"], found["clients"]["total"],
                    found["interest_forgone_per_year"]["total"], *found["points"]["by_rule"],
                    *found["tiers"]["distribution"]):
        assert figures["current"] == figures["new"] and Decimal(str(figures["difference"])) == 0, figures
    assert all(set(row) == {source} for source, row in found["tiers"]["migration"].items())  # nobody moves
    assert found["points"]["issued"]["current"] > 0 and Decimal(found["interest_forgone_per_year"]["total"]["new"]) > 0
    assert result.current.events["rejected"] == 0


def test_simulation_gives_the_totals_of_really_ingesting_the_history(engine, shipped, demo_run):
    events, result, found = demo_run
    as_of = moment(events[-1]["occurred_at"])
    moments = review_moments(shipped, moment(events[0]["occurred_at"]), as_of)
    assert found["review_moments"][CURRENT] == [m.isoformat() for m in moments] and len(moments) >= 4
    ingest_like_the_demo(engine, shipped, events, moments)

    real = portfolio_summary(engine, shipped, as_of)
    with engine.connect() as conn:
        by_rule = dict(conn.execute(select(ENTRY.c.rule_id, func.sum(ENTRY.c.points)).where(
            ENTRY.c.kind == Kind.POINTS, ENTRY.c.reason == Reason.EARN).group_by(ENTRY.c.rule_id)).all())
    assert found["points"]["issued"]["current"] == real["points"]["earned"] > 0
    assert {row["rule_id"]: row["current"] for row in found["points"]["by_rule"]} == \
        {rule: int(points) for rule, points in by_rule.items()}
    assert {row["tier"]: row["current"] for row in found["tiers"]["distribution"]} == real["clients_per_tier"]
    assert sum(count > 0 for count in real["clients_per_tier"].values()) >= 3  # tiers did move
    granted: dict[str, int] = {}
    for grant in real["discount_grants"]:
        granted[grant["rule_id"]] = granted.get(grant["rule_id"], 0) + grant["granted"]
    assert {row["rule_id"]: row["current"] for row in found["discounts"]["by_rule"]} == granted
    assert sum(r["upgrades"] for r in found["reviews"][CURRENT]) > 0
    assert result.current.events["applied"] == len(events)


def test_a_changed_programme_follows_through_to_later_awards(history, proposed, shipped):
    result = simulate(Candidate(CURRENT, RULES, shipped), Candidate(NEW, proposed, load_programmes(proposed)),
                      history, parallel=False)
    found = impact(result, top=5)
    clients = {row["client_id"]: row for row in found["clients"]["top_by_points"]}
    # C-1's 5M drawdown after it moved up: 500 x silver 1.2 now; proposed, 1,000 x gold 1.5 (follow-through:
    # without the upgrade it would earn 1,000 x 1). Its on-time repayment (50 points) came before either move.
    assert result.current.clients["C-1"].points == 2000 + 50 + 600
    assert result.new.clients["C-1"].points == 4000 + 50 + 1500
    assert clients["C-1"]["tier_current"] == "silver" and clients["C-1"]["tier_new"] == "gold"
    assert clients["C-1"]["points"] == {"current": 2650, "new": 5550, "difference": 2900}
    # C-2 never repays, so never gold: silver both ways, its points only doubled.
    assert (result.current.clients["C-2"].points, result.new.clients["C-2"].points) == (8400, 16800)
    by_rule = {row["rule_id"]: row for row in found["points"]["by_rule"]}
    assert by_rule["drawdown-points"] == {"rule_id": "drawdown-points", "current": 11000, "new": 22300,
                                          "difference": 11300}
    assert by_rule["on-time-repayment"]["difference"] == 0
    # Interest forgone a year: C-1's 5M at 5 bps (silver) or 10 bps (gold); C-2's first 10M at
    # 5 + 10 bps (the one-off, then consumed), its second at 5.
    assert found["interest_forgone_per_year"]["total"] == {"current": "22500.00", "new": "25000.00",
                                                           "difference": "2500.00"}
    assert found["clients"]["top_by_interest"][0]["client_id"] == "C-1"
    assert found["tiers"]["migration"] == {"silver": {"gold": 1, "silver": 1}}
    assert {row["tier"]: row["difference"] for row in found["tiers"]["distribution"]} == \
        {"standard": 0, "silver": -1, "gold": 1, "diamond": 0}
    assert found["clients"]["affected"] == 2 and found["clients"]["affected_by"] == \
        {"points": 2, "tier": 1, "discounts": 1}
    assert [r["upgrades"] for r in found["reviews"][NEW]] == [0, 1]  # C-1 was already gold: only C-2 moves
    assert [r["upgrades"] for r in found["reviews"][CURRENT]] == [1, 1]


def test_lowering_a_threshold_on_the_demo_portfolio(demo_run, proposed, shipped, tmp_path, monkeypatch):
    events, same, _ = demo_run
    path = tmp_path / "demo.jsonl"
    path.write_text(ndjson(*events))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    found = impact(simulate(Candidate(CURRENT, RULES, shipped), Candidate(NEW, proposed, load_programmes(proposed)),
                            path, parallel=True))
    assert list(scratch.iterdir()) == []  # the replays' scratch databases are gone
    # The current side is the same replay as before, whether run here or in a child process.
    assert found["points"]["issued"]["current"] == sum(same.current.points_by_rule.values())
    tiers = {row["tier"]: row for row in found["tiers"]["distribution"]}
    assert tiers["gold"]["difference"] > 0
    moved_up = sum(count for source, row in found["tiers"]["migration"].items() for target, count in row.items()
                   if found["tiers"]["order"].index(target) > found["tiers"]["order"].index(source))
    assert moved_up == found["clients"]["affected_by"]["tier"] > 0
    by_rule = {row["rule_id"]: row for row in found["points"]["by_rule"]}
    assert by_rule["drawdown-points"]["new"] >= 2 * by_rule["drawdown-points"]["current"]
    assert by_rule["survey-feedback"]["difference"] == 0  # no tier multiplier, and capped: unchanged
    assert Decimal(found["interest_forgone_per_year"]["total"]["difference"]) > 0  # gold holds more bps
    assert found["run"]["parallel"] is True
    assert all(set(found["run"]["phases"][side]) == {"ingest", "reviews", "summary"} for side in (CURRENT, NEW))


def test_cli_end_to_end_with_json_and_report(history, proposed, tmp_path):
    report = tmp_path / "impact"
    result = run_cli("simulate", str(proposed), "--events", str(history), "--report", str(report), "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["points"]["issued"] == {"current": 11050, "new": 22350, "difference": 11300}
    assert found["programmes"][NEW]["versions"] == ["2026.2"] and found["programmes"][CURRENT]["versions"] == ["2026.1"]
    assert {Path(p).name for p in found["report_files"]} == {
        "summary.csv", "points_by_rule.csv", "discounts_by_product.csv", "discounts_by_rule.csv",
        "interest_by_product.csv", "tiers.csv", "migration.csv", "top_by_points.csv", "top_by_interest.csv",
        "rejected.csv", "report.html"}
    page = (report / "report.html").read_text()
    assert page.count("<svg") == 4
    for caption in ("Points issued by rule", "Clients per tier at the end", "Migration", "Interest forgone"):
        assert caption in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in page
    with (report / "points_by_rule.csv").open() as handle:
        rows = {row["rule_id"]: row for row in csv.DictReader(handle)}
    assert rows["drawdown-points"] == {"rule_id": "drawdown-points", "current": "11000", "new": "22300",
                                       "difference": "11300"}
    with (report / "migration.csv").open() as handle:
        assert list(csv.reader(handle))[2] == ["silver", "0", "1", "1", "0"]

    human = run_cli("simulate", str(proposed), "--events", str(history), "--top", "1")
    assert human.returncode == 0, human.stderr
    assert "points issued" in human.stdout and "+11,300" in human.stdout and "+2,500.00" in human.stdout
    assert "clients affected: 2 of 2" in human.stdout and "C-1" in human.stdout


def test_the_live_database_is_untouched(db_url, history, proposed, tmp_path):
    assert run_cli("init", db_url=db_url).returncode == 0
    assert run_cli("ingest", str(SAMPLE), db_url=db_url).returncode == 0
    counts = "SELECT (SELECT count(*) FROM processed_event), (SELECT count(*) FROM ledger_entry), " \
             "(SELECT count(*) FROM client), (SELECT count(*) FROM tier_review), (SELECT count(*) FROM tier_assignment)"
    live = make_engine(db_url)
    with live.connect() as conn:
        before = tuple(conn.execute(text(counts)).one())
    result = run_cli("simulate", str(proposed), "--events", str(history), "--json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    with live.connect() as conn:
        assert tuple(conn.execute(text(counts)).one()) == before
    live.dispose()
    # Nor is a database that does not exist created.
    missing = tmp_path / "never.db"
    assert run_cli("simulate", str(proposed), "--events", str(history), "--json",
                   db_url=f"sqlite:///{missing}").returncode == 0
    assert not missing.exists()


def invoke(*args: object) -> tuple[int, str, str]:
    """Run `loyalty ARGS` in this process (typer's CliRunner): (exit code, stdout, stderr)."""
    result = RUNNER.invoke(app, [str(arg) for arg in args], env={"LOYALTY_RULES": None, "LOYALTY_DATABASE_URL": None})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_bad_inputs(history, proposed, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(proposed.read_text().replace("{metric: loan_volume, gte: 15000000}",
                                                   "{metric: loan_volumes, gte: 15000000}"))
    code, _, errors = invoke("simulate", broken, "--events", history)
    assert code == 2 and f"{broken}:" in errors and "loan_volumes" in errors
    code, out, _ = invoke("simulate", proposed, "--against", broken, "--events", history, "--json")
    assert code == 2 and "--against" in json.loads(out)["error"]
    code, _, errors = invoke("simulate", proposed, "--events", tmp_path / "none.jsonl")
    assert code == 2 and "no such file" in errors
    for as_of, message in (("2025-06-01T00:00:00", "no time zone"), ("2999-01-01T00:00:00Z", "in the future"),
                           ("2020-01-01", "before the history's first event")):
        code, out, _ = invoke("simulate", proposed, "--events", history, "--as-of", as_of, "--json")
        assert code == 2 and message in json.loads(out)["error"], out

    lines = history.read_text().splitlines()
    naive = json.dumps({**HISTORY[3], "id": "bad-2", "occurred_at": "2025-04-15T10:00:00"})
    incomplete = json.dumps({**HISTORY[3], "id": "bad-3", "data": {"product": "working_capital"}})
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join([lines[0], "{not json", *lines[1:4], naive, incomplete, *lines[4:]]) + "\n")
    code, out, _ = invoke("simulate", proposed, "--events", mixed, "--json")
    assert code == 1
    found = json.loads(out)
    for side in (CURRENT, NEW):
        assert found["events"][side]["rejected"] == 3 and found["events"][side]["applied"] == len(HISTORY)
        assert [(e["line"], e["id"]) for e in found["events"][side]["errors"]] == \
            [(2, None), (6, "bad-2"), (7, "bad-3")]
    assert "no time zone" in found["events"][NEW]["errors"][1]["error"]
    assert "data.loan_id: missing" in found["events"][NEW]["errors"][2]["error"]
    assert found["points"]["issued"]["difference"] == 11300  # the good lines replayed as before
    human = run_cli("simulate", str(proposed), "--events", str(mixed))  # as an operator sees it
    assert human.returncode == 1 and "line 2" in human.stdout and "3 line(s) rejected" in human.stdout

    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text("{not json\n")
    code, out, _ = invoke("simulate", proposed, "--events", nothing, "--json")
    assert code == 2 and "no event to replay" in json.loads(out)["error"]


def test_the_history_is_replayed_in_time_order_from_its_file(tmp_path):
    """Only where each event is gets held; its line is read again from the file, in time order (ties in the
    file's order), a byte-order mark on the first line skipped as ingest skips it."""
    lines = [json.dumps(e) for e in (HISTORY[3], HISTORY[0], HISTORY[4], HISTORY[1])]  # h-4 (April) first
    path = tmp_path / "unordered.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([lines[0], "", lines[1], lines[2] + "\r", lines[3]]).encode())
    history = read_history(path)
    assert list(history.numbers) == [3, 4, 5, 1] and history.lines == 5  # h-1 and h-5 at the same moment
    assert [json.loads(text)["id"] for _, text in history.read(0, len(history))] == ["h-1", "h-5", "h-2", "h-4"]
    assert history.count_upto(moment("2025-02-03T10:00:00Z")) == 3
    assert history.moment(3) == moment("2025-04-15T10:00:00Z")


def test_a_replay_leaves_no_scratch_database_behind_even_when_it_fails(tmp_path, history, shipped, monkeypatch):
    summary = replay(CURRENT, shipped, read_history(history), scratch=tmp_path)
    assert summary.events["applied"] == len(HISTORY) and list(tmp_path.iterdir()) == []

    def disk_full(*_args, **_kwargs):
        raise OperationalError("INSERT ...", None, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr("service.simulate.run_review", disk_full)
    with pytest.raises(SimulationError, match="filled the disk .* set TMPDIR"):
        replay(CURRENT, shipped, read_history(history), scratch=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_replay_process_that_fails_stops_the_simulation_with_its_reason(history, proposed, tmp_path):
    missing = tmp_path / "gone.yaml"  # loaded here, then removed before the replay processes load it
    missing.write_text(proposed.read_text())
    candidates = [Candidate(label, missing, load_programmes(missing)) for label in (CURRENT, NEW)]
    missing.unlink()
    with pytest.raises(SimulationError, match="the replay under the (current|new) programme failed: .*gone.yaml"):
        simulate(*candidates, history, parallel=True)


def test_as_of_stops_the_replay(history, proposed, shipped):
    result = simulate(Candidate(CURRENT, RULES, shipped), Candidate(NEW, proposed, load_programmes(proposed)),
                      history, as_of=datetime(2025, 4, 30, tzinfo=UTC), parallel=False)
    found = impact(result)
    assert found["as_of"] == "2025-04-30T00:00:00+00:00" and found["events"][NEW]["after_as_of"] == 3
    assert found["review_moments"][NEW] == ["2025-03-31T18:00:00+00:00"]
    assert found["clients"]["total"] == {"current": 2, "new": 2, "difference": 0}  # C-2 was onboarded in January
    assert any("after the as-of moment" in warning for warning in found["warnings"])


def test_a_hostile_line_in_the_history_is_rejected_alone(tmp_path):
    """Lines over the length bound (read in bounded pieces) and unusable numbers are rejected with their
    line; the rest of the history is replayed."""
    from service.simulate import count_lines

    good = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()][:2]
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"".join([
        json.dumps(good[0]).encode() + b"\n",
        b'{"id": "' + b"x" * 200_000 + b'"}\n',
        json.dumps(good[1]).replace('"data": {', '"data": {"amount": ' + "9" * 5000 + ", ").encode() + b"\n",
        json.dumps({**good[0], "id": "e", "occurred_at": "9999-12-31T23:59:59-14:00"}).encode() + b"\n",
        json.dumps(good[1]).encode(),  # no newline at the end
    ]))
    read = read_history(history)
    assert list(read.numbers) == [1, 3, 5]  # line 3's amount is rejected when it is replayed
    lines = history.read_text().splitlines()
    assert [text.removesuffix("\n") for _, text in read.read(0, len(read))] == [lines[0], lines[2], lines[4]]
    reasons = {error["line"]: error["error"] for error in read.rejected}
    assert "200,010 bytes" in reasons[2] and "2999" in reasons[4] and set(reasons) == {2, 4}
    assert count_lines(history) == 5
