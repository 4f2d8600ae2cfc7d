"""A client as rules see it at a moment: tier then, segment, tenure."""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ClientContext:
    """What rules may test about a client, as of an event's time."""

    client_id: str
    tier: str
    segment: str | None
    tenure_months: int

    def matching_view(self) -> dict:
        """The client as the matching core sees it (an unknown segment is absent, not null)."""
        view: dict = {"tier": self.tier, "tenure_months": self.tenure_months}
        if self.segment is not None:
            view["segment"] = self.segment
        return view


def whole_months(start: datetime, end: datetime) -> int:
    """Complete calendar months from `start` to `end` (0 when end is not after start)."""
    months = (end.year - start.year) * 12 + end.month - start.month
    if (end.day, end.time()) < (start.day, start.time()):
        months -= 1
    return max(0, months)


def tier_at(history: list[tuple[datetime, str]], moment: datetime, default: str) -> str:
    """The tier in force at `moment`, from (valid_from, tier) pairs sorted by time."""
    position = bisect.bisect_right([start for start, _ in history], moment)
    return history[position - 1][1] if position else default


def context_at(client_id: str, moment: datetime, history: list[tuple[datetime, str]], lowest_tier: str,
               segment: str | None, onboarded_at: datetime | None, first_seen_at: datetime | None) -> ClientContext:
    """The client's context as of `moment`: only what was already known then counts."""
    known_segment = segment if onboarded_at is not None and onboarded_at <= moment else None
    since = onboarded_at or first_seen_at or moment
    return ClientContext(client_id, tier_at(history, moment, lowest_tier), known_segment, whole_months(since, moment))
