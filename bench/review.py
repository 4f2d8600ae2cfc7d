"""The periodic tier review of a large portfolio: wall time and peak memory, on SQLite and PostgreSQL,
beside the metric read it needs, and one review shared by two processes on PostgreSQL.

    python bench/review.py [--clients 100000] [--runs 3] [--postgres [URL]] [--processes 2] [--reseed] [--profile]
    python bench/review.py --quick          # 10,000 clients, one run (and `ledger verify` on a new seed)

Seeds a portfolio straight into the tables, from a fixed random seed: per client a `client` row, a
`client.onboarded` event (most 13-60 months before the review, a few only 2-5 months), 12 months of
activity ending at the review moment AS_OF (drawdowns, repayments, some late, monthly deposit
reports, a few survey answers and lender events; about 27 events per client) and, for part of the
portfolio, loans in the 12 months before that window (the "loan volume change" metric reads them).
Clients are drawn from profiles (dormant, small, mid-size, large and major borrowers, new clients,
with late payers among them) whose loan volumes straddle the tier thresholds. Each client starts in
one tier (a `tier_assignment` from its first event, often not the tier its activity earns), holds
that tier's standing grants, and has earned `drawdown-points` for each drawdown made while the
programme was in force; grants and earnings are written with `storage.ledger.append`, so
entitlements, balances and points lots are the product's own. No points are old enough to expire
(the programme began 2025-01-01, less than 24 months before AS_OF). The outcome of the previous
quarterly review is seeded too, where this schema has its tables: grace periods it opened (over
before AS_OF, so the clients still short of their tier are moved down now: without them a first
review under a grace policy moves nobody down) and churn flags it raised.

The seed is kept for later runs, and upgraded to this release's schema when it is behind (`loyalty
db upgrade`, as a bank's database would be): /tmp/loyalty-bench-review-<clients>.db, copied to a work
file for each run (the review writes); on PostgreSQL the database loyalty_bench_review_seed_<clients>
on the server of --postgres URL (default $LOYALTY_BENCH_PG_URL, else the local server's `test`
database, which is only used to create the bench's own), used as the TEMPLATE of a fresh
loyalty_bench_review_run dropped afterwards (the seed is VACUUM ANALYZEd once, as autovacuum would
have done to a live database).

Each measurement runs in its own child process (this script with --child), so its peak RSS (VmHWM)
is its own, not the seeding's. Measured on each database, --runs times, in this order:

- metrics: `storage.metrics.client_metrics` for every client in one read transaction, the floor
  under any review (the ratio to it says how much a review adds);
- paged: the same metrics read as a review reads them (`storage.metrics.page_metrics`), a page of
  clients at a time by client-id range, each page in its own snapshot (what the review pays for its metrics; the rest is what it adds);
- dry run: `run_review(..., dry_run=True)`, every decision and nothing written;
- review: `run_review(...)`, writing the moves (tier rows, revocations, grants), grace periods,
  churn flags and expiry; then a digest of everything it wrote (tier rows, grace periods, flags,
  ledger entries), on the same work copy as the two before;
- 2 procs (PostgreSQL; and 3 procs... up to --processes N): the same review on a fresh copy, run by
  that many child processes at once sharing it (`run_review(share=True)`, as `loyalty review --id R`
  started twice): its time from the first one's start to the last one's end, the speed-up over one
  process, and whether every report and the digest are those of the one-process review.

The review's clock is fixed just after AS_OF. `others` is the cores every other process used during
a measurement (PostgreSQL's included): this machine is shared, and on SQLite more than a few tenths
means the figures are suspect. Medians over the runs are compared with the goals of issue 14 (a
review < 20 s on each database and at most 2x the metric read; two processes >= 1.5x one), each
marked met or NOT met; the peak RSS is reported; timings are printed, never asserted. --profile adds
one more review, on a fresh copy, under cProfile.
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import multiprocessing
import os
import pstats
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import verdict  # noqa: E402

from sqlalchemy import Engine, create_engine, insert, inspect, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import DBAPIError  # noqa: E402
from sqlalchemy.schema import CreateIndex, DropIndex  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

from engine.events import validate_event  # noqa: E402
from engine.loader import load_programmes  # noqa: E402
from engine.programme import CompiledProgramme  # noqa: E402
from rewards.caps import months_before  # noqa: E402
from rewards.kinds import Reason  # noqa: E402
from rewards.points import apply_multiplier  # noqa: E402
from rewards.tiers import tier_grants  # noqa: E402
from service.review import PAGE as REVIEW_PAGE  # noqa: E402
from service.review import run_review  # noqa: E402
from storage import ledger, review_pages, reviews  # noqa: E402
from storage.db import init_schema, make_engine, read_snapshot, write_transaction  # noqa: E402
from storage.ledger import Provenance  # noqa: E402
from storage import metric_totals  # noqa: E402
from storage.metrics import client_metrics, page_metrics  # noqa: E402
from storage.models import (  # noqa: E402
    Client,
    LedgerEntry,
    ProcessedEvent,
    SchemaInfo,
    TierAssignment,
)

PG_URL = os.environ.get("LOYALTY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_SEED_DB = "loyalty_bench_review_seed_{clients}"
PG_RUN_DB = "loyalty_bench_review_run"
SQLITE_SEED = "/tmp/loyalty-bench-review-{clients}.db"
SQLITE_RUN = "/tmp/loyalty-bench-review-{clients}-run.db"
CLIENT, TIER, EVENT, META = Client.__table__, TierAssignment.__table__, ProcessedEvent.__table__, SchemaInfo.__table__
# Tables of the review's newer state; absent from older schemas, so looked up by name.
GRACE, FLAG, REVIEW = (SQLModel.metadata.tables.get(name) for name in ("tier_grace", "churn_flag", "tier_review"))
STAGED_EVENTS = "bench_review_staged_event"  # PostgreSQL: events waiting to be inserted in time order
SEED_MARKER = "bench_review_seed"
GENERATOR = "6"  # bump when the generated portfolio changes, so old seeds are not reused
AS_OF = datetime(2026, 10, 1, tzinfo=UTC)
CLOCK = AS_OF + timedelta(hours=6)  # the review's "now": the morning after the quarter closed
WINDOW_START = months_before(AS_OF, 12)
# The previous quarterly review, whose outcome is seeded: grace periods it opened (ended before AS_OF,
# so clients still short of their tier are moved down now) and churn flags it raised.
PREVIOUS_REVIEW_AT = months_before(AS_OF, 3)
PREVIOUS_REVIEW = f"review-{PREVIOUS_REVIEW_AT:%Y%m%dT%H%M%SZ}-seeded"
GRACE_DAYS = 30
PREVIOUS_START = months_before(AS_OF, 24)
CHUNK = 2000  # clients per seeding transaction (about 60,000 event rows)
GOAL_SECONDS = 20.0
GOAL_RATIO = 2.0  # a review at most twice the metric read it needs
GOAL_SPEEDUP = 1.5  # two processes sharing a review, against one
REVIEW_ID = "bench-review"  # one id for every review measured, so what they write compares
RESULT_PREFIX = "BENCH-RESULT "
HEADER = (f"{'database':<11}{'run':<10}{'clients':>9}{'up':>8}{'down':>8}{'same':>8}{'held':>7}{'churn':>7}"
          f"{'expired':>9}{'skip':>6}{'seconds':>9}{'x metrics':>10}{'RSS0':>7}{'peak':>7}{'CPU s':>8}{'others':>7}")
LEGEND = ("up, down: moves written (dry run: decided); same: clients left in their tier; held: of those, kept by the "
          "downgrade policy;\nchurn: churn flags raised or renewed; expired: points expired; skip: clients skipped "
          "with a reason; x metrics: seconds over the metric\nread's of the same run; RSS0, peak: the child's RSS in "
          "MiB once it had loaded the rules, and its peak (VmHWM); CPU s: the child's\nCPU in the measured call "
          "(n procs: all of them); others: cores every other process used meanwhile (PostgreSQL's included).")

# (share of clients, loan volume drawn in the window in CNY, products drawn with weights, tier it earns).
# The volumes straddle the thresholds (silver 10M, gold 30M, diamond 100M CNY) so reviews move clients.
PROFILES = {
    "dormant": (0.10, (0, 0), (0.5, 0.3, 0.2, 0.0), "standard"),  # loans only before the window
    "small": (0.39, (1e6, 9.5e6), (0.6, 0.1, 0.3, 0.0), "standard"),
    "mid": (0.25, (10e6, 29e6), (0.5, 0.2, 0.25, 0.05), "silver"),
    "large": (0.15, (30e6, 95e6), (0.4, 0.25, 0.2, 0.15), "gold"),
    "major": (0.07, (100e6, 400e6), (0.35, 0.25, 0.15, 0.25), "diamond"),
    "new": (0.04, (2e6, 40e6), (0.6, 0.1, 0.3, 0.0), "standard"),  # onboarded 2-5 months before AS_OF
}
PRODUCTS = ("working_capital", "term_loan", "trade_finance", "project_finance")
TERMS = {"working_capital": (6, 12), "term_loan": (24, 60), "trade_finance": (3, 6), "project_finance": (60, 120)}
TIER_SPREAD = {"standard": 0.4, "silver": 0.3, "gold": 0.2, "diamond": 0.1}  # a starting tier not earned
EARNED_START = 0.55  # share of established clients that start in the tier their profile earns
IN_GRACE = 0.5  # share of clients above the tier their profile earns that the previous review gave a grace period
LATE_PAYERS = 0.12  # clients who pay a quarter to a half of their instalments late
SEGMENTS = {"strategic": 0.25, "transactional": 0.45, "partnership": 0.2, "special_assistance": 0.1}
INDUSTRIES = ("manufacturing", "infrastructure", "logistics", "retail", "energy", "agriculture", "technology")
EVENT_KINDS = ("client_day", "forum", "salon", "training")


# --- the portfolio -------------------------------------------------------------------------------------

EVENT_COLUMNS = ("event_id", "client_id", "type", "occurred_at", "content_hash", "payload", "amount_minor",
                 "number", "label", "programme_id", "programme_version", "processed_at")
# The deposit months of the window, oldest first: (label, reported at the month's last evening).
DEPOSIT_MONTHS = [(f"{months_before(AS_OF, back):%Y-%m}", months_before(AS_OF, back - 1) - timedelta(hours=4))
                  for back in range(12, 0, -1)]
_worker_programme: CompiledProgramme | None = None  # loaded once per generating process


def money(minor: int) -> str:
    """An amount in fen as the canonical decimal text ingest stores (no trailing zeros: 100.5, 3000)."""
    yuan, fen = divmod(minor, 100)
    return str(yuan) if fen == 0 else f"{yuan}.{fen:02d}".rstrip("0")


def sqlite_time(moment: datetime) -> str:
    """A UTC timestamp as the product's UTCDateTime column stores it in SQLite (naive UTC text)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def pg_time(moment: datetime) -> str:
    """A timestamp as COPY reads it into a timestamptz column."""
    return moment.isoformat()


