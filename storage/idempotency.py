"""Records of requests sent with an Idempotency-Key, so a retry gets the first response again.

A record is written in the same transaction as the request's work (see `storage.db.RequestTransaction`),
together with the response: it exists if and only if the work committed, so a key never claims an
outcome the database does not hold, and a first attempt that failed leaves nothing behind.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.dialects import postgresql, sqlite

from storage.models import IdempotencyRecord

RECORDS = IdempotencyRecord.__table__
NEW, REPLAY, MISMATCH, UNKNOWN = "new", "replay", "mismatch", "unknown"
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout expired


class KeyInUse(Exception):
    """Another attempt with the same key still runs, past the lock timeout."""


@dataclass(frozen=True)
class Claim:
    """What to do with a request: run it (new), replay a stored response, or refuse it."""

    outcome: str
    status_code: int | None = None
    content_type: str | None = None
    body: str | None = None


def claim(conn: Connection, caller: str, key: str, request_hash: str, now: datetime) -> Claim:
    """Record, in the request's transaction `conn`, that this key is being used (`caller`: the API key id),
    or say why the request must not run. A concurrent first attempt holds the record's lock until it
    commits or rolls back: this waits for it (up to the lock timeout), then replays or runs."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    if conn.dialect.name == "postgresql":
        # Attempts with one key take turns on a lock of their own, so a lock timeout here means exactly that
        # the key is in use; one on a table (a schema change, a stuck writer) stays a database error.
        try:
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(f"{caller}:{key}", 0))))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                raise KeyInUse(key) from None
            raise
    inserted = conn.execute(dialect.insert(RECORDS).values(caller=caller, key=key, request_hash=request_hash,
                                                           created_at=now)
                            .on_conflict_do_nothing().returning(RECORDS.c.key)).first()
    if inserted is not None:
        return Claim(NEW)
    row = conn.execute(select(RECORDS).where(RECORDS.c.caller == caller, RECORDS.c.key == key)).first()
    if row is None:  # unreachable: the conflicting record was committed before the insert gave up
        return Claim(UNKNOWN)
    if row.request_hash != request_hash:
        return Claim(MISMATCH)
    if row.status_code is None:  # written by a version that stored the response separately (schema 3)
        return Claim(UNKNOWN)
    return Claim(REPLAY, row.status_code, row.content_type, row.response)


def complete(conn: Connection, caller: str, key: str, status_code: int, content_type: str | None, body: str) -> None:
    """Store the first response for replay, in the request's transaction."""
    conn.execute(update(RECORDS).where(RECORDS.c.caller == caller, RECORDS.c.key == key)
                 .values(status_code=status_code, content_type=content_type, response=body))
