"""The scheduler on both databases: schedules read from the rule file, one review however many
schedulers run, one catch-up review after downtime. The clock is moved with time-machine, never waited for."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from sqlalchemy import func, select, text

from engine.schema import Schedule
from service.ingest import Ingestor
from service.review import scheduled_review_id
from service.scheduler import CATCH_UP_JOB, EXPIRY_JOB, REVIEW_JOB, build_scheduler, latest_moment, scheduled_review
from storage.db import read_snapshot
from storage.models import TierAssignment, TierReview
from tests.conftest import ROOT, RULES, event, ndjson, run_cli
from tests.api_support import free_port

QUARTERLY = Schedule(cron="0 2 1 1,4,7,10 *", timezone="Asia/Shanghai")  # as the shipped rule file says


def test_the_latest_scheduled_moment_is_read_in_the_schedule_time_zone():
    # 02:00 in Shanghai on 1 October is 18:00 UTC on 30 September.
    assert latest_moment(QUARTERLY, datetime(2026, 11, 23, tzinfo=UTC)) == datetime(2026, 9, 30, 18, tzinfo=UTC)
    assert latest_moment(QUARTERLY, datetime(2026, 9, 30, 18, tzinfo=UTC)) == datetime(2026, 9, 30, 18, tzinfo=UTC)
    assert latest_moment(QUARTERLY, datetime(2026, 9, 30, 17, 59, tzinfo=UTC)) == datetime(2026, 6, 30, 18, tzinfo=UTC)


def seed(engine, programmes) -> None:
    """Clients that the review will move: four borrowers of 20M (silver) and one of 1M (standard)."""
    events = [event(f"d{i}", f"C-{i}", "loan.drawn", "2026-03-01T00:00:00Z", loan_id=f"L{i}", product="term_loan",
                    amount="20000000" if i < 4 else "1000000", currency="CNY", term_months=12) for i in range(5)]
    report = Ingestor(engine, programmes, clock=lambda: datetime(2026, 6, 1, tzinfo=UTC)).ingest_lines(
        ndjson(*events).splitlines())
    assert report.applied == 5


def reviews(engine) -> list[tuple]:
    table = TierReview.__table__
    with read_snapshot(engine) as conn:
        return [tuple(row) for row in conn.execute(select(table.c.id, table.c.trigger, table.c.as_of,
                                                          table.c.finished_at.is_not(None)))]


def moves_by(engine, review_id: str) -> int:
    table = TierAssignment.__table__
    with read_snapshot(engine) as conn:
        return conn.execute(select(func.count()).select_from(table).where(table.c.review_id == review_id)).scalar()


def test_two_schedulers_on_one_database_run_one_review(engine, db_url, programmes):
    seed(engine, programmes)
    runs: list[tuple[str, object]] = []
    lock = threading.Lock()

    def record(job_event) -> None:
        with lock:
            runs.append((job_event.job_id, getattr(job_event, "retval", None) or getattr(job_event, "exception", None)))

    with time_machine.travel(datetime(2026, 10, 2, 9, tzinfo=UTC), tick=True):
        schedulers = [build_scheduler(db_url, RULES) for _ in range(2)]
        for scheduler in schedulers:
            scheduler.add_listener(record, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        try:
            for scheduler in schedulers:
                scheduler.start()
            jobs = {job.id: job for job in schedulers[0].get_jobs()}
            assert set(jobs) == {REVIEW_JOB, EXPIRY_JOB, CATCH_UP_JOB}
            assert (jobs[REVIEW_JOB].coalesce, jobs[REVIEW_JOB].misfire_grace_time) == (True, None)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(done for *_, done in reviews(engine)):
                time.sleep(0.1)
            time.sleep(1)  # give the other scheduler time to fire too, if it were going to review again
        finally:
            for scheduler in schedulers:
                scheduler.shutdown(wait=True)
    assert reviews(engine) == [("review-20260930T180000Z-scheduled", "scheduled",
                                datetime(2026, 9, 30, 18, tzinfo=UTC), True)]
    assert moves_by(engine, "review-20260930T180000Z-scheduled") == 4
    assert not [outcome for _, outcome in runs if isinstance(outcome, BaseException)], runs
    with read_snapshot(engine) as conn:  # stored jobs carry no arguments: no database URL, no password
        states = list(conn.execute(text("SELECT job_state FROM apscheduler_jobs")).scalars())
    assert len(states) == 3 and not any(db_url.split("?")[0].encode() in bytes(state) for state in states)


def test_concurrent_runs_of_the_review_job_make_one_review(engine, db_url, programmes):
    seed(engine, programmes)
    results: list[dict | None] = []
    start = threading.Barrier(3)

    def job() -> None:
        start.wait()
        results.append(scheduled_review(db_url, str(RULES)))

    with time_machine.travel(datetime(2026, 10, 2, 9, tzinfo=UTC), tick=True):
        threads = [threading.Thread(target=job) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    ran = [result for result in results if result is not None]
    assert len(results) == 3 and len(ran) == 1  # the others found it running or finished
    assert (ran[0]["review_id"], ran[0]["upgrades"]) == ("review-20260930T180000Z-scheduled", 4)
    assert len(reviews(engine)) == 1 and moves_by(engine, ran[0]["review_id"]) == 4


def test_after_downtime_one_catch_up_review_runs_as_of_the_latest_missed_moment(engine, db_url, programmes):
    seed(engine, programmes)
    # Down from June 2026 to May 2027: the October, January and April reviews were missed.
    with time_machine.travel(datetime(2027, 5, 3, tzinfo=UTC), tick=True):
        first = scheduled_review(db_url, str(RULES))
        second = scheduled_review(db_url, str(RULES))
    assert first is not None and first["as_of"] == "2027-03-31T18:00:00+00:00"
    assert second is None
    assert [review_id for review_id, *_ in reviews(engine)] == ["review-20270331T180000Z-scheduled"]


def wait_for_review(engine, seconds: float = 60) -> list[tuple]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [row for row in reviews(engine) if row[3]]
        if found:
            return found
        time.sleep(0.2)
    return []


@pytest.mark.parametrize("command", [["scheduler", "--json"], ["serve", "--scheduler", "--port", "PORT"]])
def test_the_scheduler_runs_from_the_command_line_alone_or_inside_the_server(engine, db_url, tmp_path, command):
    when = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = tmp_path / "events.jsonl"
    source.write_text(ndjson(event("d1", "C-1", "loan.drawn", when, loan_id="L1", product="term_loan",
                                   amount="20000000", currency="CNY", term_months=12)))
    assert run_cli("ingest", str(source), db_url=db_url).returncode == 0
    script = Path(sys.executable).parent / "loyalty"
    log = tmp_path / "out.log"
    command = [str(free_port()) if part == "PORT" else part for part in command]
    with log.open("w") as sink:
        process = subprocess.Popen([str(script), "--db", db_url, *command], stdout=sink, stderr=subprocess.STDOUT,
                                   cwd=ROOT)
    try:
        found = wait_for_review(engine)
    finally:
        process.terminate()
        process.wait(timeout=20)
    expected = scheduled_review_id(latest_moment(QUARTERLY, datetime.now(UTC)))
    assert [row[:2] for row in found] == [(expected, "scheduled")], log.read_text()
    if command[0] == "scheduler":  # --json: one line per job outcome
        outcomes = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert outcomes[0]["review_id"] == expected and outcomes[0]["job"] == "tier-review"


def months(scheduler) -> str:
    """The months the review job's cron trigger fires in."""
    return next(str(field) for field in scheduler.get_job(REVIEW_JOB).trigger.fields if field.name == "month")


