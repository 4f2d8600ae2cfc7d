"""A client's ledger a page at a time, newest first, for callers that cannot take it all at once."""
from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from service.answer import Answer, Moment
from service.errors import InputError, NotFoundError
from storage import ledger
from storage.db import read_snapshot
from storage.models import Client

_CURSOR_DIGITS = 18  # ids are 64-bit: a longer cursor was never given out


class LedgerEntryAnswer(Answer):
    """One immutable ledger entry."""

    id: int
    client_id: str
    kind: str
    reason: str
    points: int
    bps: int
    products: list[str]
    detail: dict[str, Any]
    use: str | None
    rule_id: str | None
    programme_id: str | None
    programme_version: str | None
    event_id: str | None
    entitlement_id: int | None
    reverses_entry_id: int | None
    valid_from: Moment
    valid_to: Moment | None
    created_at: Moment


class LedgerPage(Answer):
    """A page of entries, newest first; `next_cursor` fetches the next page (null on the last)."""

    client_id: str
    entries: list[LedgerEntryAnswer]
    next_cursor: str | None


def ledger_page(engine: Engine, client_id: str, cursor: str | None, limit: int) -> LedgerPage:
    """Up to `limit` entries older than `cursor` (the `next_cursor` of the previous page; None: the newest)."""
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and 0 < len(cursor) <= _CURSOR_DIGITS
                                   and cursor[0] != "0"):
        raise InputError(f"cursor {cursor!r} is not one this API gave; pass next_cursor from the previous page, "
                         "or no cursor for the first page")
    clients = Client.__table__
    with read_snapshot(engine) as conn:
        if conn.execute(select(clients.c.client_id).where(clients.c.client_id == client_id)).first() is None:
            raise NotFoundError(f"no client {client_id!r}: it has no events yet")
        entries = ledger.client_entries(conn, client_id, limit + 1, int(cursor) if cursor else None)
    page = entries[:limit]
    return LedgerPage.model_validate({"client_id": client_id, "entries": page,
                                      "next_cursor": str(page[-1]["id"]) if len(entries) > limit else None})
