"""Property: no sequence of operations breaks the ledger's invariants (both databases).

Hypothesis generates sequences of ingests (every event type, out of order, over 30 months), tier
reviews, pins, redemptions, reversals and expiry runs for three clients, and after EVERY operation
checks what must always hold: `ledger verify` finds nothing, balances are the sum of their entries
and of their lots and never negative, no lot expires more than it earned, no entitlement is consumed
twice, and a client has at most one open churn flag and one open grace period. Each operation's own
promise is checked too, against a model of it: a refused redemption writes nothing, a successful one
spends only points not yet past expiry; a reversal takes back its own lot first and writes off what
cannot be taken, so the balance stops at zero; an expiry run leaves nothing due. The events/reversals
property this file began with is folded in: until anything is spent or expires, each balance is what
the client's unreversed events earned. PostgreSQL runs the main property; SQLite, cheaper, also runs
longer sequences.

Time is injected everywhere: the wall clock is never read, so a failing sequence replays exactly.
`pytest --hypothesis-show-statistics` shows how often each outcome (a redemption refused for too few
points, a reversal that wrote points off, ...) came up.
"""
from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlmodel import SQLModel

from service.errors import ConflictError, NotFoundError
from service.expiry import expire_points
from service.ingest import Ingestor
from service.pins import pin_tier
from service.redemptions import redeem
from service.reversal import reverse_event
from service.review import run_review
from storage import ledger
from storage.db import init_schema, make_engine
from storage.lots import WRITE_OFF
from storage.models import (ChurnFlag, Client, EventReversal, LedgerEntry, PointsLot, ProcessedEvent, TierAssignment,
                            TierGrace)
from tests.conftest import event, ndjson

ENTRY = LedgerEntry.__table__
CLIENT = Client.__table__
LOT = PointsLot.__table__
TIER = TierAssignment.__table__
GRACE = TierGrace.__table__
FLAG = ChurnFlag.__table__
REVERSAL = EventReversal.__table__
PROCESSED = ProcessedEvent.__table__

CLIENTS = ["C-1", "C-2", "C-3"]
START = datetime(2025, 1, 1, tzinfo=UTC)  # the shipped programme's effective_from
LAST_EVENT_DAY = (datetime(2027, 6, 30, tzinfo=UTC) - START).days
NOW = datetime(2027, 12, 31, tzinfo=UTC)  # "now" for every call that is not itself at a generated moment
TIERS = ["standard", "silver", "gold", "diamond"]
REWARDS = ["rate-cut-5", "rate-cut-10", "fee-waiver-full", "fast-track-24h"]
# The shipped rules expire points 24 months after they were earned. Within the generated dates (no
# 29 February) that is the same moment two years later: computed here, not with the product's helper.
EXPIRY_YEARS = 2
DAYS = (NOW - START).days
# Attributes that name the event's own day or month: filled in from its moment.
FROM_MOMENT = {"repayment.made": ("due_date", "%Y-%m-%d"), "deposit.reported": ("month", "%Y-%m")}


def _moments(first_day: int, last_day: int) -> st.SearchStrategy[datetime]:
    """Moments on the hour, from `first_day` to `last_day` days after the programme's start."""
    return st.builds(lambda day, hour: START + timedelta(days=day, hours=hour),
                     st.integers(first_day, last_day), st.integers(0, 23))


event_moments = _moments(0, LAST_EVENT_DAY)
any_moments = _moments(0, DAYS - 1)
late_moments = _moments(DAYS - 540, DAYS - 1)
clients = st.sampled_from(CLIENTS)
# Mostly amounts around the tier thresholds (10M silver, 30M gold, 100M diamond) and the 50M
# large-drawdown grant, sometimes arbitrary ones: enough points (1 per 10,000 CNY) for redemptions to
# succeed, and tiers to move both ways. Hypothesis draws small integers far more often than large.
round_amounts = st.sampled_from([12, 35, 60, 120, 250, 500]).map(lambda millions: millions * 1_000_000)
loan_amounts = st.one_of(round_amounts, round_amounts, st.integers(1, 300_000_000))
drawdowns = st.builds(lambda product, amount: ("loan.drawn", {"loan_id": "L", "product": product,
                                                              "amount": str(amount), "currency": "CNY",
                                                              "term_months": 12}),
                      st.sampled_from(["working_capital", "term_loan", "project_finance", "trade_finance"]),
                      loan_amounts)
