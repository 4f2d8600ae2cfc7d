"""Records of requests sent with an Idempotency-Key, so a retry gets the first response again."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import write_transaction
from storage.models import IdempotencyRecord

RECORDS = IdempotencyRecord.__table__
# A first request unfinished after this long died with its process, perhaps after its effect was
# committed: running it again could apply it twice, so its key answers "outcome unknown" instead.
ABANDONED_AFTER = timedelta(minutes=2)
NEW, REPLAY, MISMATCH, IN_PROGRESS, UNKNOWN = "new", "replay", "mismatch", "in_progress", "unknown"


@dataclass(frozen=True)
class Claim:
    """What to do with a request: run it (new), replay a stored response, or refuse it."""

    outcome: str
    status_code: int | None = None
    content_type: str | None = None
    body: str | None = None


def claim(engine: Engine, caller: str, key: str, request_hash: str, now: datetime) -> Claim:
    """Record that a request with this key has started, or say why it must not run (`caller`: the API key id)."""
    try:
        with write_transaction(engine) as conn:
            conn.execute(insert(RECORDS).values(caller=caller, key=key, request_hash=request_hash, created_at=now))
        return Claim(NEW)
    except IntegrityError:
        pass
    with write_transaction(engine) as conn:
        row = conn.execute(select(RECORDS).where(RECORDS.c.caller == caller, RECORDS.c.key == key)).first()
        if row is None:  # the first request failed and released the key meanwhile
            conn.execute(insert(RECORDS).values(caller=caller, key=key, request_hash=request_hash, created_at=now))
            return Claim(NEW)
        if row.request_hash != request_hash:
            return Claim(MISMATCH)
        if row.status_code is not None:
            return Claim(REPLAY, row.status_code, row.content_type, row.response)
        return Claim(IN_PROGRESS if now - row.created_at < ABANDONED_AFTER else UNKNOWN)


def complete(engine: Engine, caller: str, key: str, status_code: int, content_type: str | None, body: str) -> None:
    """Store the first response for replay."""
    with write_transaction(engine) as conn:
        conn.execute(update(RECORDS).where(RECORDS.c.caller == caller, RECORDS.c.key == key)
                     .values(status_code=status_code, content_type=content_type, response=body))


def release(engine: Engine, caller: str, key: str) -> None:
    """Forget an unfinished claim (the request failed before deciding anything), so a retry runs again."""
    with write_transaction(engine) as conn:
        conn.execute(delete(RECORDS).where(RECORDS.c.caller == caller, RECORDS.c.key == key,
                                           RECORDS.c.status_code.is_(None)))
