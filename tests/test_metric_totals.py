"""The monthly totals behind the metrics: for random histories applied out of order, with reversals,
the metrics read from the totals equal the metrics computed from scratch by their definitions at any
moment (month starts included, where an event at the first instant belongs to the month before), and
`ledger verify` finds the stored totals equal to a rebuild, on both databases."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.metric_totals import month_of
from rewards.caps import months_before
from service.ingest import Ingestor
from service.ledger_audit import verify_ledger
from service.reversal import reverse_event
from storage.db import init_schema, make_engine, read_snapshot
from storage.metrics import client_metrics

WINDOW = 3  # months: short, so random histories cross windows and their edges often
JUST_BEFORE = timedelta(microseconds=1)
EXAMPLE = itertools.count()
PRODUCTS = ["cash_management", "fx_hedging", "payroll"]


@st.composite
def moments(draw) -> datetime:  # noqa: ANN001
    """Moments in 2024-2025, often at a month's first instant or just around it."""
    month = draw(st.integers(0, 23))
    start = datetime(2024 + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start + draw(st.sampled_from([timedelta(0), JUST_BEFORE, -JUST_BEFORE, timedelta(days=14, hours=7),
                                         timedelta(days=27, seconds=1)]))


@st.composite
def histories(draw) -> list[dict]:  # noqa: ANN001
    """Events of two clients: the data each metric reads, restated deposit months, repeated products."""
    events = []
    for number in range(draw(st.integers(1, 24))):
        client = draw(st.sampled_from(["A", "B"]))
        kind = draw(st.sampled_from(["client.onboarded", "loan.drawn", "loan.drawn", "repayment.made",
                                     "deposit.reported", "product.purchased", "survey.answered",
                                     "referral.converted", "event.attended"]))
        at = draw(moments())
        data = {
            "client.onboarded": lambda: {"name": "Client", "segment": "strategic"},
            "loan.drawn": lambda: {"loan_id": "L", "product": "working_capital", "currency": "CNY", "term_months": 12,
                                   "amount": str(Decimal(draw(st.integers(1, 10**9))) / 100)},
            "repayment.made": lambda: {"loan_id": "L", "amount": "10.00", "due_date": "2024-01-01",
                                       "days_late": draw(st.integers(0, 3))},
            "deposit.reported": lambda: {"month": month_of(at + timedelta(days=draw(st.sampled_from([0, -20])))),
                                         "average_balance": str(Decimal(draw(st.integers(1, 10**9))) / 100)},
            "product.purchased": lambda: {"product": draw(st.sampled_from(PRODUCTS))},
            "survey.answered": lambda: {"nps": draw(st.integers(0, 10))},
            "referral.converted": lambda: {"referred_client_id": "X"},
            "event.attended": lambda: {"kind": "client_day"},
        }[kind]()
        events.append({"id": f"e{number}", "client_id": client, "type": kind,
                       "occurred_at": at.isoformat().replace("+00:00", "Z"), "data": data, "_at": at})
    return events


def from_scratch(events: list[dict], as_of: datetime) -> dict | None:
    """The metrics by their definitions (engine/metrics.py), from the live events themselves."""
    live = [e for e in events if e["_at"] <= as_of]
    if not live:
        return None
    start = months_before(as_of, WINDOW)
    before = months_before(start, WINDOW)
    window = [e for e in live if e["_at"] > start]

    def of(kind: str, among: list[dict] = window) -> list[dict]:
        return [e for e in among if e["type"] == kind]

    volume = sum(Decimal(e["data"]["amount"]) for e in of("loan.drawn"))
    previous = sum(Decimal(e["data"]["amount"]) for e in of("loan.drawn", [e for e in live if before < e["_at"] <= start]))
    repayments = of("repayment.made")
    onboarded = [e["_at"] for e in of("client.onboarded", live)]
    loan_activity = [e["_at"] for e in live if e["type"] in ("loan.drawn", "repayment.made")]
    answers = sorted(of("survey.answered"), key=lambda e: (e["_at"], e["id"]))
    last = as_of - JUST_BEFORE
    labels = {f"{months_before(last, n):%Y-%m}" for n in range(WINDOW)}
    latest_report: dict[str, dict] = {}
    for report in sorted(of("deposit.reported", live), key=lambda e: (e["_at"], e["id"])):
        if report["data"]["month"] in labels:
            latest_report[report["data"]["month"]] = report
    since = min(onboarded) if onboarded else min(e["_at"] for e in live)
    months = (as_of.year - since.year) * 12 + as_of.month - since.month
    if (as_of.day, as_of.time()) < (since.day, since.time()):
        months -= 1
    return {
        "loan_volume": Decimal(volume), "drawdown_count": Decimal(len(of("loan.drawn"))),
        "on_time_repayment_ratio": Decimal(sum(e["data"]["days_late"] == 0 for e in repayments)) / len(repayments)
        if repayments else None,
        "late_repayments": Decimal(sum(e["data"]["days_late"] > 0 for e in repayments)),
        "products_held": Decimal(len({e["data"]["product"] for e in of("product.purchased", live)})),
        "tenure_months": Decimal(max(0, months)),
        "average_deposit_balance": sum((Decimal(r["data"]["average_balance"]) for r in latest_report.values()),
                                       Decimal(0)) / WINDOW,
        "latest_nps": Decimal(answers[-1]["data"]["nps"]) if answers else None,
        "referrals": Decimal(len(of("referral.converted"))), "events_attended": Decimal(len(of("event.attended"))),
        "days_since_loan_activity": Decimal((as_of - max(loan_activity)).days) if loan_activity else None,
        "loan_volume_change": Decimal(volume) / Decimal(previous) - 1 if previous else None,
    }


def test_metrics_from_totals_equal_metrics_from_scratch(db_url, programmes):
    engine = make_engine(db_url)
    init_schema(engine)
    ingestor = Ingestor(engine, programmes, batch_size=5)

    @settings(max_examples=20, deadline=None)
    @given(history=histories(), order=st.randoms(use_true_random=False), reversed_share=st.integers(0, 3),
           as_ofs=st.lists(moments(), min_size=1, max_size=4))
    def check(history: list[dict], order, reversed_share: int, as_ofs: list[datetime]) -> None:  # noqa: ANN001
        prefix = f"x{next(EXAMPLE)}-"  # one database for all examples: each has its own clients and events
        for event in history:
            event["id"], event["client_id"] = prefix + event["id"], prefix + event["client_id"]
        shuffled = list(history)
        order.shuffle(shuffled)  # late events: a month's totals change after later months were written
        outcomes = ingestor.ingest_raw([(n, {k: v for k, v in e.items() if k != "_at"}) for n, e in enumerate(shuffled)])
        assert all(outcome.status == "applied" for outcome in outcomes), [o.error for o in outcomes if o.error]
        for event in shuffled[:len(shuffled) * reversed_share // 10]:
            reverse_event(engine, event["id"])
            history.remove(event)
        for as_of in as_ofs:
            with read_snapshot(engine) as conn:
                read = client_metrics(conn, as_of, months_before(as_of, WINDOW), WINDOW, "CNY",
                                      [prefix + "A", prefix + "B"])
            for client in ("A", "B"):
                expected = from_scratch([e for e in history if e["client_id"] == prefix + client], as_of)
                assert read.get(prefix + client) == expected, (client, as_of)

    try:
        check()
        assert verify_ledger(engine) == []
    finally:
        engine.dispose()
