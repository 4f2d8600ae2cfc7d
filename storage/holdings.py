"""The read behind a benefits answer: one statement, so one snapshot and one round trip on PostgreSQL.

The benefits query is the hot path of loan systems pricing an application. It reads the client's
balance, its tier at the moment, and its entitlements with any live quote holding them, in a single
statement built once at import (building one costs more than running it).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, bindparam, or_, select

from rewards.stacking import Entitlement
from storage.ledger import CLIENT, ENTITLEMENT, HELD_STATUSES, to_entitlement
from storage.models import TierAssignment
from storage.quotes import HOLD, QUOTE
from storage.types import UTCDateTime

TIER = TierAssignment.__table__
_CLIENT_ID = bindparam("client_id")
_AT = bindparam("at", type_=UTCDateTime())
# Fixed parameters, not an expanding IN: the statement's SQL is then rendered once, not per execution.
_HELD = [bindparam(f"held_{status}", str(status)) for status in HELD_STATUSES]

_TIER_AT = select(TIER.c.tier).where(TIER.c.client_id == _CLIENT_ID, TIER.c.valid_from <= _AT) \
    .order_by(TIER.c.valid_from.desc(), TIER.c.id.desc()).limit(1).scalar_subquery()

_LIVE_HOLDS = select(HOLD.c.entitlement_id, QUOTE.c.id.label("quote_id")) \
    .join(QUOTE, QUOTE.c.id == HOLD.c.quote_id) \
    .where(QUOTE.c.client_id == _CLIENT_ID, QUOTE.c.expires_at > _AT,
           or_(QUOTE.c.resolved_at.is_(None), QUOTE.c.resolved_at > _AT)).subquery()

_HOLDINGS = select(CLIENT.c.points_balance, _TIER_AT.label("tier_at"), ENTITLEMENT, _LIVE_HOLDS.c.quote_id) \
    .select_from(CLIENT.outerjoin(ENTITLEMENT, and_(ENTITLEMENT.c.client_id == CLIENT.c.client_id,
                                                    ENTITLEMENT.c.status.in_(_HELD)))
                 .outerjoin(_LIVE_HOLDS, _LIVE_HOLDS.c.entitlement_id == ENTITLEMENT.c.id)) \
    .where(CLIENT.c.client_id == _CLIENT_ID).order_by(ENTITLEMENT.c.id)


@dataclass(frozen=True)
class Holdings:
    """A client's balance, tier and held entitlements at a moment, with the quotes holding some of them."""

    points_balance: int
    tier: str | None  # None before the client's first tier assignment
    held: list[Entitlement]  # active and revoked; the caller applies validity windows
    reserved: dict[int, str]  # entitlement id → the live quote holding it


def client_holdings(conn: Connection, client_id: str, at: datetime) -> Holdings | None:
    """What a client holds at `at`, or None if there is no such client.

    A hold lives until its quote is committed, voided or expires; quotes made after `at` count too:
    holds are about now, and a host whose clock is behind another's must still see the other's holds.
    """
    rows = conn.execute(_HOLDINGS, {"client_id": client_id, "at": at}).all()
    if not rows:
        return None
    held: dict[int, Entitlement] = {}
    reserved: dict[int, str] = {}
    for row in rows:
        if row.id is None:  # the client holds nothing: one row, from the outer join
            continue
        held.setdefault(row.id, to_entitlement(row._mapping))
        if row.quote_id is not None:
            reserved.setdefault(row.id, row.quote_id)
    return Holdings(rows[0].points_balance, rows[0].tier_at, list(held.values()), reserved)
