"""Retrying a whole transaction when a concurrent writer got there first."""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

T = TypeVar("T")
ATTEMPTS = 8


def _retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        # A concurrent writer inserted the same event, client or reversal: re-read and re-decide.
        # Other integrity errors fail the same way every time and are not retried.
        return getattr(exc.orig, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(exc.orig)
    if isinstance(exc, OperationalError):
        # Not "database is locked" (SQLite) nor a lock timeout (PostgreSQL): those already waited
        # their whole bound for the lock, and retrying would multiply it.
        text = str(exc.orig).lower()
        return any(word in text for word in ("deadlock", "could not serialize"))
    return False


def with_retry(work: Callable[[], T]) -> T:
    """Run `work` (one whole transaction) again after a conflict with a concurrent writer."""
    for attempt in range(ATTEMPTS):
        try:
            return work()
        except DBAPIError as exc:
            if attempt == ATTEMPTS - 1 or not _retryable(exc):
                raise
            time.sleep(random.uniform(0, 0.02 * 2 ** attempt))
    raise AssertionError("unreachable")
