"""The wall clock, injectable so tests control time."""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]
# How far ahead of this machine's clock a moment may be (source systems' clocks drift).
MAX_CLOCK_SKEW = timedelta(minutes=15)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)
