"""Quotes and the single-use entitlements they hold."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, and_, insert, select, update

from storage.models import Quote, QuoteHold

QUOTE = Quote.__table__
HOLD = QuoteHold.__table__
HELD, COMMITTED, VOIDED, EXPIRED = "held", "committed", "voided", "expired"


def insert_quote(conn: Connection, row: dict, entitlement_ids: list[int]) -> None:
    """Store a new quote and its holds."""
    conn.execute(insert(QUOTE).values(**row, status=HELD))
    if entitlement_ids:
        conn.execute(insert(HOLD), [{"quote_id": row["id"], "entitlement_id": e} for e in entitlement_ids])


def find_quote(conn: Connection, quote_id: str) -> dict | None:
    """The quote row with its held entitlement ids, or None."""
    row = conn.execute(select(QUOTE).where(QUOTE.c.id == quote_id)).first()
    if row is None:
        return None
    holds = conn.execute(select(HOLD.c.entitlement_id).where(HOLD.c.quote_id == quote_id)
                         .order_by(HOLD.c.entitlement_id)).scalars().all()
    return {**row._mapping, "holds": list(holds)}


def effective_status(quote: dict, now: datetime) -> str:
    """held, committed, voided, or expired (held past its expiry)."""
    return EXPIRED if quote["status"] == HELD and now >= quote["expires_at"] else quote["status"]


def resolve(conn: Connection, quote_id: str, status: str, now: datetime, loan_id: str | None = None) -> bool:
    """Move a live held quote to `status`; False if it was not live any more (someone else resolved it)."""
    result = conn.execute(update(QUOTE).where(and_(QUOTE.c.id == quote_id, QUOTE.c.status == HELD,
                                                   QUOTE.c.expires_at > now))
                          .values(status=status, resolved_at=now, loan_id=loan_id))
    return result.rowcount == 1