class ClientSeed:
    """One client's rows: profile, tier assignment, events (processed_event rows), grants and earnings.

    Written for speed (generation is most of the seeding's CPU): rng.random() arithmetic rather than
    randrange, and payloads built as text, checked against the product's canonical JSON per chunk.
    """

    def __init__(self, rng: random.Random, programme: CompiledProgramme, number: int, stamp) -> None:  # noqa: ANN001
        self.rng, self.programme, self.stamp = rng, programme, stamp
        self.client_id = f"C-{number:06d}"
        self.events: list[tuple] = []  # processed_event rows, in EVENT_COLUMNS order, timestamps as `stamp` gives
        self.drawn: list[tuple[str, datetime, int]] = []  # (event id, time, amount in fen) of every drawdown
        self.profile = rng.choices(list(PROFILES), weights=[p[0] for p in PROFILES.values()])[0]
        _share, (low, high), self.product_weights, earned_tier = PROFILES[self.profile]
        days = (60, 150) if self.profile == "new" else (13 * 30 + 5, 60 * 30)
        self.onboarded = AS_OF - timedelta(days=days[0] + int(rng.random() * (days[1] - days[0])),
                                           hours=int(rng.random() * 24))
        self.late_share = rng.uniform(0.25, 0.5) if rng.random() < LATE_PAYERS else 0.01
        self.volume = rng.uniform(low, high)
        self.loans: list[tuple[str, int, datetime]] = []  # (loan id, amount in fen, drawn at)
        # New clients start in the lowest tier, as ingest places them; others often not where they belong.
        if self.profile == "new":
            self.tier = programme.lowest_tier.id
        elif self.profile != "dormant" and rng.random() < EARNED_START:
            self.tier = earned_tier
        else:
            self.tier = rng.choices(list(TIER_SPREAD), weights=list(TIER_SPREAD.values()))[0]
        self.segment = rng.choices(list(SEGMENTS), weights=list(SEGMENTS.values()))[0]
        self.industry = INDUSTRIES[int(rng.random() * len(INDUSTRIES))]

    def add(self, type_: str, at: datetime, data: str, amount_minor: int | None = None,
            number: int | None = None, label: str | None = None) -> str:
        """Record an event as ingest would have (canonical JSON payload, `data` already canonical); returns its id."""
        event_id = f"{self.client_id}-{len(self.events):03d}"
        payload = (f'{{"client_id":"{self.client_id}","data":{data},"id":"{event_id}",'
                   f'"occurred_at":"{at.isoformat()}","type":"{type_}"}}')
        self.events.append((event_id, self.client_id, type_, self.stamp(at), hashlib.sha256(payload.encode()).hexdigest(),
                            payload, amount_minor, number, label, self.programme.id, self.programme.version,
                            self.stamp(at + timedelta(minutes=5))))
        return event_id

    def moment(self, start: datetime, end: datetime) -> datetime:
        """A whole second in (start, end]."""
        return start + timedelta(seconds=1 + int(self.rng.random() * max(1.0, (end - start).total_seconds() - 1)))

    def generate(self) -> None:
        """Every event of the client."""
        rng = self.rng
        self.add("client.onboarded", self.onboarded, f'{{"industry":"{self.industry}","name":"Enterprise '
                                                     f'{self.client_id[2:]}","segment":"{self.segment}"}}')
        # Loans in the year before the window: every dormant client (its last loan activity), 40% of others.
        previous_from = max(self.onboarded, PREVIOUS_START)
        if previous_from < WINDOW_START and (self.profile == "dormant" or rng.random() < 0.4):
            volume = rng.uniform(3e6, 60e6) if self.profile == "dormant" else self.volume * rng.uniform(0.4, 1.8)
            self.drawdowns(3 + int(rng.random() * 4), volume, previous_from, WINDOW_START - timedelta(days=60))
            self.repayments(2 + int(rng.random() * 3), previous_from, WINDOW_START - timedelta(days=30))
        window_from = max(self.onboarded, WINDOW_START)
        if self.profile != "dormant":
            new = self.profile == "new"
            self.drawdowns((2 + int(rng.random() * 3)) if new else (4 + int(rng.random() * 9)), self.volume,
                           window_from, AS_OF - timedelta(days=3))
            self.repayments((1 + int(rng.random() * 4)) if new else (6 + int(rng.random() * 7)),
                            window_from, AS_OF - timedelta(hours=1))
        self.deposits()
        draw = rng.random()
        for _ in range(0 if draw < 0.35 else 1 if draw < 0.8 else 2):  # surveys: detractors among late payers more
            nps = int(rng.random() * 7) if rng.random() < 0.1 + self.late_share / 2 else 7 + int(rng.random() * 4)
            self.add("survey.answered", self.moment(window_from, AS_OF), f'{{"nps":{nps}}}', number=nps)
        if rng.random() < 0.2:
            kind = EVENT_KINDS[int(rng.random() * len(EVENT_KINDS))]
            self.add("event.attended", self.moment(window_from, AS_OF), f'{{"kind":"{kind}"}}', label=kind)

    def drawdowns(self, count: int, volume: float, start: datetime, end: datetime) -> None:
        """`count` loan.drawn events adding up to about `volume` CNY, at random moments in (start, end]."""
        rng = self.rng
        weights = [0.3 + 1.4 * rng.random() for _ in range(count)]
        total = sum(weights)
        end = max(end, start + timedelta(days=1))
        for weight, product in zip(weights, rng.choices(PRODUCTS, weights=self.product_weights, k=count)):
            at = self.moment(start, end)
            amount = max(100_000, int(round(volume * weight / total, -3))) * 100  # whole thousands of CNY, in fen
            low, high = TERMS[product]
            loan_id = f"L-{self.client_id[2:]}-{len(self.loans):02d}"
            self.loans.append((loan_id, amount, at))
            event_id = self.add("loan.drawn", at, f'{{"amount":"{money(amount)}","currency":"CNY","loan_id":"{loan_id}",'
                                                  f'"product":"{product}","term_months":{low + int(rng.random() * (high - low + 1))}}}',
                                amount_minor=amount, label=product)
            self.drawn.append((event_id, at, amount))

    def repayments(self, count: int, start: datetime, end: datetime) -> None:
        """`count` instalments on the client's loans, due in (start, end]; some late."""
        rng = self.rng
        for _ in range(count if self.loans else 0):
            loan_id, drawn, drawn_at = self.loans[int(rng.random() * len(self.loans))]
            due = self.moment(max(start, drawn_at), end).replace(hour=0, minute=0, second=0)
            late = 1 + int(rng.random() * 90) if rng.random() < self.late_share else 0
            paid = min(due + timedelta(days=late, hours=10), end)  # paid before the review looks
            amount = max(100, int(drawn / (6 + int(rng.random() * 19))) + int(rng.random() * 100))
            self.add("repayment.made", paid, f'{{"amount":"{money(amount)}","days_late":{late},'
                                             f'"due_date":"{due.date().isoformat()}","loan_id":"{loan_id}"}}',
                     amount_minor=amount, number=late)

    def deposits(self) -> None:
        """Monthly deposit reports for the last 0-12 months of the window (none before onboarding)."""
        rng = self.rng
        draw = rng.random()
        months = 0 if draw < 0.3 else 1 + int(rng.random() * 5) if draw < 0.4 else 6 + int(rng.random() * 7) \
            if draw < 0.6 else 12
        level = rng.uniform(2e6, 30e6) if rng.random() < 0.12 else rng.uniform(1e5, 3e6)
        for month, reported in DEPOSIT_MONTHS[len(DEPOSIT_MONTHS) - months:]:
            if reported > self.onboarded:
                balance = int(level * (0.8 + 0.4 * rng.random())) * 100
                self.add("deposit.reported", reported, f'{{"average_balance":"{money(balance)}","month":"{month}"}}',
                         amount_minor=balance, label=month)

    def previous_review(self) -> tuple[dict | None, dict | None]:
        """(grace period, churn flag) the previous review left open for this client, if any."""
        rng, programme = self.rng, self.programme
        rank = programme.tier_ids.index
        earned = PROFILES[self.profile][3]
        grace = None
        if GRACE is not None and rank(self.tier) > rank(earned) and rng.random() < IN_GRACE:
            grace = {"client_id": self.client_id, "tier": self.tier, "started_at": PREVIOUS_REVIEW_AT,
                     "until": PREVIOUS_REVIEW_AT + timedelta(days=GRACE_DAYS), "review_id": PREVIOUS_REVIEW,
                     "ended_at": None, "ended_by": None, "outcome": None}
        signal = "dormant" if self.profile == "dormant" else "late-payer" if self.late_share > 0.1 else "volume-drop"
        flag = None
        if FLAG is not None and rank(self.tier) >= 1 and rng.random() < (0.04 if signal == "volume-drop" else 0.7):
            signals = [{"id": signal, "description": "", "metric": "seeded", "operator": "", "threshold": "",
                        "value": ""}]
            flag = {"client_id": self.client_id, "tier": self.tier, "raised_at": PREVIOUS_REVIEW_AT,
                    "raised_by": PREVIOUS_REVIEW, "signals": json.dumps(signals), "value": int(self.volume * 100),
                    "last_seen_at": PREVIOUS_REVIEW_AT, "last_review_id": PREVIOUS_REVIEW, "cleared_at": None,
                    "cleared_by": None}
        return grace, flag

    def rows(self) -> tuple[dict, dict, list[dict], list[dict]]:
        """(client row, tier row, grant entries, earn entries); the balance comes from the earn entries."""
        programme = self.programme
        source = Provenance(programme.id, programme.version, None)
        tier = {"client_id": self.client_id, "tier": self.tier, "previous_tier": None, "valid_from": self.onboarded,
                "reason": "seeded", "details": None, "review_id": None, "programme_id": programme.id,
                "programme_version": programme.version, "created_at": self.onboarded}
        grants = [ledger.grant_entry(self.client_id, grant, source, self.onboarded)
                  for grant in tier_grants(programme.tier(self.tier), self.onboarded)]
        multiplier = programme.tier(self.tier).benefits.points_multiplier
        earns = []
        for event_id, at, amount in self.drawn:  # drawdown-points for drawdowns made while the programme was in force
            if at < programme.effective_from:
                continue
            base = amount // 100 // 10_000
            points = apply_multiplier(base, multiplier)
            detail = {"base_points": base, "multiplier": str(multiplier)} if multiplier != 1 else None
            earns.append(ledger.points_entry(self.client_id, "drawdown-points", points, Reason.EARN, at,
                                             Provenance(programme.id, programme.version, event_id),
                                             at + timedelta(minutes=5), detail))
        client = {"client_id": self.client_id, "name": f"Enterprise {self.client_id[2:]}", "segment": self.segment,
                  "industry": self.industry, "onboarded_at": self.onboarded, "first_seen_at": self.onboarded,
                  "points_balance": 0, "created_at": self.onboarded}  # ledger.append adds the earnings
        return client, tier, grants, earns


