"""What reviews keep about clients besides tiers: pins, grace periods and churn flags (reads and writes, in bulk)."""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, bindparam, func, insert, select, update

from engine.context import ONBOARDING_EVENT
from rewards import notices
from rewards.tier_policy import Grace, Pin
from storage import outbox
from storage.models import (
    ChurnFlag,
    Client,
    EventReversal,
    ProcessedEvent,
    TierGrace,
    TierPin,
)
from storage.review_pages import Page, within
from storage.types import as_utc

PIN = TierPin.__table__
GRACE = TierGrace.__table__
FLAG = ChurnFlag.__table__
CLIENT = Client.__table__
EVENTS = ProcessedEvent.__table__
REVERSAL = EventReversal.__table__


def pins_in_force(conn: Connection, at: datetime, clients: list[str] | Page | None = None) -> dict[str, Pin]:
    """Per client (of the ids or the page given), the pin in force at `at` (the latest one started by then,
    if it has not ended)."""
    query = select(PIN).where(PIN.c.valid_from <= at).order_by(PIN.c.client_id, PIN.c.valid_from, PIN.c.id)
    if clients is not None:
        query = query.where(_among(PIN.c.client_id, clients))
    latest: dict[str, dict] = {}
    for row in conn.execute(query):
        latest[row.client_id] = dict(row._mapping)
    return {client_id: Pin(row["tier"], row["until"], row["reason"], row["author"])
            for client_id, row in latest.items() if row["until"] > at}


def _among(client_id: ColumnElement, clients: list[str] | Page) -> ColumnElement[bool]:
    return client_id.in_(clients) if isinstance(clients, list) else within(clients, client_id)


def pin_history(conn: Connection, client_id: str) -> list[dict]:
    """Every pin of a client, oldest first."""
    query = select(PIN).where(PIN.c.client_id == client_id).order_by(PIN.c.valid_from, PIN.c.id)
    return [dict(row._mapping) for row in conn.execute(query)]


def insert_pin(conn: Connection, row: dict) -> None:
    """Record a pin."""
    conn.execute(insert(PIN).values(**row))


def open_graces(conn: Connection, clients: list[str] | Page) -> dict[str, Grace]:
    """Per client (of the ids or the page given), its open grace period."""
    query = select(GRACE.c.client_id, GRACE.c.tier, GRACE.c.until).where(
        _among(GRACE.c.client_id, clients), GRACE.c.ended_at.is_(None))
    return {row.client_id: Grace(row.tier, row.until) for row in conn.execute(query)}


def grace_of(conn: Connection, client_id: str) -> dict | None:
    """A client's open grace period, as a row."""
    row = conn.execute(select(GRACE).where(GRACE.c.client_id == client_id, GRACE.c.ended_at.is_(None))).first()
    return dict(row._mapping) if row else None


def close_graces(conn: Connection, endings: list[dict]) -> None:
    """End open grace periods: dicts of client_id, ended_at, ended_by, outcome (a grace.ended notice each
    that had one open)."""
    if endings:
        opened = open_graces(conn, [e["client_id"] for e in endings])
        outbox.record(conn, [notices.notice("grace.ended", e["ended_at"], client_id=e["client_id"], ended_at=e["ended_at"],
                                            outcome=e["outcome"], review_id=e["ended_by"])
                             for e in endings if e["client_id"] in opened])
        conn.execute(update(GRACE).where(GRACE.c.client_id == bindparam("cid"), GRACE.c.ended_at.is_(None))
                     .values(ended_at=bindparam("p_ended_at"), ended_by=bindparam("p_ended_by"),
                             outcome=bindparam("p_outcome")),
                     [{"cid": e["client_id"], "p_ended_at": e["ended_at"], "p_ended_by": e["ended_by"],
                       "p_outcome": e["outcome"]} for e in endings])


def open_grace_rows(conn: Connection, rows: list[dict]) -> None:
    """Start grace periods (client_id, tier, started_at, until, review_id), with a grace.started notice each."""
    if rows:
        conn.execute(insert(GRACE), rows)
        outbox.record(conn, [notices.notice("grace.started", r["started_at"], client_id=r["client_id"], tier=r["tier"],
                                            started_at=r["started_at"], until=r["until"], review_id=r["review_id"])
                             for r in rows])