def test_the_jobs_follow_the_schedule_of_the_version_in_force(engine, db_url, programmes, tmp_path):
    """A version activated for November reviews monthly: before it starts the quarterly schedule holds, after it
    the jobs move to the new one without a restart, and the catch-up reviews as of its latest moment."""
    seed(engine, programmes)
    rules = tmp_path / "rules"
    rules.mkdir()
    shipped = (RULES / "corporate_lending.yaml").read_text()
    (rules / "corporate_lending.yaml").write_text(shipped)
    monthly = (shipped.replace('version: "2026.1"', 'version: "2026.11"')
               .replace("effective_from: 2025-01-01T00:00:00Z", "effective_from: 2026-10-15T00:00:00Z")
               .replace('cron: "0 2 1 1,4,7,10 *"', 'cron: "0 2 1 * *"'))
    (rules / "monthly.yaml").write_text(monthly)
    with time_machine.travel(datetime(2026, 10, 2, 9, tzinfo=UTC), tick=False):
        scheduler = build_scheduler(db_url, rules)
        scheduler.start(paused=True)  # the jobs are stored, none runs by itself
    try:
        assert months(scheduler) == "1,4,7,10"  # quarterly
        with time_machine.travel(datetime(2026, 11, 5, 9, tzinfo=UTC), tick=False):
            outcome = scheduled_review(db_url, str(rules))  # what the catch-up job runs
        assert months(scheduler) == "*"  # now monthly
        assert outcome["review_id"] == "review-20261031T180000Z-scheduled"  # 1 November 02:00 in Shanghai
    finally:
        scheduler.shutdown(wait=False)