def generate_chunk(seed: int, first: int, count: int, dialect: str) -> dict:
    """Clients first..first+count-1 with all their rows, from their own random stream (so chunks can be
    made in any process, in any order, and always come out the same)."""
    global _worker_programme
    began = time.perf_counter()
    if _worker_programme is None:
        _worker_programme = load_programmes(ROOT / "rules").current
    programme = _worker_programme
    rng = random.Random(f"{seed}:{first}")
    stamp = sqlite_time if dialect == "sqlite" else pg_time
    chunk: dict = {"clients": [], "tiers": [], "events": [], "grants": [], "earns": [], "graces": [], "flags": [],
                   "profiles": Counter(), "tier_mix": Counter()}
    for number in range(first, first + count):
        client = ClientSeed(rng, programme, number, stamp)
        client.generate()
        if number == first:
            check_payloads(programme, client.events)
        client_row, tier_row, grants, earns = client.rows()
        chunk["clients"].append(client_row)
        chunk["tiers"].append(tier_row)
        chunk["events"].extend(client.events)
        chunk["grants"].extend(grants)
        chunk["earns"].extend(earns)
        grace, flag = client.previous_review()
        chunk["graces"] += [grace] if grace else []
        chunk["flags"] += [flag] if flag else []
        chunk["profiles"][client.profile] += 1
        chunk["tier_mix"][client.tier] += 1
    chunk["seconds"] = time.perf_counter() - began
    return chunk


