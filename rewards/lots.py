"""Points lots: every earning is a lot; debits take the oldest lots first (FIFO), expiry takes what is left.

Pure bookkeeping, shared by the ledger's write path (which keeps the `points_lot` projection) and by
`ledger verify` (which replays the entries and compares). A reversal takes back its own lot first:
what expired from that lot is gone already (a shortfall), what was spent comes from the oldest lots.
A debit larger than the open lots leaves a shortfall too; the only credit that is not a lot, a
write-off, pays a shortfall back. A shortfall left at the end of a transaction would be a negative
balance, which the ledger refuses.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from rewards.caps import months_before
from rewards.kinds import Reason


@dataclass
class Lot:
    """Points earned by one rule for one event, and how many of them are left."""

    client_id: str
    event_id: str
    rule_id: str
    earned_at: datetime
    points: int
    remaining: int
    expired: int = 0
    id: int | None = None  # the projection row's id, once stored

    @property
    def source(self) -> tuple[str, str]:
        """(event, rule) of the earning: a lot's identity in entries and in the projection."""
        return self.event_id, self.rule_id


@dataclass
class Account:
    """One client's open lots, oldest first, and any shortfall not yet written off."""

    lots: list[Lot]
    shortfall: int = 0

    def earn(self, lot: Lot) -> None:
        """Add a new lot, keeping the oldest first."""
        self.lots.append(lot)
        self.lots.sort(key=lambda item: item.earned_at)  # stable: equal times keep the order they came in

    def debit(self, points: int) -> list[tuple[Lot, int]]:
        """Take `points` from the oldest lots; what they cannot cover becomes a shortfall. Returns (lot, taken)."""
        taken: list[tuple[Lot, int]] = []
        for lot in self.lots:
            if points == 0:
                break
            share = min(lot.remaining, points)
            if share:
                lot.remaining -= share
                points -= share
                taken.append((lot, share))
        self.shortfall += points
        return taken

    def expire(self, source: tuple[str, str], points: int) -> Lot:
        """Take `points` from the lot earned by `source`; ValueError if it does not have them."""
        lot = self._lot(source)
        if lot is None or lot.remaining < points:
            left = 0 if lot is None else lot.remaining
            raise ValueError(f"cannot expire {points} points of lot {source}: {left} left")
        lot.remaining -= points
        lot.expired += points
        return lot

    def reverse(self, source: tuple[str, str], points: int) -> list[tuple[Lot, int]]:
        """Take back `points` earned by `source`: from its own lot, then (for what was spent) the oldest lots."""
        lot = self._lot(source)
        taken: list[tuple[Lot, int]] = []
        if lot is not None:
            own = min(lot.remaining, points)
            if own:
                lot.remaining -= own
                taken.append((lot, own))
            gone = min(points - own, lot.expired)  # never used: nothing to take back for them
            self.shortfall += gone
            points -= own + gone
        return taken + self.debit(points)

    def book(self, reason: str, points: int, source: tuple[str, str]) -> list[Lot]:
        """Book one points entry other than an earning; returns the lots it changed."""
        if reason == Reason.EXPIRE:
            return [self.expire(source, -points)]
        if reason == Reason.REVERSE and points < 0:
            return [lot for lot, _ in self.reverse(source, -points)]
        if points < 0:
            return [lot for lot, _ in self.debit(-points)]
        self.write_off(points)
        return []

    def _lot(self, source: tuple[str, str]) -> Lot | None:
        return next((item for item in self.lots if item.source == source), None)

    def write_off(self, points: int) -> None:
        """A credit that pays a shortfall back (a reversal of points already spent); ValueError beyond it."""
        if points > self.shortfall:
            raise ValueError(f"a write-off of {points} points exceeds the shortfall of {self.shortfall}")
        self.shortfall -= points

    @property
    def balance(self) -> int:
        """Points left in the open lots."""
        return sum(lot.remaining for lot in self.lots)


def expires_at(earned_at: datetime, months: int) -> datetime:
    """When points earned at `earned_at` expire: the same day and time `months` later (month-end clamped)."""
    return months_before(earned_at, -months)


def earned_no_later_than(moment: datetime, months: int) -> datetime:
    """Every lot that has expired by `moment` was earned at or before this (a few lots earned just
    before it may not have: month-end clamping moves expiry by up to three days; check with `expires_at`)."""
    return months_before(moment, months) + timedelta(days=4)
