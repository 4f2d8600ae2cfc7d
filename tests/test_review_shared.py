"""One review shared by two processes: pages handed out through the database, the same tier rows, ledger
entries, grace periods, churn flags and report as one process; a page whose process died is taken over.

The two "processes" are two threads with their own claims (as two processes or machines would have):
cheap, and each is made to write pages before either finishes."""
from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text

import service.review as review_module
from service.review import run_review
from storage import review_pages
from storage.db import init_schema, make_engine, read_snapshot, write_transaction
from storage.models import ChurnFlag, LedgerEntry, ReviewPage, TierAssignment, TierGrace
from tests.conftest import PG_URL
from tests.test_review_policy import NOW, at, drawn, ingest, repaid, verified
from tests.test_review_resume import crash_after

CLIENTS = 240
# Upgrades and flags; grace periods open and points expire; grace periods end in downgrades, flags clear.
MOMENTS = (at("2026-06-30T00:00:00Z"), at("2027-03-31T00:00:00Z"), at("2027-05-15T00:00:00Z"))


def portfolio(engine, programmes) -> None:
    """Clients instantly upgraded by drawdowns early in 2025 (points that expire in 2027), some still
    borrowing in the window, some late payers: reviews upgrade, hold, downgrade, flag and expire."""
    rng = random.Random(7)
    events = []
    for number in range(CLIENTS):
        client = f"C-{number:04d}"
        amount = rng.choice(["2000000", "15000000", "40000000", "120000000"])
        events.append(drawn(f"a{number}", client, f"2025-0{rng.randint(2, 4)}-1{rng.randint(0, 9)}T10:00:00Z", amount))
        if rng.random() < 0.5:
            events.append(drawn(f"b{number}", client, "2026-02-10T10:00:00Z", rng.choice(["12000000", "35000000"])))
        for late in range(rng.choice([0, 0, 3])):
            events.append(repaid(f"r{number}-{late}", client, f"2026-0{late + 3}-05T10:00:00Z", days_late=20))
    ingest(engine, programmes, *sorted(events, key=lambda e: e["occurred_at"]))


@pytest.fixture
def twin_urls(db_url, tmp_path):
    """Two fresh databases of the same kind."""
    if db_url.startswith("sqlite"):
        yield db_url, f"sqlite:///{tmp_path / 'twin.db'}"
        return
    schema = db_url.rsplit("%3D", 1)[1] + "_twin"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield db_url, f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def outcome(engine) -> dict:
    """What the reviews wrote, without ids and write times (which depend on who wrote first)."""
    tiers, grace, flags, entries = (TierAssignment.__table__, TierGrace.__table__, ChurnFlag.__table__,
                                    LedgerEntry.__table__)
    queries = {
        "tiers": select(tiers.c.client_id, tiers.c.tier, tiers.c.previous_tier, tiers.c.valid_from, tiers.c.reason,
                        tiers.c.details, tiers.c.review_id),
        "grace": select(*(column for column in grace.c if column.name != "id")),
        "flags": select(*(column for column in flags.c if column.name != "id")),
        "entries": select(entries.c.client_id, entries.c.kind, entries.c.reason, entries.c.points, entries.c.bps,
                          entries.c.rule_id, entries.c.valid_from, entries.c.valid_to),
    }
    with read_snapshot(engine) as conn:
        return {name: sorted(map(tuple, conn.execute(query)), key=repr) for name, query in queries.items()}


def shared(engine, programmes, as_of, review_id: str) -> list[dict]:
    """The review run by two threads at once, each made to write a page before either goes on."""
    both_wrote = threading.Barrier(2, timeout=60)
    reports: list[dict] = []

    def one_process() -> None:
        written = []

        def progress(count: int) -> None:
            written.append(count)
            if len(written) == 1:
                both_wrote.wait()

        report = run_review(engine, programmes, as_of, clock=lambda: NOW, review_id=review_id, share=True,
                            progress=progress)
        reports.append(report.as_dict())

    threads = [threading.Thread(target=one_process) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(reports) == 2
    pages = ReviewPage.__table__
    with read_snapshot(engine) as conn:
        claimants = set(conn.execute(select(pages.c.claimed_by).where(pages.c.review_id == review_id)).scalars())
    assert len(claimants) == 2  # both wrote pages
    return reports


def test_a_review_shared_by_two_processes_equals_one_process(twin_urls, programmes, monkeypatch):
    monkeypatch.setattr(review_module, "PAGE", 20)
    alone, together = (make_engine(url) for url in twin_urls)
    for engine in (alone, together):
        init_schema(engine)
        portfolio(engine, programmes)
    reports = []
    for number, as_of in enumerate(MOMENTS):
        review_id = f"review-{number}"
        one = run_review(alone, programmes, as_of, clock=lambda: NOW, review_id=review_id).as_dict()
        two = shared(together, programmes, as_of, review_id)
        # Each process reports the whole review (the one that joined it finds it started: resumed).
        assert sorted(report["resumed"] for report in two) == [False, True]
        assert [{**report, "resumed": False} for report in two] == [one, one]
        assert outcome(together) == outcome(alone)
        reports.append(one)
    for part in ("upgrades", "downgrades", "held", "skipped"):  # the reviews did every kind of thing
        assert any(report[part] for report in reports) == (part != "skipped"), part
    assert reports[0]["churn"]["flagged"] and reports[2]["churn"]["cleared"]
    assert reports[1]["points_expired"]["points"] > 0
    verified(together)
    for engine in (alone, together):
        engine.dispose()


def test_a_page_whose_process_died_is_taken_over(engine, programmes, monkeypatch):
    import os
    import socket
    import subprocess

    monkeypatch.setattr(review_module, "PAGE", 1)
    ingest(engine, programmes, *(drawn(f"d{i}", f"C-{i}", "2025-02-01T00:00:00Z", "20000000") for i in range(4)))
    as_of = MOMENTS[0]
    uninterrupted = run_review(engine, programmes, as_of, clock=lambda: NOW, dry_run=True).as_dict()
    give_up = review_module._give_up
    monkeypatch.setattr(review_module, "_give_up", lambda *args: None)  # dies: gives nothing up
    with pytest.raises(RuntimeError):
        run_review(engine, programmes, as_of, clock=lambda: NOW, review_id="review-died", progress=crash_after(1))
    monkeypatch.setattr(review_module, "_give_up", give_up)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = f"{socket.gethostname()}:{gone.pid}:dead:{review_module._place()}"  # a process here that ended
    elsewhere = f"far-away:{os.getpid()}:alive:0123456789ab.4026531836"  # its claim ran out a second ago
    with write_transaction(engine) as conn:
        for holder, until in ((dead, NOW + timedelta(minutes=1)), (elsewhere, NOW - timedelta(seconds=1))):
            assert review_pages.claim(conn, "review-died", holder, NOW - timedelta(minutes=5), until, set())

    finished = run_review(engine, programmes, None, clock=lambda: NOW, review_id="review-died", share=True)
    assert finished.resumed and finished.clients == 4
    assert {**finished.as_dict(), "resumed": False, "review_id": None, "dry_run": True, "points_expired": None} == \
        {**uninterrupted, "points_expired": None}
    verified(engine)