def check_payloads(programme: CompiledProgramme, events: list[tuple]) -> None:
    """Raise unless each payload is exactly the canonical JSON ingest would store for that event."""
    for row in events:
        payload = row[EVENT_COLUMNS.index("payload")]
        canonical = validate_event(json.loads(payload), programme.model.event_types, programme.currency).canonical_json()
        if canonical != payload:
            raise AssertionError(f"generated payload differs from ingest's canonical form:\n{payload}\n{canonical}")


def seed_portfolio(engine: Engine, programme: CompiledProgramme, clients: int, seed: int) -> dict:
    """Insert the portfolio in transactions of CHUNK clients; returns what was written (counts, mixes, times).

    Another process generates the next chunks while this one writes (two cores: about twice as fast).
    """
    dialect = engine.dialect.name
    if dialect == "sqlite":  # the timestamps are written as text: check it is the product's format
        sample = datetime(2026, 3, 1, 10, 0, 0, 5, tzinfo=UTC)
        stored = EVENT.c.occurred_at.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)(sample)
        if stored != sqlite_time(sample):
            raise AssertionError(f"SQLite stores timestamps as {stored!r}, not {sqlite_time(sample)!r}")
    totals = {"events": 0, "grants": 0, "earns": 0, "graces": 0, "flags": 0, "profiles": Counter(),
              "tiers": Counter(), "generating_s": 0.0, "writing_s": 0.0}
    began = time.perf_counter()
    starts = iter(range(0, clients, CHUNK))
    engine.dispose()  # no open connection may be carried into the forked generator
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: deque[Future] = deque()

        def submit_next() -> None:
            first = next(starts, None)
            if first is not None:
                pending.append(pool.submit(generate_chunk, seed, first, min(CHUNK, clients - first), dialect))

        submit_next()
        submit_next()  # two in flight: one being generated while the other is written, memory bounded
        events = EventStage(engine)  # after the fork: the generator inherits no connection of it
        while pending:
            chunk = pending.popleft().result()
            submit_next()
            writing = time.perf_counter()
            write_chunk(engine, chunk, events)
            totals["writing_s"] += time.perf_counter() - writing
            totals["generating_s"] += chunk["seconds"]
            for key in ("events", "grants", "earns", "graces", "flags"):
                totals[key] += len(chunk[key])
            totals["profiles"].update(chunk["profiles"])
            totals["tiers"].update(chunk["tier_mix"])
            done = sum(totals["profiles"].values())
            if done == clients or (done // CHUNK) % max(1, clients // CHUNK // 10) == 0:
                print(f"  seeding: {done:,}/{clients:,} clients, {totals['events']:,} events, "
                      f"{totals['grants'] + totals['earns']:,} ledger entries, {time.perf_counter() - began:.0f} s "
                      f"({totals['generating_s']:.0f} s generating in another process, {totals['writing_s']:.0f} s "
                      f"writing)", flush=True)
    ordering = time.perf_counter()
    events.finish()
    totals["ordering_s"] = time.perf_counter() - ordering
    print(f"  events into processed_event in time order: {totals['ordering_s']:.0f} s", flush=True)
    folding = time.perf_counter()
    with write_transaction(engine) as conn:  # the monthly totals ingest would have kept (as revision 0004 fills them)
        metric_totals.rebuild(conn)
    print(f"  monthly metric totals from the events: {time.perf_counter() - folding:.0f} s", flush=True)
    if REVIEW is not None:  # the previous review's own record, as it would have finished
        row = {"id": PREVIOUS_REVIEW, "trigger": "manual", "as_of": PREVIOUS_REVIEW_AT, "programme_id": programme.id,
               "programme_version": programme.version, "started_at": PREVIOUS_REVIEW_AT,
               "finished_at": PREVIOUS_REVIEW_AT + timedelta(minutes=1), "clients": clients, "upgrades": 0,
               "downgrades": 0, "points_expired": 0, "churn_flagged": totals["flags"]}
        with write_transaction(engine) as conn:
            conn.execute(insert(REVIEW), [{key: value for key, value in row.items() if key in REVIEW.c}])
    return totals


def write_chunk(engine: Engine, chunk: dict, events: EventStage) -> None:
    """One transaction: clients, tier rows, staged events, then grants and earnings through ledger.append."""
    with write_transaction(engine) as conn:
        if conn.dialect.name == "sqlite":
            # Seeding only (this connection): a bigger page cache keeps index inserts from re-reading pages.
            conn.exec_driver_sql("PRAGMA cache_size = -1000000")
        conn.execute(insert(CLIENT), chunk["clients"])
        conn.execute(insert(TIER), chunk["tiers"])
        events.add(conn, chunk["events"])
        # Grants and earnings in two calls: ledger.append inserts each run of grants (ids returned)
        # and of other entries separately, so interleaving them per client would mean thousands of runs.
        ledger.append(conn, chunk["grants"])
        ledger.append(conn, chunk["earns"])  # the entries, the lots and the balances, as the product writes them
        for table, rows in ((GRACE, chunk["graces"]), (FLAG, chunk["flags"])):
            if rows:  # only the columns this version of the table has
                conn.execute(insert(table), [{key: value for key, value in row.items() if key in table.c} for row in rows])


class EventStage:
    """Events wait here, in the order they are generated (client by client), until all are made; then
    they go into processed_event in time order, as ingest would have written them over the months.

    The order matters: a table holding each client's events side by side flatters the review's
    per-client reads (on SQLite the paged dry run took about 40% less CPU than on the same events in
    time order). SQLite stages in a separate file, PostgreSQL in an unlogged table.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.columns = ", ".join(EVENT_COLUMNS)
        if engine.dialect.name == "sqlite":
            self.path = f"{engine.url.database}-events.staging"
            Path(self.path).unlink(missing_ok=True)
            self.staging = sqlite3.connect(self.path)
            self.staging.execute("PRAGMA journal_mode = OFF")  # a scratch file: a crash means seeding again
            self.staging.execute(f"CREATE TABLE staged ({self.columns})")
        else:
            with write_transaction(engine) as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {STAGED_EVENTS}")
                conn.exec_driver_sql(f"CREATE UNLOGGED TABLE {STAGED_EVENTS} (LIKE {EVENT.name})")

    def add(self, conn, rows: list[tuple]) -> None:  # noqa: ANN001 - a SQLAlchemy connection
        """Stage a chunk's events; on PostgreSQL in `conn`'s transaction, by COPY."""
        if self.engine.dialect.name == "sqlite":
            self.staging.executemany(f"INSERT INTO staged VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})", rows)
            self.staging.commit()
            return
        with conn.connection.driver_connection.cursor() as cursor, \
                cursor.copy(f"COPY {STAGED_EVENTS} ({self.columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def finish(self) -> None:
        """Insert every staged event into processed_event ordered by time, in one statement; its secondary
        indexes are dropped meanwhile and built afterwards from the product's definitions (one sort each,
        much quicker than millions of inserts into them)."""
        dialect = self.engine.dialect
        drops = [str(DropIndex(index).compile(dialect=dialect)) for index in EVENT.indexes]
        creates = [str(CreateIndex(index).compile(dialect=dialect)) for index in EVENT.indexes]
        staged = "staging.staged" if dialect.name == "sqlite" else STAGED_EVENTS
        move = (f"INSERT INTO {EVENT.name} ({self.columns}) SELECT {self.columns} FROM {staged} "
                "ORDER BY occurred_at, event_id")
        if dialect.name == "sqlite":
            self.staging.close()
            raw = self.engine.raw_connection()
            try:
                db = raw.driver_connection  # in autocommit mode (see storage.db): ATTACH refuses a transaction
                db.execute("PRAGMA cache_size = -1000000")
                db.execute("ATTACH DATABASE ? AS staging", (self.path,))
                db.execute("BEGIN IMMEDIATE")
                for statement in [*drops, move, *creates]:
                    db.execute(statement)
                db.execute("COMMIT")
                db.execute("DETACH DATABASE staging")
            finally:
                raw.close()
            Path(self.path).unlink()
            return
        with write_transaction(self.engine) as conn:
            for statement in [*drops, move, f"DROP TABLE {STAGED_EVENTS}", *creates]:
                conn.exec_driver_sql(statement)


# --- the seeded databases ------------------------------------------------------------------------------

def seed_wanted(programme: CompiledProgramme, clients: int, seed: int) -> str:
    """What a seed of this run must have been made with, as stored in loyalty_meta (its schema is upgraded)."""
    return f"{clients} clients, seed {seed}, generator {GENERATOR}, programme {programme.id} {programme.version}"


def reusable_seed(engine: Engine, programme: CompiledProgramme, args: argparse.Namespace) -> dict | None:
    """The marker of the seed in this database if it is the one wanted (then upgraded to this release's
    schema), else None."""
    if args.reseed or not inspect(engine).has_table(META.name):
        return None
    with engine.connect() as conn:
        value = conn.execute(select(META.c.value).where(META.c.key == SEED_MARKER)).scalar()
    info = json.loads(value) if value else None
    # Seeds made before the bench upgraded them also named their schema.
    if info is None or info["wanted"].split(", schema ")[0] != seed_wanted(programme, args.clients, args.seed):
        return None
    upgrade = init_schema(engine)
    if upgrade.from_revision != upgrade.to_revision:
        print(f"  seed upgraded from schema {upgrade.from_revision} to {upgrade.to_revision} in {upgrade.seconds:.1f} s")
    return info


def seed_into(engine: Engine, programme: CompiledProgramme, clients: int, seed: int, verify: bool) -> dict:
    """Create the schema and seed the portfolio; returns the marker written (with the seeding time)."""
    init_schema(engine)
    began = time.perf_counter()
    totals = seed_portfolio(engine, programme, clients, seed)
    info = {"wanted": seed_wanted(programme, clients, seed), "seconds": round(time.perf_counter() - began, 1),
            **totals}
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    info["seconds_total"] = round(time.perf_counter() - began, 1)
    if verify:
        verify_began = time.perf_counter()
        with read_snapshot(engine) as conn:
            if engine.dialect.name == "postgresql":
                # With the default work_mem (4MB) PostgreSQL cannot hash verify's `event_id NOT IN (SELECT
                # event_id FROM processed_event)` and scans every event for every entry: hours at 10,000
                # clients (a product issue). Room for the hash here, and a limit in case it is not enough.
                conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
                conn.exec_driver_sql("SET LOCAL statement_timeout = '300s'")
            try:
                problems = ledger.verify(conn)
            except DBAPIError as exc:  # the time limit above: say so, keep the seed
                problems = [f"verify did not finish: {str(exc.orig).splitlines()[0]}"]
        info["verify"] = {"problems": len(problems), "first": problems[:5],
                          "seconds": round(time.perf_counter() - verify_began, 1)}
    with write_transaction(engine) as conn:
        conn.execute(insert(META).values(key=SEED_MARKER, value=json.dumps(info)))
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:  # everything into the main file, which is what gets copied
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return info


def report_seed(info: dict, reused: bool) -> None:
    """Print what the seed holds and how long it took to make."""
    clients = sum(info["profiles"].values())
    vacuum = f", {info['seconds_total']:.0f} s with VACUUM ANALYZE" if info["seconds_total"] > info["seconds"] + 0.5 else ""
    print(f"  {'reusing the seed made' if reused else 'seeded'} in {info['seconds']:.0f} s{vacuum}: "
          f"{info['events']:,} events ({info['events'] / max(1, clients):.1f} per client), {info['grants']:,} tier grants, "
          f"{info['earns']:,} earn entries; from the previous review {info.get('graces', 0):,} grace periods, "
          f"{info.get('flags', 0):,} churn flags")
    print(f"  profiles: {', '.join(f'{name} {count:,}' for name, count in sorted(info['profiles'].items()))}; "
          f"starting tiers: {', '.join(f'{name} {count:,}' for name, count in sorted(info['tiers'].items()))}")
    if "verify" in info:
        outcome = "consistent" if not info["verify"]["problems"] else f"{info['verify']['problems']:,} problems"
        print(f"  ledger verify after seeding: {outcome} ({info['verify']['seconds']:.1f} s) {info['verify']['first'] or ''}")


def remove_sqlite(path: str) -> None:
    """Delete an SQLite database and its WAL files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def prepare_sqlite(programme: CompiledProgramme, args: argparse.Namespace) -> dict:
    """Make sure the pristine SQLite seed exists (seeding it if needed); returns its marker."""
    path = SQLITE_SEED.format(clients=args.clients)
    if Path(path).exists():
        engine = make_engine(f"sqlite:///{path}")
        info = reusable_seed(engine, programme, args)
        if info is not None:
            with engine.connect() as conn:  # everything into the main file, which is what gets copied
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        if info is not None:
            report_seed(info, True)
            return info
    remove_sqlite(path)
    engine = make_engine(f"sqlite:///{path}")
    info = seed_into(engine, programme, args.clients, args.seed, args.quick)
    engine.dispose()
    report_seed(info, False)
    return info