event_data = st.one_of(
    drawdowns, drawdowns, drawdowns,  # three times: they earn the most points and move tiers
    # Mostly on time (points, and the ratio gold needs), sometimes late (late-payer churn signal).
    st.builds(lambda amount, late: ("repayment.made", {"loan_id": "L", "amount": str(amount), "days_late": late}),
              st.integers(1, 100_000_000), st.one_of(st.just(0), st.integers(1, 120))),
    st.builds(lambda balance: ("deposit.reported", {"average_balance": str(balance)}), st.integers(1, 500_000_000)),
    st.just(("referral.converted", {"referred_client_id": "X"})),
    st.builds(lambda nps: ("survey.answered", {"nps": nps}), st.integers(0, 10)),
    st.builds(lambda product: ("product.purchased", {"product": product}),
              st.sampled_from(["cash_management", "fx_hedging", "payroll", "insurance", "trade_services"])),
    st.builds(lambda kind: ("event.attended", {"kind": kind}),
              st.sampled_from(["client_day", "forum", "salon", "training"])),
)
events = st.tuples(clients, event_moments, event_data)

ingests = st.tuples(st.just("ingest"), st.lists(events, min_size=1, max_size=6))  # up to two batches of 3
reviews = st.tuples(st.just("review"), any_moments)
pins = st.tuples(st.just("pin"), clients, st.sampled_from(TIERS), any_moments, st.integers(1, 400))
redemptions = st.tuples(st.just("redeem"), clients, st.sampled_from(REWARDS), any_moments)
reversals = st.tuples(st.just("reverse"), st.integers(0, 100))
# Often late: only points earned early in the event range have expired by the end of 2027.
expiries = st.tuples(st.just("expire"), st.one_of(any_moments, late_moments, st.just(NOW)))
# Listed more than once: ingests, as every other operation needs events to act on; redemptions and
# reversals, as a reversal of points already spent is where balances could go below zero.
operation = st.one_of(ingests, ingests, ingests, redemptions, redemptions, reversals, reversals, reviews, pins,
                      expiries)


def sequences(min_ops: int, max_ops: int) -> st.SearchStrategy[list[tuple]]:
    """An opening ingest (so the operations after it find clients with points), then `min_ops` to
    `max_ops` operations. A minimum, because Hypothesis left to itself mostly tries two or three, too
    few to spend points and then reverse what earned them."""
    return st.builds(lambda first, rest: [("ingest", first), *rest], st.lists(events, min_size=3, max_size=9),
                     st.lists(operation, min_size=min_ops, max_size=max_ops))


# Explaining a failure re-runs its sequence dozens of times against the database (minutes); the notes
# of _check say what ran. Deadlines would only measure how busy the database server is.
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    phases=[phase for phase in Phase if phase is not Phase.explain])


@settings(SETTINGS, max_examples=12)
@given(ops=sequences(4, 20))
def test_no_sequence_of_operations_breaks_the_ledger(db_url, programmes, ops):
    _check(db_url, programmes, ops)


# SQLite runs an operation in about half the time PostgreSQL takes: more and longer sequences there.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@settings(SETTINGS, max_examples=15)
@given(ops=sequences(8, 30))
def test_longer_sequences_on_sqlite(db_url, programmes, ops):
    _check(db_url, programmes, ops)


def _check(db_url: str, programmes, ops: list[tuple]) -> None:
    """Apply `ops` to a fresh schema, checking every operation's promise and the invariants after each."""
    engine = make_engine(db_url)
    SQLModel.metadata.drop_all(engine)
    with engine.begin() as conn:  # and the migrations' record, so that they build the schema again
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    init_schema(engine)
    try:
        run = _Run(engine, programmes)
        for step, op in enumerate(ops):
            # Step by step, so a failure shows what ran (the schemathesis plugin blanks the arguments
            # in Hypothesis's own report of the failing case).
            hypothesis.note(f"step {step}: {op!r}")
            run.apply(step, op)
            _assert_invariants(engine, run, f"after step {step} {op[0]}")
    finally:
        engine.dispose()


