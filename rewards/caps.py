"""Per-client caps on a rule within a calendar period (UTC)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from engine.schema import Cap


def period_bounds(per: str, at: datetime) -> tuple[datetime | None, datetime | None]:
    """Start (inclusive) and end (exclusive) of the UTC calendar period containing `at`."""
    at = at.astimezone(UTC)
    if per == "lifetime":
        return None, None
    if per == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    month0 = {"month": at.month, "quarter": 3 * ((at.month - 1) // 3) + 1, "year": 1}[per]
    start = datetime(at.year, month0, 1, tzinfo=UTC)
    span = {"month": 1, "quarter": 3, "year": 12}[per]
    month_index = start.month - 1 + span
    end = datetime(start.year + month_index // 12, month_index % 12 + 1, 1, tzinfo=UTC)
    return start, end


@dataclass
class CapUsage:
    """What a rule has already given a client in the current period."""

    points: int = 0
    times: int = 0


def allowed(cap: Cap | None, usage: CapUsage, points: int) -> tuple[bool, int]:
    """Whether the rule may fire again, and how many of `points` it may still give."""
    if cap is None:
        return True, points
    if cap.times is not None and usage.times >= cap.times:
        return False, 0
    if cap.points is not None:
        points = max(0, min(points, cap.points - usage.points))
    return True, points


def usage_between(history: list[tuple[datetime, int, str]], start: datetime | None, end: datetime | None) -> CapUsage:
    """Points and distinct firings among (valid_from, points, event_id) records inside [start, end)."""
    inside = [(points, event_id) for at, points, event_id in history
              if start is None or start <= at < end]  # type: ignore[operator]
    return CapUsage(points=sum(points for points, _ in inside), times=len({event_id for _, event_id in inside}))


def months_before(moment: datetime, months: int) -> datetime:
    """The same day and time `months` calendar months earlier (clamped to the month's last day)."""
    index = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    last_day = (datetime(year + month // 12, month % 12 + 1, 1, tzinfo=moment.tzinfo) - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))
