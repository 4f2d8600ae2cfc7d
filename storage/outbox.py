"""The outbox table: notices written in the caller's transaction, read by whoever delivers them."""
from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from rewards.notices import Notice
from storage.bulk import insert_rows
from storage.models import OutboxEvent

OUTBOX = OutboxEvent.__table__


def record(conn: Connection, notices: Iterable[Notice | None], now: datetime | None = None) -> None:
    """Write `notices` (None items skipped) in the caller's transaction, in order; a notice whose
    dedupe key was already given is dropped. `now`: when they are written (default: the clock's now)."""
    now = now or datetime.now(timezone.utc)
    rows = [_row(item, now) for item in notices if item is not None]
    once = [row for row in rows if row["dedupe_key"] is not None]
    insert_rows(conn, OUTBOX, [row for row in rows if row["dedupe_key"] is None])
    if once:
        conn.execute(_once(conn.dialect.name), once)


def _row(item: Notice, now: datetime) -> dict:
    return {"id": f"msg_{uuid.uuid4().hex}", "type": item.type, "version": item.version,
            "client_id": item.client_id, "occurred_at": item.occurred_at, "data": item.data,
            "dedupe_key": item.dedupe_key, "created_at": now}


@functools.cache
def _once(dialect: str):  # noqa: ANN202 - the dialect's INSERT ... ON CONFLICT DO NOTHING
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(OUTBOX).on_conflict_do_nothing(
        index_elements=[OUTBOX.c.dedupe_key])


def records(conn: Connection, client_id: str | None = None, after_seq: int = 0, limit: int = 1000) -> list[dict]:
    """Outbox records in order (of one client, if given) after `after_seq`, their data decoded."""
    query = select(OUTBOX).where(OUTBOX.c.seq > after_seq).order_by(OUTBOX.c.seq).limit(limit)
    if client_id is not None:
        query = query.where(OUTBOX.c.client_id == client_id)
    return [{**row._mapping, "data": json.loads(row.data)} for row in conn.execute(query)]