def fresh_sqlite(args: argparse.Namespace) -> str:
    """A work copy of the pristine seed; returns its URL."""
    run = SQLITE_RUN.format(clients=args.clients)
    remove_sqlite(run)
    shutil.copyfile(SQLITE_SEED.format(clients=args.clients), run)
    return f"sqlite:///{run}"


def drop_sqlite_run(args: argparse.Namespace) -> None:
    """Delete the work copy."""
    remove_sqlite(SQLITE_RUN.format(clients=args.clients))


def pg_admin(args: argparse.Namespace) -> Engine:
    """An AUTOCOMMIT engine on the database of --postgres URL, for CREATE and DROP DATABASE."""
    return create_engine(args.postgres, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


def pg_url(args: argparse.Namespace, database: str) -> str:
    """The URL of a database on the server of --postgres URL."""
    return make_url(args.postgres).set(database=database).render_as_string(hide_password=False)


def prepare_postgres(programme: CompiledProgramme, args: argparse.Namespace) -> dict:
    """Make sure the seed database exists (seeding it if needed); returns its marker."""
    name = PG_SEED_DB.format(clients=args.clients)
    admin = pg_admin(args)
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).first()
    if exists:
        engine = make_engine(pg_url(args, name))
        info = reusable_seed(engine, programme, args)
        engine.dispose()  # a template database must have no connections
        if info is not None:
            admin.dispose()
            report_seed(info, True)
            return info
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = make_engine(pg_url(args, name))
    info = seed_into(engine, programme, args.clients, args.seed, args.quick)
    engine.dispose()
    admin.dispose()
    report_seed(info, False)
    return info


