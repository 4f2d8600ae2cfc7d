"""Property: no sequence of events and reversals breaks the ledger's invariants (both databases)."""
from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlmodel import SQLModel

from service.ingest import Ingestor
from service.reversal import reverse_event
from storage import ledger
from storage.db import init_schema, make_engine
from storage.models import Client, LedgerEntry
from tests.conftest import event, ndjson

CLIENTS = ["C-1", "C-2", "C-3"]

events = st.one_of(
    st.builds(lambda c, a, d: ("loan.drawn", c, d, {"loan_id": "L", "product": "working_capital",
                                                    "amount": str(a), "currency": "CNY", "term_months": 12}),
              st.sampled_from(CLIENTS), st.integers(1, 10**9), st.integers(1, 28)),
    st.builds(lambda c, a, d: ("deposit.reported", c, d, {"month": "2026-02", "average_balance": str(a)}),
              st.sampled_from(CLIENTS), st.integers(1, 10**9), st.integers(1, 28)),
    st.builds(lambda c, d: ("referral.converted", c, d, {"referred_client_id": "X"}),
              st.sampled_from(CLIENTS), st.integers(1, 28)),
    st.builds(lambda c, d, n: ("survey.answered", c, d, {"nps": n}),
              st.sampled_from(CLIENTS), st.integers(1, 28), st.integers(0, 10)),
)
operations = st.lists(st.one_of(st.tuples(st.just("event"), events),
                                st.tuples(st.just("reverse"), st.integers(0, 50))), min_size=1, max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_ledger_invariants_hold(db_url, programmes, ops):
    engine = make_engine(db_url)
    SQLModel.metadata.drop_all(engine)
    init_schema(engine)
    ingestor = Ingestor(engine, programmes, clock=lambda: datetime(2026, 6, 1, tzinfo=UTC), batch_size=3)
    applied: list[str] = []
    reversed_: set[str] = set()
    for number, (kind, payload) in enumerate(ops):
        if kind == "event":
            type_, client, day, data = payload
            report = ingestor.ingest_lines(ndjson(event(f"e{number}", client, type_,
                                                        f"2026-02-{day:02d}T00:00:00Z", **data)).splitlines())
            assert report.applied == 1, report.errors
            applied.append(f"e{number}")
        elif applied:
            target = applied[payload % len(applied)]
            result = reverse_event(engine, target)
            assert result["status"] == ("already_reversed" if target in reversed_ else "reversed")
            reversed_.add(target)
    with engine.connect() as conn:
        assert ledger.verify(conn) == []
        entries = conn.execute(select(LedgerEntry.__table__)).all()
        balances = dict(conn.execute(select(Client.__table__.c.client_id, Client.__table__.c.points_balance)).all())
    for client, balance_ in balances.items():
        assert balance_ >= 0
        assert balance_ == sum(e.points for e in entries if e.client_id == client)
        # Reversed events net to zero; the balance is what the live events earned.
        assert balance_ == sum(e.points for e in entries if e.client_id == client and e.reason == "earn"
                               and e.event_id not in reversed_)
    assert all(e.reverses_entry_id is None or e.event_id in reversed_ for e in entries)
    engine.dispose()
