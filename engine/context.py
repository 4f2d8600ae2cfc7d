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


ONBOARDING_EVENT = "client.onboarded"  # its name, segment and industry form the client profile


def context_at(client_id: str, moment: datetime, tiers: list[tuple[datetime, str]], lowest_tier: str,
               onboardings: list[tuple[datetime, str | None]], first_seen_at: datetime) -> ClientContext:
    """The client's context as of `moment`, from what was true then, whatever order events arrived in.

    `tiers` and `onboardings` are (time, value) pairs sorted by time. The segment is the one of the
    latest onboarding at or before `moment`; tenure counts from the first onboarding (or, for a
    client never onboarded, from its first event).
    """
    position = bisect.bisect_right([at for at, _ in onboardings], moment)
    segment = onboardings[position - 1][1] if position else None
    since = onboardings[0][0] if position else first_seen_at
    return ClientContext(client_id, tier_at(tiers, moment, lowest_tier), segment, whole_months(since, moment))