def fresh_postgres(args: argparse.Namespace) -> str:
    """A new run database copied from the seed (CREATE DATABASE ... TEMPLATE); returns its URL."""
    admin = pg_admin(args)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {PG_RUN_DB} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {PG_RUN_DB} TEMPLATE {PG_SEED_DB.format(clients=args.clients)}")
    admin.dispose()
    return pg_url(args, PG_RUN_DB)


def drop_postgres_run(args: argparse.Namespace) -> None:
    """Drop the run database."""
    admin = pg_admin(args)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {PG_RUN_DB} WITH (FORCE)")
    admin.dispose()


# --- the measured child --------------------------------------------------------------------------------

def memory_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def count_of(value: object) -> int | None:
    """A count from a report value that may be a number or a list (or missing: None)."""
    if value is None or isinstance(value, int):
        return value
    return len(value)  # type: ignore[arg-type]


def summary(found: dict) -> dict:
    """The counts of a review report's as_dict(), whichever version of the report made it: `held`,
    `churn` and `points_expired` are newer (held: clients a policy kept in their tier; churn: flags
    raised or renewed; points expired)."""
    churn = found.get("churn")
    expired = found.get("points_expired")
    return {"clients": found["clients"], "upgrades": found["upgrades"], "downgrades": found["downgrades"],
            "held": count_of(found.get("held")),
            "churn": count_of(churn.get("flagged") if isinstance(churn, dict) else churn),
            "points_expired": count_of(expired.get("points") if isinstance(expired, dict) else expired),
            "skipped": count_of(found.get("skipped"))}


