"""Requests sent with an Idempotency-Key: the key's record and the request's work are written in ONE
transaction, so the key replays exactly the work that committed and a retry of a failed attempt runs
for real. The caller (the API's request guard) begins, runs the request inside `ambient()`, then
completes (stores the answer and commits) or rolls back.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Engine

from storage import idempotency as records
from storage.db import RequestTransaction

Claim = records.Claim
NEW, REPLAY, MISMATCH, UNKNOWN = records.NEW, records.REPLAY, records.MISMATCH, records.UNKNOWN
IN_USE = "in-use"  # another attempt with the key still holds its record past the lock timeout


class KeyedRequest:
    """A keyed request's open write transaction, from its claim to its commit or rollback."""

    def __init__(self, transaction: RequestTransaction, caller: str, key: str):
        self._transaction, self._caller, self._key = transaction, caller, key

    @contextmanager
    def ambient(self) -> Iterator[None]:
        """Every write transaction the request's work opens inside the block joins this one."""
        with self._transaction.ambient():
            yield

    def complete(self, status: int, content_type: str | None, body: str) -> None:
        """Store the answer with the work and commit both; on any failure neither is kept."""
        try:
            records.complete(self._transaction.conn, self._caller, self._key, status, content_type, body)
        except BaseException:
            self._transaction.rollback()
            raise
        self._transaction.commit()

    def rollback(self) -> None:
        """Undo the request's work and its key's record (never raises: it is cleanup)."""
        self._transaction.rollback()


def begin(engine: Engine, caller: str, key: str, request_hash: str, now: datetime) -> tuple[KeyedRequest | None, Claim]:
    """Open the request's transaction and claim `key` for `caller` (an API key id). For a NEW claim, the
    open request to run; otherwise None (nothing is held) and the claim saying what to answer instead."""
    transaction = RequestTransaction(engine)
    try:
        claim = records.claim(transaction.conn, caller, key, request_hash, now)
    except records.KeyInUse:
        transaction.rollback()
        return None, Claim(IN_USE)
    except BaseException:
        transaction.rollback()
        raise
    if claim.outcome != NEW:
        transaction.rollback()
        return None, claim
    return KeyedRequest(transaction, caller, key), claim
