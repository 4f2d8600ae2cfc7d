"""The reads behind a benefits answer: two statements, so two round trips on PostgreSQL.

The benefits query is the hot path of loan systems pricing an application; it reads the client's
balance with its tier history, then its entitlements with any live quote holding them. Both
statements are built once, at import: building one costs more than running it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, or_, select

from rewards.stacking import Entitlement
from storage.ledger import CLIENT, ENTITLEMENT, HELD_STATUSES, to_entitlement
from storage.models import TierAssignment
from storage.quotes import HOLD, QUOTE
from storage.types import UTCDateTime

TIER = TierAssignment.__table__
_CLIENT_ID = bindparam("client_id")
_AT = bindparam("at", type_=UTCDateTime())

_BALANCE_AND_TIERS = select(CLIENT.c.points_balance, TIER.c.valid_from, TIER.c.tier) \
    .select_from(CLIENT.outerjoin(TIER, TIER.c.client_id == CLIENT.c.client_id)) \
    .where(CLIENT.c.client_id == _CLIENT_ID).order_by(TIER.c.valid_from, TIER.c.id)

_LIVE_HOLDS = select(HOLD.c.entitlement_id, QUOTE.c.id.label("quote_id")) \
    .join(QUOTE, QUOTE.c.id == HOLD.c.quote_id) \
    .where(QUOTE.c.client_id == _CLIENT_ID, QUOTE.c.expires_at > _AT,
           or_(QUOTE.c.resolved_at.is_(None), QUOTE.c.resolved_at > _AT)).subquery()

# Fixed parameters, not an expanding IN: the statement's SQL is then rendered once, not per execution.
_HELD = [bindparam(f"held_{status}", str(status)) for status in HELD_STATUSES]
_HELD_WITH_HOLDS = select(ENTITLEMENT, _LIVE_HOLDS.c.quote_id) \
    .outerjoin(_LIVE_HOLDS, _LIVE_HOLDS.c.entitlement_id == ENTITLEMENT.c.id) \
    .where(ENTITLEMENT.c.client_id == _CLIENT_ID, ENTITLEMENT.c.status.in_(_HELD)) \
    .order_by(ENTITLEMENT.c.id)


@dataclass(frozen=True)
class Holdings:
    """A client's balance, tier history and held entitlements, with the quotes holding some of them."""

    points_balance: int
    tier_history: list[tuple[datetime, str]]
    held: list[Entitlement]  # active and revoked; the caller applies validity windows
    reserved: dict[int, str]  # entitlement id → the live quote holding it


def client_holdings(conn: Connection, client_id: str, at: datetime) -> Holdings | None:
    """What a client holds, with the holds live at `at`: a hold lives until its quote is committed, voided
    or expires (quotes made after `at` count too: holds are about now, and a host whose clock is behind
    another's must still see the other's holds). None if there is no such client."""
    rows = conn.execute(_BALANCE_AND_TIERS, {"client_id": client_id}).all()
    if not rows:
        return None
    history = [(row.valid_from, row.tier) for row in rows if row.tier is not None]
    held: dict[int, Entitlement] = {}
    reserved: dict[int, str] = {}
    for row in conn.execute(_HELD_WITH_HOLDS, {"client_id": client_id, "at": at}):
        held.setdefault(row.id, to_entitlement(row._mapping))
        if row.quote_id is not None:
            reserved.setdefault(row.id, row.quote_id)
    return Holdings(rows[0].points_balance, history, list(held.values()), reserved)