def open_flags(conn: Connection, clients: list[str] | Page) -> dict[str, dict]:
    """Per client (of the ids or the page given), its open churn flag as a row."""
    query = select(FLAG).where(_among(FLAG.c.client_id, clients), FLAG.c.cleared_at.is_(None))
    return {row.client_id: dict(row._mapping) for row in conn.execute(query)}


def raise_flags(conn: Connection, rows: list[dict]) -> None:
    """Open churn flags, with a churn.flagged notice each."""
    if rows:
        conn.execute(insert(FLAG), rows)
        outbox.record(conn, [notices.notice("churn.flagged", r["raised_at"], client_id=r["client_id"], tier=r["tier"],
                                            signals=json.loads(r["signals"]), value_minor=r["value"],
                                            review_id=r["raised_by"]) for r in rows])


def refresh_flags(conn: Connection, rows: list[dict]) -> None:
    """Record what a later review saw on open flags: dicts of client_id, tier, signals, value, seen_at, review_id."""
    if rows:
        conn.execute(update(FLAG).where(FLAG.c.client_id == bindparam("cid"), FLAG.c.cleared_at.is_(None))
                     .values(tier=bindparam("p_tier"), signals=bindparam("p_signals"), value=bindparam("p_value"),
                             last_seen_at=bindparam("p_seen_at"), last_review_id=bindparam("p_review_id")),
                     [{"cid": r["client_id"], "p_tier": r["tier"], "p_signals": r["signals"], "p_value": r["value"],
                       "p_seen_at": r["seen_at"], "p_review_id": r["review_id"]} for r in rows])


def clear_flags(conn: Connection, client_ids: list[str], at: datetime, review_id: str) -> None:
    """Close the open flags of clients that recovered, with a churn.cleared notice each; the rows stay as history."""
    if client_ids:
        flagged = sorted(open_flags(conn, client_ids))
        outbox.record(conn, [notices.notice("churn.cleared", at, client_id=client_id, cleared_at=at, review_id=review_id)
                             for client_id in flagged])
        conn.execute(update(FLAG).where(FLAG.c.client_id.in_(client_ids), FLAG.c.cleared_at.is_(None))
                     .values(cleared_at=at, cleared_by=review_id))


def flags(conn: Connection, tier: str | None = None, history: bool = False, client_id: str | None = None) -> list[dict]:
    """Churn flags, most valuable first: open ones, or every one with `history`; signals decoded."""
    query = select(FLAG, CLIENT.c.name).join(CLIENT, CLIENT.c.client_id == FLAG.c.client_id) \
        .order_by(FLAG.c.value.desc(), FLAG.c.client_id, FLAG.c.raised_at)
    conditions = []
    if not history:
        conditions.append(FLAG.c.cleared_at.is_(None))
    if tier is not None:
        conditions.append(FLAG.c.tier == tier)
    if client_id is not None:
        conditions.append(FLAG.c.client_id == client_id)
    if conditions:
        query = query.where(and_(*conditions))
    return [{**row._mapping, "signals": json.loads(row.signals)} for row in conn.execute(query)]


def tenure_starts(conn: Connection, client_ids: list[str], at: datetime) -> dict[str, datetime]:
    """Per client, when its tenure began as of `at`: its first onboarding by then that was not reversed,
    or its first event (as the tenure_months metric counts)."""
    onboarded = select(EVENTS.c.client_id, func.min(EVENTS.c.occurred_at).label("first")).where(
        EVENTS.c.client_id.in_(client_ids), EVENTS.c.type == ONBOARDING_EVENT, EVENTS.c.occurred_at <= at,
        EVENTS.c.event_id.not_in(select(REVERSAL.c.event_id))).group_by(EVENTS.c.client_id)
    starts = {row.client_id: as_utc(row.first) for row in conn.execute(onboarded)}
    query = select(CLIENT.c.client_id, CLIENT.c.first_seen_at).where(CLIENT.c.client_id.in_(client_ids))
    return {row.client_id: starts.get(row.client_id, row.first_seen_at) for row in conn.execute(query)}