def child(mode: str, url: str, profile: bool) -> None:
    """Run one measurement in this process and print its result as one JSON line."""
    programmes = load_programmes(ROOT / "rules")
    programme = programmes.current
    window = programme.model.review.window_months
    engine = make_engine(url)
    started_kib = memory_kib("VmRSS")
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    began, cpu_began, started_at = time.perf_counter(), time.process_time(), time.time()
    if mode == "metrics":
        with read_snapshot(engine) as conn:
            metrics = client_metrics(conn, AS_OF, months_before(AS_OF, window), window, programme.currency)
        seconds, cpu, peak_kib = time.perf_counter() - began, time.process_time() - cpu_began, memory_kib("VmHWM")
        result: dict = {"clients": len(metrics)}
    elif mode == "paged":
        with read_snapshot(engine) as conn:
            pages = review_pages.bounds(reviews.all_client_ids(conn), REVIEW_PAGE)
        read = 0
        for page in pages:
            with read_snapshot(engine) as conn:
                ids = set(review_pages.clients(conn, page))
                read += sum(client_id in ids for client_id in
                            page_metrics(conn, AS_OF, months_before(AS_OF, window), window, programme.currency, page))
        seconds, cpu, peak_kib = time.perf_counter() - began, time.process_time() - cpu_began, memory_kib("VmHWM")
        result = {"clients": read}
    else:
        dry = mode == "dry"
        report = run_review(engine, programmes, AS_OF, dry_run=dry, clock=lambda: CLOCK,
                            review_id=None if dry else REVIEW_ID, share=True)
        # Before as_dict() adds its copy of the report.
        seconds, cpu, peak_kib = time.perf_counter() - began, time.process_time() - cpu_began, memory_kib("VmHWM")
        found = report.as_dict()
        result = {**summary(found), "report": report_digest(found)}
    if profiler:
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        print(f"  cProfile of the {mode} run ({seconds:.1f} s under the profiler), by own time:")
        stats.sort_stats("tottime").print_stats(20)
        print("  by cumulative time:")
        stats.sort_stats("cumulative").print_stats(30)
    engine.dispose()
    print(RESULT_PREFIX + json.dumps({"mode": mode, "seconds": seconds, "cpu_s": cpu, "started_mib": started_kib / 1024,
                                      "peak_mib": peak_kib / 1024, "started_at": started_at,
                                      "ended_at": started_at + seconds, **result}), flush=True)


def report_digest(report: dict) -> str:
    """A digest of a review's report, but for whether this process found the review started (`resumed`)."""
    return hashlib.sha256(json.dumps({**report, "resumed": None}, sort_keys=True).encode()).hexdigest()[:16]


def written_digest(url: str) -> str:
    """A digest of what the reviews wrote (tier rows, grace periods, churn flags, ledger entries), without
    ids and write times: the same whichever process wrote which page."""
    tiers, entries = TIER, LedgerEntry.__table__
    queries = [select(tiers.c.client_id, tiers.c.tier, tiers.c.previous_tier, tiers.c.valid_from, tiers.c.details)
               .where(tiers.c.review_id == REVIEW_ID),
               select(entries.c.client_id, entries.c.kind, entries.c.reason, entries.c.points, entries.c.bps,
                      entries.c.rule_id, entries.c.valid_from, entries.c.valid_to).where(entries.c.created_at >= CLOCK)]
    queries += [select(*(column for column in table.c if column.name != "id")) for table in (GRACE, FLAG) if table is not None]
    engine = make_engine(url)
    digest = hashlib.sha256()
    with read_snapshot(engine) as conn:
        for query in queries:
            for line in sorted(repr(tuple(row)) for row in conn.execute(query)):
                digest.update(line.encode())
    engine.dispose()
    return digest.hexdigest()[:16]


def measure(mode: str, url: str, profile: bool = False, processes: int = 1) -> dict:
    """Run `mode` (metrics, dry or review) on `url` in `processes` child processes at once (a review
    shared by them); the result, or {"error": ...}.

    Adds the children's CPU time and the cores every other process used meanwhile (PostgreSQL's
    included): this machine is shared, and on SQLite more than a few tenths means the timings are suspect.
    With several processes, `seconds` runs from the first one's start to the last one's end, and
    `processes` holds each one's result.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--url", url]
    if profile:
        command.append("--profile")
    before, began = machine_busy(), time.perf_counter()
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(processes)]
    results, cpu, failed = [], 0.0, None
    for process in children:
        output = process.stdout.read()  # type: ignore[union-attr]
        _pid, status, usage = os.wait4(process.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime  # the whole child's, start-up included
        for line in output.splitlines():
            if line.startswith(RESULT_PREFIX):
                results.append(json.loads(line[len(RESULT_PREFIX):]))
            else:
                print(line)  # the child's profile, if any
        if status:
            failed = f"a child exited with {os.waitstatus_to_exitcode(status)} (its stderr is above)"
    if failed or len(results) < processes:
        return {"mode": mode, "error": failed or "a child gave no result"}
    elapsed, busy = time.perf_counter() - began, machine_busy() - before
    others = max(0.0, (busy - cpu) / elapsed)
    if processes == 1:
        return {**results[0], "others": others}
    return {**results[0], "seconds": max(r["ended_at"] for r in results) - min(r["started_at"] for r in results),
            "cpu_s": sum(r["cpu_s"] for r in results), "peak_mib": max(r["peak_mib"] for r in results),
            "others": others, "processes": results}


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (Linux /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = \
        (int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- report --------------------------------------------------------------------------------------------

def cell(value: object, width: int) -> str:
    """A right-aligned table cell: a count with thousands separators, or '-' when missing."""
    return f"{value:>{width},}" if isinstance(value, int) else f"{'-':>{width}}"


def result_line(database: str, label: str, result: dict, metrics: dict) -> str:
    """A table row: what the run found, its time, against the metric read's, its memory and CPU, and the
    machine's other load."""
    if "error" in result:
        return f"{database:<11}{label:<10}{result['error']}"
    moved = result.get("upgrades")
    same = result["clients"] - moved - result["downgrades"] if moved is not None else None
    ratio = f"{result['seconds'] / metrics['seconds']:>9.2f}x" if "seconds" in metrics else f"{'-':>10}"
    return (f"{database:<11}{label:<10}{cell(result['clients'], 9)}{cell(moved, 8)}{cell(result.get('downgrades'), 8)}"
            f"{cell(same, 8)}{cell(result.get('held'), 7)}{cell(result.get('churn'), 7)}"
            f"{cell(result.get('points_expired'), 9)}{cell(result.get('skipped'), 6)}{result['seconds']:>9.2f}"
            f"{ratio}{result['started_mib']:>7,.0f}{result['peak_mib']:>7,.0f}{result['cpu_s']:>8.1f}"
            f"{result['others']:>7.2f}")