class _Run:
    """Applies operations and checks each one's own promise; remembers which events were applied and reversed."""

    def __init__(self, engine, programmes):
        self.engine = engine
        self.programmes = programmes
        self.ingestor = Ingestor(engine, programmes, clock=lambda: NOW, batch_size=3)
        self.costs = {reward.id: reward.points for reward in programmes.current.model.catalogue}
        self.applied: list[str] = []
        self.reversed: set[str] = set()

    def apply(self, step: int, op: tuple) -> None:
        """Run one operation (the method named by its first item), telling it what the ledger held before."""
        kind, *args = op
        before = _snapshot(self.engine)
        getattr(self, kind)(step, before, *args)

    def ingest(self, step: int, before: dict, items: list) -> None:
        lines, ids = [], []
        for number, (client, moment, (type_, data)) in enumerate(items):
            if type_ in FROM_MOMENT:
                name, form = FROM_MOMENT[type_]
                data = {**data, name: moment.strftime(form)}
            ids.append(f"e{step}-{number}")
            lines.append(ndjson(event(ids[-1], client, type_, f"{moment:%Y-%m-%dT%H:%M:%SZ}", **data)))
        report = self.ingestor.ingest_lines(lines)
        assert (report.applied, report.errors) == (len(items), []), report.as_dict()
        self.applied.extend(ids)

    def review(self, step: int, before: dict, as_of: datetime) -> None:
        report = run_review(self.engine, self.programmes, as_of, clock=lambda: NOW)
        _assert_nothing_due(self.engine, as_of)  # a review expires points as of its moment
        for what, happened in (("moved a tier", report.changes), ("held a tier", report.held),
                               ("flagged churn", report.churn_flagged), ("cleared churn", report.churn_cleared)):
            if happened:
                hypothesis.event(f"review {what}")

    def expire(self, step: int, before: dict, as_of: datetime) -> None:
        report = expire_points(self.engine, self.programmes, as_of, clock=lambda: NOW)
        _assert_nothing_due(self.engine, as_of)
        after = _snapshot(self.engine)
        assert report.points == before["expired"] - after["expired"], (report.as_dict(), before, after)
        hypothesis.event("expiry took points" if report.points else "expiry took nothing")

    def pin(self, step: int, before: dict, client: str, tier: str, moment: datetime, days: int) -> None:
        try:
            pin_tier(self.engine, self.programmes, client, tier, moment + timedelta(days=days), reason="r",
                     author="a", clock=lambda: moment)
        except NotFoundError:
            assert client not in before["balances"]
            hypothesis.event("pin refused: no client")
            return
        except ConflictError as exc:
            assert exc.code == "later-tier-decision", exc
            hypothesis.event("pin refused: later decision")
            return
        # No later decision existed, so the pin's move (or the tier already held) is the latest one.
        with self.engine.connect() as conn:
            latest = conn.execute(select(TIER.c.tier).where(TIER.c.client_id == client)
                                  .order_by(TIER.c.valid_from.desc()).limit(1)).scalar_one()
        assert latest == tier
        hypothesis.event("pinned")

    def redeem(self, step: int, before: dict, client: str, reward: str, moment: datetime) -> None:
        # Points past their expiry at the redemption's moment are not spent: the redemption expires them
        # first, in its own transaction, so only what is left counts.
        balance, cost = before["balances"].get(client), self.costs[reward]
        due = sum(lot.remaining for lot in _lots(self.engine, client) if _expires(lot) <= moment)
        try:
            result = redeem(self.engine, self.programmes, client, reward, clock=lambda: moment).model_dump(mode="json")
        except (ConflictError, NotFoundError) as exc:
            # A refused redemption writes nothing at all, not even the expiries it would have written.
            assert _snapshot(self.engine) == before, exc
            if isinstance(exc, NotFoundError):
                assert balance is None, exc
            else:
                assert exc.code in ("insufficient-points", "tier-too-low"), exc
                assert exc.code != "insufficient-points" or balance - due < cost, (exc, balance, due)
            hypothesis.event(f"redemption refused: {getattr(exc, 'code', 'no client')}")
            return
        after = _snapshot(self.engine)
        assert balance - due >= cost, (balance, due, cost)
        assert result["points_balance"] == after["balances"][client] == balance - due - cost
        assert after["expired"] == before["expired"] - due
        assert after["balances"] == {**before["balances"], client: balance - due - cost}
        _assert_nothing_due(self.engine, moment, client)
        hypothesis.event("redeemed after expiring due points" if due else "redeemed")

    def reverse(self, step: int, before: dict, index: int) -> None:
        if not self.applied:
            return
        target = self.applied[index % len(self.applied)]
        with self.engine.connect() as conn:
            client = conn.execute(select(PROCESSED.c.client_id).where(PROCESSED.c.event_id == target)).scalar_one()
            earned = dict(conn.execute(select(ENTRY.c.rule_id, ENTRY.c.points)
                                       .where(ENTRY.c.event_id == target, ENTRY.c.reason == "earn")).all())
        # A reversal takes back each earning from its own lot first; what expired from that lot is
        # written off (it was never used), what was spent comes out of the oldest lots, and what
        # those lack is written off too: the balance stops at zero. (The shipped rules give an event
        # one points lot at most, so the order between lots does not matter here.)
        lots = {lot.rule_id: lot for lot in _lots(self.engine, client) if lot.event_id == target}
        own = sum(min(lots[rule].remaining, points) for rule, points in earned.items())
        gone = sum(min(points - min(lots[rule].remaining, points), lots[rule].expired)
                   for rule, points in earned.items())
        spent = sum(earned.values()) - own - gone
        balance = before["balances"][client]
        result = reverse_event(self.engine, target, clock=lambda: NOW).model_dump(mode="json")
        after = _snapshot(self.engine)
        if target in self.reversed:
            assert result["status"] == "already_reversed"
            assert after == before  # a second reversal writes nothing
            return
        assert result["status"] == "reversed"
        self.reversed.add(target)
        assert result["points_written_off"] == gone + max(0, spent - (balance - own)), (result, own, gone, spent)
        assert after["balances"] == {**before["balances"], client: max(0, balance - own - spent)}
        hypothesis.event("reversal wrote points off" if result["points_written_off"] else "reversal")


