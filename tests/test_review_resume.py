"""A review keeps its moment: resumed with `--id` it finishes as of the moment it started with, equal to
an uninterrupted run; losing the database half-way is one clear error naming the id to resume."""
from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

import service.review as review_module
from service.errors import InputError, ReviewInterruptedError
from service.review import run_review
from storage.db import read_snapshot
from storage.models import TierAssignment
from tests.conftest import cli_json, run_cli
from tests.test_review_policy import drawn, ingest, verified

NOW = datetime(2027, 6, 1, tzinfo=UTC)
MOMENT = datetime(2025, 6, 30, tzinfo=UTC)
AMOUNTS = ["20000000", "40000000", "1000", "60000000", "35000000", "5000"]  # silver, gold, standard, ...


def portfolio(engine, programmes) -> None:
    ingest(engine, programmes, *(drawn(f"d{i}", f"C-{i}", "2025-02-01T00:00:00Z", amount)
                                 for i, amount in enumerate(AMOUNTS)))


def moves(engine, review_id: str) -> list[tuple]:
    tiers = TierAssignment.__table__
    with read_snapshot(engine) as conn:
        return sorted(conn.execute(select(tiers.c.client_id, tiers.c.tier, tiers.c.valid_from)
                                   .where(tiers.c.review_id == review_id)).all())


def decisions(report) -> list[tuple]:
    return sorted((c.client_id, c.from_tier, c.to_tier, c.effective_from) for c in report.changes)


def crash_after(pages: int):
    seen = []

    def progress(count: int) -> None:
        seen.append(count)
        if len(seen) == pages:
            raise RuntimeError("the machine went down")
    return progress


def test_a_resumed_review_keeps_its_moment_and_equals_an_uninterrupted_one(engine, programmes, monkeypatch):
    portfolio(engine, programmes)
    uninterrupted = run_review(engine, programmes, MOMENT, dry_run=True, clock=lambda: NOW)
    assert len(uninterrupted.changes) >= 3
    monkeypatch.setattr(review_module, "PAGE", 1)
    with pytest.raises(RuntimeError):
        run_review(engine, programmes, MOMENT, clock=lambda: NOW, review_id="review-q2", progress=crash_after(2))

    later = datetime(2027, 6, 2, tzinfo=UTC)  # resumed a day later: the review still looks at its own moment
    with pytest.raises(InputError, match="is a review as of 2025-06-30T00:00:00"):
        run_review(engine, programmes, later, clock=lambda: later, review_id="review-q2")
    resumed = run_review(engine, programmes, None, clock=lambda: later, review_id="review-q2")

    assert resumed.resumed and resumed.as_of == MOMENT
    assert decisions(resumed) == decisions(uninterrupted)
    assert resumed.migration == uninterrupted.migration and resumed.tiers_after == uninterrupted.tiers_after
    written = moves(engine, "review-q2")
    assert len(written) == len(uninterrupted.changes) and {valid_from for *_, valid_from in written} == {MOMENT}
    verified(engine)


def test_the_command_resumes_at_the_recorded_moment_and_refuses_another(db_url, programmes, monkeypatch):
    from storage.db import make_engine

    cli_json("init", db_url=db_url)
    engine = make_engine(db_url)
    portfolio(engine, programmes)
    monkeypatch.setattr(review_module, "PAGE", 1)
    with pytest.raises(RuntimeError):
        run_review(engine, programmes, MOMENT, review_id="review-cli", progress=crash_after(1))
    engine.dispose()

    other = run_cli("review", "--id", "review-cli", "--as-of", "2025-09-30T00:00:00Z", db_url=db_url)
    assert other.returncode == 2 and "is a review as of 2025-06-30T00:00:00+00:00" in other.stderr
    assert "Traceback" not in other.stderr
    done = cli_json("review", "--id", "review-cli", db_url=db_url)
    assert (done["as_of"], done["resumed"], done["review_id"]) == ("2025-06-30T00:00:00+00:00", True, "review-cli")
    bad = run_cli("review", "--id", "x" * 65, db_url=db_url)
    assert bad.returncode == 2 and "is not one" in bad.stderr and "Traceback" not in bad.stderr


def test_losing_the_database_half_way_names_the_review_to_finish(tmp_path, programmes, monkeypatch):
    """SQLite: the file disappears under a running review (a directory stands in its place)."""
    from storage.db import init_schema, make_engine

    path = tmp_path / "loyalty.db"
    engine = make_engine(f"sqlite:///{path}")
    init_schema(engine)
    portfolio(engine, programmes)
    monkeypatch.setattr(review_module, "PAGE", 1)
    moved_away: list[Path] = []

    def lose_the_database(_count: int) -> None:
        if moved_away:
            return
        engine.dispose()
        for file in tmp_path.glob("loyalty.db*"):
            moved_away.append(_move(file, tmp_path / "away"))
        os.mkdir(path)  # opening it now fails: the database is gone

    with pytest.raises(ReviewInterruptedError) as lost:
        run_review(engine, programmes, MOMENT, clock=lambda: NOW, review_id="review-lost",
                   progress=lose_the_database)
    message = str(lost.value)
    assert "review-lost" in message and "loyalty review --id review-lost" in message and "\n" not in message

    os.rmdir(path)
    for file in moved_away:
        file.rename(tmp_path / file.name)
    engine.dispose()
    finished = run_review(engine, programmes, None, clock=lambda: NOW, review_id="review-lost")
    assert finished.resumed and finished.as_of == MOMENT
    assert {valid_from for *_, valid_from in moves(engine, "review-lost")} == {MOMENT}
    verified(engine)


def _move(file: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    return file.rename(folder / file.name)


def test_a_lease_left_by_a_process_that_died_on_this_machine_is_taken_over(engine, programmes):
    import socket
    import subprocess
    from datetime import timedelta

    from service.errors import ConflictError
    from storage import leases

    portfolio(engine, programmes)
    gone = subprocess.Popen(["true"])  # a process of this machine that has ended
    gone.wait()
    host = socket.gethostname()
    assert leases.acquire(engine, review_module.LEASE, f"{host}:{os.getppid()}:alive", timedelta(minutes=5), NOW)
    with pytest.raises(ConflictError, match="another tier review is running"):
        run_review(engine, programmes, MOMENT, clock=lambda: NOW)
    leases.release(engine, review_module.LEASE, f"{host}:{os.getppid()}:alive")
    assert leases.acquire(engine, review_module.LEASE, f"{host}:{gone.pid}:dead", timedelta(minutes=5), NOW)
    assert run_review(engine, programmes, MOMENT, clock=lambda: NOW).clients == len(AMOUNTS)
    assert leases.current(engine, review_module.LEASE) is None
