"""Generate a realistic, deterministic synthetic portfolio of client activity (NDJSON events).

Realistic means: a skewed size distribution (a few large groups, many SMEs), seasonality (a Spring
Festival dip in February, year-end peaks), a minority of clients who repay late, cross-sold products,
surveys with an NPS spread, event attendance, referrals, and clients who go dormant. The same seed,
size and end date always give the same events.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rewards.caps import months_before

DEFAULT_END = datetime(2026, 10, 31, 18, 0, tzinfo=UTC)
# Relative activity by calendar month: Spring Festival dip in February, quarter- and year-end peaks.
SEASONALITY = {1: 0.9, 2: 0.55, 3: 1.25, 4: 1.0, 5: 1.0, 6: 1.25, 7: 0.9, 8: 0.85, 9: 1.15, 10: 0.75, 11: 1.0,
               12: 1.45}
# (share of clients, annual drawdown volume range in CNY, drawdowns a month, segment weights)
SIZES = {
    "large": (0.06, (120e6, 900e6), 2.0, {"strategic": 0.8, "partnership": 0.2}),
    "medium": (0.24, (25e6, 110e6), 1.0, {"strategic": 0.3, "partnership": 0.4, "transactional": 0.3}),
    "small": (0.70, (1e6, 28e6), 0.5, {"transactional": 0.75, "partnership": 0.15, "special_assistance": 0.10}),
}
PRODUCT_TERMS = {"working_capital": (6, 12), "trade_finance": (3, 6), "term_loan": (24, 60),
                 "project_finance": (60, 120)}
PRODUCT_MIX = {"large": [0.35, 0.15, 0.3, 0.2], "medium": [0.5, 0.2, 0.25, 0.05], "small": [0.6, 0.3, 0.1, 0.0]}
CROSS_SELL = ["cash_management", "fx_hedging", "payroll", "insurance", "trade_services"]
INDUSTRIES = ["manufacturing", "infrastructure", "logistics", "retail", "energy", "agriculture", "technology",
              "textiles", "construction", "healthcare"]


@dataclass
class _Client:
    client_id: str
    size: str
    segment: str
    annual_volume: float
    onboarded_at: datetime
    dormant_from: datetime | None
    late_propensity: float
    deposit_level: float
    surveyed: bool
    attends: bool


def generate(clients: int = 300, months: int = 18, seed: int = 7, end: datetime = DEFAULT_END) -> list[dict]:
    """The portfolio's events, sorted by time (each a dict in the NDJSON envelope)."""
    rng = random.Random(seed)
    end = end.astimezone(UTC)
    start = months_before(end, months)
    events: list[dict] = []
    for index in range(clients):
        profile = _client(rng, index, start, end)
        events.extend(_activity(rng, profile, start, end, seed))
    events.sort(key=lambda e: (e["occurred_at"], e["id"]))
    return events


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _client(rng: random.Random, index: int, start: datetime, end: datetime) -> _Client:
    size = _pick(rng, {name: spec[0] for name, spec in SIZES.items()})
    _share, (low, high), _rate, segments = SIZES[size]
    volume = math.exp(rng.uniform(math.log(low), math.log(high)))
    if rng.random() < 0.65:  # an established client, onboarded before the period
        onboarded = start - timedelta(days=rng.randrange(30, 5 * 365))
    else:  # a new client, won during the period
        onboarded = start + timedelta(days=rng.randrange(0, max(1, (end - start).days - 30)))
    dormant = None
    if rng.random() < 0.08:
        dormant = onboarded + timedelta(days=rng.randrange(60, 400))
    return _Client(
        client_id=f"C-{index + 1:05d}", size=size, segment=_pick(rng, segments), annual_volume=volume,
        onboarded_at=max(onboarded, datetime(2020, 1, 2, tzinfo=UTC)).replace(hour=9, minute=0, second=0),
        dormant_from=dormant, late_propensity=0.3 if rng.random() < 0.15 else 0.02,
        deposit_level=volume * rng.uniform(0.02, 0.15) if rng.random() < 0.65 else 0.0,
        surveyed=rng.random() < 0.6, attends=rng.random() < (0.7 if size == "large" else 0.35))