def _snapshot(engine) -> dict:
    """What every operation may change: entry count, balances, and the points expired so far (negative)."""
    with engine.connect() as conn:
        return {"entries": conn.execute(select(func.count()).select_from(ENTRY)).scalar_one(),
                "balances": dict(conn.execute(select(CLIENT.c.client_id, CLIENT.c.points_balance)).all()),
                "expired": conn.execute(select(func.coalesce(func.sum(ENTRY.c.points), 0))
                                        .where(ENTRY.c.reason == "expire")).scalar_one()}


def _lots(engine, client: str | None = None) -> list:
    """Points lots (of one client)."""
    query = select(LOT) if client is None else select(LOT).where(LOT.c.client_id == client)
    with engine.connect() as conn:
        return conn.execute(query).all()


def _expires(lot) -> datetime:  # noqa: ANN001 - a points_lot row
    return lot.earned_at.replace(year=lot.earned_at.year + EXPIRY_YEARS)


def _assert_nothing_due(engine, as_of: datetime, client: str | None = None) -> None:
    """After expiry as of `as_of` (of one client), no lot past its expiry then has points left."""
    left = [lot for lot in _lots(engine, client) if lot.remaining and _expires(lot) <= as_of]
    assert left == [], f"lots past their expiry at {as_of.isoformat()} still hold points: {left}"