def measure_database(database: str, fresh, cleanup, args: argparse.Namespace) -> list[dict]:  # noqa: ANN001
    """--runs rounds of measurements on fresh work copies, each printed as it ends; returns them."""
    rounds = []
    for number in range(1, args.runs + 1):
        url = fresh(args)
        try:
            found = {mode: measure(mode, url) for mode in ("metrics", "paged", "dry", "review")}
            found["written"] = written_digest(url) if "error" not in found["review"] else None
        finally:
            cleanup(args)
        for processes in range(2, args.processes + 1) if database == "PostgreSQL" else ():
            url = fresh(args)
            try:
                found[f"{processes} procs"] = shared = measure("review", url, processes=processes)
                found[f"{processes} written"] = written_digest(url) if "error" not in shared else None
            finally:
                cleanup(args)
        print(f"  run {number}/{args.runs}: digests: report {found['review'].get('report')}, written {found.get('written')}")
        for mode in modes(found):
            print("  " + result_line(database, "dry run" if mode == "dry" else mode, found[mode], found["metrics"]))
        rounds.append(found)
    if args.profile:
        url = fresh(args)
        try:
            measure("review", url, profile=True)
        finally:
            cleanup(args)
    return rounds


def modes(found: dict) -> list[str]:
    """The measurements of a round, in order: metrics, dry, review, then reviews shared by 2, 3... processes."""
    return [mode for mode in found if mode in ("metrics", "paged", "dry", "review") or mode.endswith(" procs")]


def median_of(rounds: list[dict], mode: str) -> float | None:
    """The median time of `mode` over the rounds that have one."""
    times = [found[mode]["seconds"] for found in rounds if mode in found and "error" not in found[mode]]
    return statistics.median(times) if times else None


def goals_of(database: str, rounds: list[dict]) -> list[str]:
    """The goals of issue 14 against the medians of the rounds, each met or NOT met."""
    metrics, paged, dry, review = (median_of(rounds, mode) for mode in ("metrics", "paged", "dry", "review"))
    if review is None or metrics is None:
        return [f"{database:<11}review: no result"]
    times = ", ".join(f"{found['review']['seconds']:.1f}" for found in rounds if "error" not in found["review"])
    last = rounds[-1]["review"]
    growth = last["peak_mib"] - last["started_mib"]
    goals = [
        f"{database:<11}review of {last['clients']:,} clients < {GOAL_SECONDS:g} s: {review:.1f} s (median of "
        f"{times}) -> {verdict(review < GOAL_SECONDS)}",
        f"{database:<11}review <= {GOAL_RATIO:g}x the metric read: {review / metrics:.2f}x (metric read {metrics:.1f} s, "
        f"the floor) -> {verdict(review <= GOAL_RATIO * metrics)}; dry run {dry / metrics:.2f}x ({dry:.1f} s)"
        if dry is not None else f"{database:<11}review / metric read: {review / metrics:.2f}x",
        f"{database:<11}the metrics read page by page as the review reads them: {paged:.1f} s ({paged / metrics:.2f}x "
        f"the floor); the review adds {review - paged:.1f} s to them" if paged is not None else
        f"{database:<11}metrics read page by page: no result",
        f"{database:<11}peak RSS {last['peak_mib']:,.0f} MiB ({growth:,.0f} MiB over the {last['started_mib']:,.0f} MiB at "
        f"start, {growth * 1024 * 1024 / max(1, last['clients']):,.0f} bytes per client)",
    ]
    for mode in modes(rounds[0])[4:]:
        processes, shared = int(mode.split()[0]), median_of(rounds, mode)
        if shared is None:
            goals.append(f"{database:<11}{mode}: no result")
            continue
        same = all(found[f"{processes} written"] == found["written"] and {p["report"] for p in found[mode]["processes"]}
                   == {found["review"]["report"]} for found in rounds if mode in found and "error" not in found[mode])
        speedup = f"{review / shared:.2f}x ({shared:.1f} s against {review:.1f} s)"
        goals += [f"{database:<11}one review shared by {processes} processes >= {GOAL_SPEEDUP:g}x one process: {speedup} "
                  f"-> {verdict(review / shared >= GOAL_SPEEDUP)}" if processes == 2 else
                  f"{database:<11}one review shared by {processes} processes: {speedup}",
                  f"{database:<11}{processes} processes write and report what one does (tier rows, grace periods, "
                  f"flags, ledger entries; every report) -> {verdict(same)}"]
    return goals


def main() -> None:
    """Seed or reuse the databases, measure each in child processes, and print the table and the goals."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3, help="rounds of measurements; medians are compared with the goals")
    parser.add_argument("--postgres", nargs="?", const=PG_URL, metavar="URL",
                        help="also measure PostgreSQL, on the server of URL (default $LOYALTY_BENCH_PG_URL or "
                             "the local `test` database; the bench creates its own databases there)")
    parser.add_argument("--processes", type=int, default=2,
                        help="PostgreSQL: the review shared by 2, and up to this many, processes (default 2)")
    parser.add_argument("--reseed", action="store_true", help="seed again even if a seed of this size exists")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, one more review on a fresh copy under cProfile (its time is not counted)")
    parser.add_argument("--quick", action="store_true", help="10,000 clients, one run, and `ledger verify` on a new seed")
    parser.add_argument("--child", choices=("metrics", "paged", "dry", "review"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    if parser.parse_args().quick:  # smaller defaults; --clients and --runs given explicitly still win
        parser.set_defaults(clients=10_000, runs=1)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.profile)
        return

    programme = load_programmes(ROOT / "rules").current
    print(f"{args.clients:,} clients, review as of {AS_OF.isoformat()} (window from {WINDOW_START:%Y-%m-%d}), "
          f"programme {programme.id} {programme.version}, seed {args.seed}, {args.runs} run(s), {os.cpu_count()} CPUs")
    databases = [("SQLite", prepare_sqlite, fresh_sqlite, drop_sqlite_run)]
    if args.postgres:
        databases.append(("PostgreSQL", prepare_postgres, fresh_postgres, drop_postgres_run))
    rows, goals = [], []
    for database, prepare, fresh, cleanup in databases:
        print(f"{database}:")
        try:
            began = time.perf_counter()
            prepare(programme, args)
            print(f"  ready in {time.perf_counter() - began:.1f} s")
        except Exception as exc:  # PostgreSQL may not answer here: say so and go on
            print(f"  {database} skipped: {str(exc).splitlines()[0]}")
            continue
        print(f"  {HEADER}")
        rounds = measure_database(database, fresh, cleanup, args)
        rows += [result_line(database, f"{mode} {number}", found[mode], found["metrics"])
                 for number, found in enumerate(rounds, 1) for mode in modes(found)]
        goals += goals_of(database, rounds)
    print(f"\n{HEADER}")
    print("\n".join(rows))
    print(LEGEND)
    print("\ngoals (medians of the runs)")
    print("\n".join(goals))


if __name__ == "__main__":
    main()
