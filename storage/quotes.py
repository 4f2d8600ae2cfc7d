"""Quotes and the single-use entitlements they hold."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, and_, insert, or_, select, update

from storage.models import Quote, QuoteHold

QUOTE = Quote.__table__
HOLD = QuoteHold.__table__
HELD, COMMITTED, VOIDED, EXPIRED = "held", "committed", "voided", "expired"


def reserved_entitlements(conn: Connection, client_id: str, at: datetime) -> dict[int, str]:
    """Entitlement id → id of the quote holding it at `at`: a hold lives until its quote is committed,
    voided or expires. Quotes made after `at` count too: holds are about now, and a host whose clock is
    behind another's must still see the other's holds."""
    query = select(HOLD.c.entitlement_id, QUOTE.c.id).join(QUOTE, QUOTE.c.id == HOLD.c.quote_id).where(
        QUOTE.c.client_id == client_id, QUOTE.c.expires_at > at,
        or_(QUOTE.c.resolved_at.is_(None), QUOTE.c.resolved_at > at))
    return {row.entitlement_id: row.id for row in conn.execute(query)}


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