def _assert_invariants(engine, run: _Run, where: str) -> None:
    """What holds after any operation whatever; `where` names the step, for the failure message."""
    with engine.connect() as conn:
        assert ledger.verify(conn) == [], where
        balances = dict(conn.execute(select(CLIENT.c.client_id, CLIENT.c.points_balance)).all())
        sums = dict(conn.execute(select(ENTRY.c.client_id, func.sum(ENTRY.c.points))
                                 .group_by(ENTRY.c.client_id)).all())
        lots = conn.execute(select(LOT)).all()
        expired = conn.execute(
            select(ENTRY.c.event_id, ENTRY.c.rule_id, LOT.c.points, LOT.c.expired.label("lot_expired"),
                   func.sum(-ENTRY.c.points).label("expired"))
            .join(LOT, (LOT.c.event_id == ENTRY.c.event_id) & (LOT.c.rule_id == ENTRY.c.rule_id), isouter=True)
            .where(ENTRY.c.reason == "expire")
            .group_by(ENTRY.c.event_id, ENTRY.c.rule_id, LOT.c.points, LOT.c.expired)).all()
        consumed = conn.execute(select(ENTRY.c.entitlement_id).where(ENTRY.c.reason == "consume")).scalars().all()
        open_flags = conn.execute(select(FLAG.c.client_id).where(FLAG.c.cleared_at.is_(None))).scalars().all()
        open_graces = conn.execute(select(GRACE.c.client_id).where(GRACE.c.ended_at.is_(None))).scalars().all()
        reasons = set(conn.execute(select(ENTRY.c.reason).distinct()).scalars())
        compensating = conn.execute(select(ENTRY.c.event_id).where(ENTRY.c.reverses_entry_id.is_not(None))).scalars()
        earned_live = dict(conn.execute(
            select(ENTRY.c.client_id, func.sum(ENTRY.c.points))
            .where(ENTRY.c.reason == "earn", ENTRY.c.event_id.not_in(select(REVERSAL.c.event_id)))
            .group_by(ENTRY.c.client_id)).all())
        write_offs = conn.execute(select(func.count()).select_from(ENTRY)
                                  .where(ENTRY.c.rule_id == WRITE_OFF)).scalar_one()
        tiers = conn.execute(select(TIER.c.client_id, TIER.c.tier, TIER.c.previous_tier, TIER.c.valid_from)
                             .order_by(TIER.c.client_id, TIER.c.valid_from, TIER.c.id)).all()
    remaining: Counter = Counter()
    for lot in lots:
        assert 0 <= lot.remaining and 0 <= lot.expired and lot.remaining + lot.expired <= lot.points, (where, lot)
        remaining[lot.client_id] += lot.remaining
    for client, balance in balances.items():
        assert balance >= 0, (where, client, balance)
        assert balance == (sums.get(client) or 0) == remaining[client], (where, client, balance, sums, remaining)
    # An expiry takes from its own lot, never more than the lot earned, and the lot counts it.
    for row in expired:
        assert row.points is not None and 0 < row.expired <= row.points, (where, row)
        assert row.expired == row.lot_expired, (where, row)
    assert sum(row.expired for row in expired) == sum(lot.expired for lot in lots), where
    assert [e for e, n in Counter(consumed).items() if n > 1] == [], where
    assert [c for c, n in Counter(open_flags).items() if n > 1] == [], where
    assert [c for c, n in Counter(open_graces).items() if n > 1] == [], where
    # Each client's tier history is one chain: every decision starts from the tier the one before it
    # reached, later than it (a pin to the tier held is a decision too: it writes a row).
    for earlier, decision in pairwise(tiers):
        if decision.client_id == earlier.client_id:
            assert decision.previous_tier == earlier.tier, (where, tiers)
            assert decision.valid_from > earlier.valid_from, (where, tiers)
    # Only reversals write compensating entries, and only for events reversed here.
    assert set(compensating) <= run.reversed, where
    if not reasons & {"redeem", "expire"}:
        # Nothing spent or expired yet: reversed events net to zero, the balance is what the live
        # events earned, and no reversal had anything to write off.
        assert write_offs == 0, where
        assert balances == {client: earned_live.get(client) or 0 for client in balances}, (where, earned_live)
