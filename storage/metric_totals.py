"""The per-client monthly totals the metrics read (engine/metric_totals.py): kept, rebuilt and checked."""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from itertools import groupby

from sqlalchemy import Connection, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from engine.metric_totals import COLUMNS, Fact, MonthTotals, add, first_purchases, fold, month_of
from storage.bulk import insert_rows
from storage.models import ClientMonth, ClientProduct, EventReversal, ProcessedEvent
from storage.types import as_utc

MONTH = ClientMonth.__table__
PRODUCT = ClientProduct.__table__
EVENTS = ProcessedEvent.__table__
REVERSAL = EventReversal.__table__
FACT_COLUMNS = (EVENTS.c.client_id, EVENTS.c.event_id, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.amount_minor,
                EVENTS.c.number, EVENTS.c.label)


def fact(row: dict) -> Fact:
    """The Fact of a processed-event row about to be written."""
    return Fact(row["client_id"], row["event_id"], row["type"], row["occurred_at"], row["amount_minor"],
                row["number"], row["label"])


def record(conn: Connection, facts: list[Fact]) -> None:
    """Fold newly applied events into the stored totals (the clients are locked by the caller)."""
    if not facts:
        return
    keys = {(f.client_id, month_of(f.occurred_at)) for f in facts}
    keys |= {(f.client_id, f.label) for f in facts if f.type == "deposit.reported" and f.label}
    totals = _load(conn, keys)
    for item in facts:
        add(totals, item)
    _save(conn, {key: totals[key] for key in keys})
    _save_products(conn, first_purchases(facts), keep_earlier=True)


def rebuild(conn: Connection, client_ids: list[str] | None = None) -> None:
    """Recompute the totals of `client_ids` (None: every client) from their live events, replacing what is stored."""
    conn.execute(delete(MONTH).where(MONTH.c.client_id.in_(client_ids)) if client_ids is not None else delete(MONTH))
    conn.execute(delete(PRODUCT).where(PRODUCT.c.client_id.in_(client_ids)) if client_ids is not None
                 else delete(PRODUCT))
    for facts in _facts_by_client(conn, client_ids):
        _save(conn, fold(facts))
        _save_products(conn, first_purchases(facts), keep_earlier=False)


def mismatches(conn: Connection, limit: int = 20) -> list[str]:
    """Where the stored totals differ from a rebuild from the events (at most `limit` lines; none: consistent)."""
    stored = _stored_by_client(conn)
    stored_products = _stored_products(conn)
    problems: list[str] = []
    seen: set[str] = set()
    for facts in _facts_by_client(conn, None):
        client_id = facts[0].client_id
        seen.add(client_id)
        expected = {month: totals for (_, month), totals in fold(facts).items()}
        problems += _compare(client_id, expected, stored.get(client_id, {}))
        expected_products = {product: at for (_, product), at in first_purchases(facts).items()}
        if expected_products != stored_products.get(client_id, {}):
            problems.append(f"client {client_id}: products taken up are stored as "
                            f"{sorted(stored_products.get(client_id, {}))}, the events say {sorted(expected_products)}")
    for client_id in sorted(set(stored) - seen):
        problems += _compare(client_id, {}, stored[client_id])
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more differences in the monthly totals"]
    return problems


def _compare(client_id: str, expected: dict[str, MonthTotals], stored: dict[str, MonthTotals]) -> list[str]:
    empty = MonthTotals()
    problems = []
    for month in sorted(set(expected) | set(stored)):
        want, have = expected.get(month, empty), stored.get(month, empty)
        if want != have:
            columns = [c for c in COLUMNS if getattr(want, c) != getattr(have, c)]
            problems.append(f"client {client_id}, month {month}: stored totals differ from the events in "
                            + ", ".join(f"{c} ({getattr(have, c)} stored, {getattr(want, c)} from the events)"
                                        for c in columns))
    return problems


def _facts_by_client(conn: Connection, client_ids: list[str] | None) -> Iterator[list[Fact]]:
    """Each client's live events, one client at a time (streamed: a rebuild of millions holds one client)."""
    query = select(*FACT_COLUMNS).where(EVENTS.c.event_id.not_in(select(REVERSAL.c.event_id))) \
        .order_by(EVENTS.c.client_id)
    if client_ids is not None:
        query = query.where(EVENTS.c.client_id.in_(client_ids))
    rows = conn.execute(query, execution_options={"yield_per": 5000})  # streamed, on this statement only
    for _, group in groupby((Fact(r[0], r[1], r[2], as_utc(r[3]), *r[4:]) for r in rows), key=lambda f: f.client_id):
        yield list(group)


def _load(conn: Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], MonthTotals]:
    clients, months = {k[0] for k in keys}, {k[1] for k in keys}
    query = select(MONTH).where(MONTH.c.client_id.in_(clients), MONTH.c.month.in_(months))
    return {key: totals for key, totals in _rows(conn.execute(query)) if key in keys}


def _stored_by_client(conn: Connection) -> dict[str, dict[str, MonthTotals]]:
    stored: dict[str, dict[str, MonthTotals]] = {}
    for (client_id, month), totals in _rows(conn.execute(select(MONTH))):
        stored.setdefault(client_id, {})[month] = totals
    return stored


def _stored_products(conn: Connection) -> dict[str, dict[str, object]]:
    stored: dict[str, dict[str, object]] = {}
    for client_id, product, at in conn.execute(select(PRODUCT.c.client_id, PRODUCT.c.product, PRODUCT.c.first_at)):
        stored.setdefault(client_id, {})[product] = at
    return stored


def _rows(result: Iterable) -> Iterator[tuple[tuple[str, str], MonthTotals]]:
    for row in result:
        values = row._mapping
        yield (values["client_id"], values["month"]), MonthTotals(**{c: values[c] for c in COLUMNS})


def _upsert(conn: Connection, table):  # noqa: ANN001, ANN202 - a Table; the dialect's INSERT
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def _save(conn: Connection, totals: dict[tuple[str, str], MonthTotals]) -> None:
    insert_rows(conn, MONTH, [{"client_id": client_id, "month": month, **item.as_row()}
                              for (client_id, month), item in totals.items()], _replace(conn.dialect.name))


@functools.cache
def _replace(dialect: str):  # noqa: ANN202 - the dialect's INSERT ... ON CONFLICT DO UPDATE
    """An INSERT of a month's totals that replaces the stored ones (one statement per dialect: it is
    compiled once)."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(MONTH)
    return statement.on_conflict_do_update(index_elements=[MONTH.c.client_id, MONTH.c.month],
                                           set_={c: statement.excluded[c] for c in COLUMNS})


def _save_products(conn: Connection, first: dict[tuple[str, str], object], keep_earlier: bool) -> None:
    if not first:
        return
    statement = _upsert(conn, PRODUCT)
    earlier = case((statement.excluded.first_at < PRODUCT.c.first_at, statement.excluded.first_at),
                   else_=PRODUCT.c.first_at) if keep_earlier else statement.excluded.first_at
    statement = statement.on_conflict_do_update(index_elements=[PRODUCT.c.client_id, PRODUCT.c.product],
                                                set_={"first_at": earlier})
    conn.execute(statement, [{"client_id": c, "product": p, "first_at": at} for (c, p), at in first.items()])