def _activity(rng: random.Random, c: _Client, start: datetime, end: datetime, seed: int) -> Iterator[dict]:
    """The client's events inside the period (its onboarding whenever it was), never after it went quiet."""
    first = _stamp(max(start, c.onboarded_at))
    last = _stamp(min(end, c.dormant_from) if c.dormant_from else end)
    for event in _simulate(rng, c, start, end, seed):
        if event["type"] == "client.onboarded" or first < event["occurred_at"] <= last:
            yield event


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _simulate(rng: random.Random, c: _Client, start: datetime, end: datetime, seed: int) -> Iterator[dict]:
    counter = iter(range(10**9))

    def emit(when: datetime, type_: str, **data) -> dict:  # noqa: ANN003
        return {"id": f"g{seed}-{c.client_id}-{next(counter):05d}", "client_id": c.client_id, "type": type_,
                "occurred_at": _stamp(when), "data": data}

    yield emit(c.onboarded_at, "client.onboarded", name=f"Enterprise {c.client_id[2:]}", segment=c.segment,
               industry=rng.choice(INDUSTRIES))
    # Loans drawn in the year before the data starts are still being repaid during it: simulate from
    # then, and keep only what happens inside the period (see `visible`).
    first = max(months_before(start, 12), c.onboarded_at + timedelta(days=1))
    stop = min(end, c.dormant_from) if c.dormant_from else end
    held: set[str] = set()
    month = datetime(first.year, first.month, 1, tzinfo=UTC)
    while month <= stop:
        season = SEASONALITY[month.month]
        days = (_next_month(month) - month).days

        def moment() -> datetime:
            return month + timedelta(days=rng.randrange(days), hours=rng.randrange(8, 19), minutes=rng.randrange(60))

        rate = SIZES[c.size][2] * season
        for _ in range(int(rate) + (rng.random() < rate - int(rate))):
            when = moment()
            if not first <= when <= stop:
                continue
            product = rng.choices(list(PRODUCT_TERMS), weights=PRODUCT_MIX[c.size])[0]
            amount = max(100_000, round(c.annual_volume / 12 / SIZES[c.size][2] * rng.lognormvariate(0, 0.35), -3))
            term = rng.randint(*PRODUCT_TERMS[product])
            loan_id = f"L-{c.client_id[2:]}-{when:%y%m%d%H%M}"
            yield emit(when, "loan.drawn", loan_id=loan_id, product=product, amount=f"{amount:.2f}", currency="CNY",
                       term_months=term)
            yield from _repayments(rng, c, emit, loan_id, amount, term, when, stop)
        if c.deposit_level and month + timedelta(days=days - 1) <= stop:
            balance = round(c.deposit_level * rng.uniform(0.8, 1.2) * (0.9 + season / 10), -2)
            yield emit(month + timedelta(days=days - 1, hours=20), "deposit.reported", month=f"{month:%Y-%m}",
                       average_balance=f"{balance:.2f}")
        if rng.random() < (0.06 if c.size == "large" else 0.025) and len(held) < len(CROSS_SELL):
            product = rng.choice([p for p in CROSS_SELL if p not in held])
            held.add(product)
            yield emit(moment(), "product.purchased", product=product)
        if c.surveyed and month.month in (6, 12):
            nps = _nps(rng, c)
            survey = {"nps": nps} if rng.random() < 0.4 else {"nps": nps, "csat": max(1, min(5, 1 + nps // 2))}
            yield emit(moment(), "survey.answered", **survey)
        if c.attends and month.month == 11:
            yield emit(month + timedelta(days=14, hours=14), "event.attended", kind="client_day")
        if rng.random() < (0.08 if c.attends else 0.02):
            yield emit(moment(), "event.attended", kind=rng.choice(["forum", "salon", "training"]))
        if rng.random() < 0.01:
            yield emit(moment(), "referral.converted", referred_client_id=f"R-{c.client_id[2:]}-{month:%y%m}")
        month = _next_month(month)


def _repayments(rng: random.Random, c: _Client, emit, loan_id: str, amount: float, term: int,  # noqa: ANN001
                drawn: datetime, stop: datetime) -> Iterator[dict]:
    """Monthly instalments until the loan ends or the data does."""
    instalments = term
    for k in range(1, instalments + 1):
        due = _add_months(drawn, k).replace(hour=0, minute=0)
        late = rng.randrange(1, 61) if rng.random() < c.late_propensity else 0
        paid = due + timedelta(days=late, hours=10)
        if paid > stop:
            return
        yield emit(paid, "repayment.made", loan_id=loan_id, amount=f"{amount / instalments:.2f}",
                   due_date=f"{due:%Y-%m-%d}", days_late=late)


def _nps(rng: random.Random, c: _Client) -> int:
    weights = [0.35, 0.3, 0.35] if c.late_propensity > 0.1 else [0.1, 0.3, 0.6]  # detractor, passive, promoter
    band = rng.choices([(0, 6), (7, 8), (9, 10)], weights=weights)[0]
    return rng.randint(*band)


def _next_month(month: datetime) -> datetime:
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def _add_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    year, month0 = divmod(index, 12)
    day = min(moment.day, 28)
    return moment.replace(year=year, month=month0 + 1, day=day)
