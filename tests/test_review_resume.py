"""A review keeps its moment: resumed with `--id` it finishes as of the moment it started with, equal to
an uninterrupted run; losing the database half-way is one clear error naming the id to resume."""
from __future__ import annotations

import contextlib
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
from tests.waits_support import frozen_capable

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


def test_losing_the_database_half_way_names_the_review_to_finish(db_url, tmp_path, programmes, monkeypatch):
    """SQLite: the file disappears under a running review; PostgreSQL: every connection drops and new ones
    are refused (a proxy in front of the server cuts them)."""
    from storage.db import init_schema, make_engine

    with _losable(db_url, tmp_path) as (url, lose, restore):
        engine = make_engine(url)
        init_schema(engine)
        portfolio(engine, programmes)
        monkeypatch.setattr(review_module, "PAGE", 1)
        lost: list[bool] = []

        def lose_the_database(_count: int) -> None:
            if not lost:
                lost.append(True)
                lose(engine)

        with pytest.raises(ReviewInterruptedError) as interrupted:
            run_review(engine, programmes, MOMENT, clock=lambda: NOW, review_id="review-lost",
                       progress=lose_the_database)
        message = str(interrupted.value)
        assert "review-lost" in message and "loyalty review --id review-lost" in message and "\n" not in message

        restore()
        engine.dispose()
        finished = run_review(engine, programmes, None, clock=lambda: NOW, review_id="review-lost")
        assert finished.resumed and finished.as_of == MOMENT
        assert {valid_from for *_, valid_from in moves(engine, "review-lost")} == {MOMENT}
        verified(engine)
        engine.dispose()


@contextlib.contextmanager
def _losable(db_url: str, folder: Path):
    """(url, lose(engine), restore()) for a database that a test can take away and give back."""
    if db_url.startswith("postgresql"):
        with frozen_capable(db_url) as (proxy, url):
            yield url, lambda _engine: proxy.cut(), proxy.restore
        return
    path = Path(db_url.removeprefix("sqlite:///"))
    moved: list[Path] = []

    def lose(engine) -> None:
        engine.dispose()
        moved.extend(_move(file, folder / "away") for file in folder.glob(f"{path.name}*"))
        os.mkdir(path)  # opening it now fails: the database is gone

    def restore() -> None:
        os.rmdir(path)
        for file in moved:
            file.rename(path.parent / file.name)

    yield db_url, lose, restore


def _move(file: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    return file.rename(folder / file.name)


def test_a_review_whose_processes_died_on_this_machine_is_taken_over(engine, programmes):
    import socket
    import subprocess
    from datetime import timedelta

    from service.errors import ConflictError
    from storage import leases, review_pages, reviews
    from storage.db import write_transaction

    portfolio(engine, programmes)
    gone = subprocess.Popen(["true"])  # a process of this machine that has ended
    gone.wait()
    host, place = socket.gethostname(), review_module._place()
    with write_transaction(engine) as conn:  # a review another process started, and holds the lease of
        reviews.record_start(conn, "review-old", "manual", MOMENT, "p", "1", NOW)
        review_pages.create(conn, "review-old", review_pages.bounds(["C-0", "C-1", "C-2"], 1))
    assert leases.acquire(engine, review_module.LEASE, "review-old", timedelta(minutes=5), NOW)
    for claimant in (None,  # no page claimed yet: nothing known, wait for the lease to lapse
                     f"{host}:{os.getppid()}:alive:{place}",  # a live process here
                     f"{host}:{gone.pid}:elsewhere:0123456789ab.4026531836",  # same name, another machine or container
                     f"{host}:{gone.pid}:old"):  # no place: wait for the lease to lapse
        if claimant:
            with write_transaction(engine) as conn:
                assert review_pages.claim(conn, "review-old", claimant, NOW, NOW + timedelta(minutes=2), set())
        with pytest.raises(ConflictError, match=r"another tier review is running \(review-old, lease until"):
            run_review(engine, programmes, MOMENT, clock=lambda: NOW)
        if claimant:
            with write_transaction(engine) as conn:
                review_pages.release(conn, "review-old", claimant, NOW)
    with write_transaction(engine) as conn:
        assert review_pages.claim(conn, "review-old", f"{host}:{gone.pid}:dead:{place}", NOW,
                                  NOW + timedelta(minutes=2), set())
    assert run_review(engine, programmes, MOMENT, clock=lambda: NOW).clients == len(AMOUNTS)
    assert leases.current(engine, review_module.LEASE) is None
