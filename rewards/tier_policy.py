"""The review policy: where a client goes, given the tier its metrics earn and the programme's rules of fairness.

Pure: the review gathers each client's standing (tier, since when, tenure, grace, pin) and this module
decides. Upgrades happen at once. A downgrade waits for, in this order: the new-client protection,
the minimum time in the tier, and the grace period (which starts at the first review that finds the
client short, so the client is told before it loses anything); then it drops at most `max_steps` tiers.
A client still short of the tier it dropped to keeps falling at the next reviews without a new grace
period: one decline, one grace.
A pin in force overrides all of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.schema import DowngradePolicy
from rewards.caps import months_before

STAY, UPGRADE, DOWNGRADE, HOLD, PINNED = "stay", "upgrade", "downgrade", "hold", "pinned"


@dataclass(frozen=True)
class Pin:
    """A manual override in force: the client stays in `tier` until `until`."""

    tier: str
    until: datetime
    reason: str
    author: str


@dataclass(frozen=True)
class Grace:
    """An open grace period: the client keeps `tier` until `until`."""

    tier: str
    until: datetime


@dataclass(frozen=True)
class Standing:
    """What the policy needs to know about a client at the review moment."""

    tier: str
    since: datetime  # when the client entered its tier
    tenure_start: datetime  # onboarding, or the first event
    grace: Grace | None = None
    pin: Pin | None = None


@dataclass(frozen=True)
class Decision:
    """Where the client goes and why; `open_grace` / `close_grace` say what to record about grace periods."""

    action: str  # stay, upgrade, downgrade, hold or pinned
    tier: str  # the tier after the review
    policy: str = ""  # the rule that shaped the move or the hold, for people
    hold: str | None = None  # new_client, min_time_in_tier or grace
    until: datetime | None = None  # when a hold or a pin ends
    open_grace: datetime | None = None  # start a grace period ending then
    close_grace: str | None = None  # end the open grace period: recovered, downgraded, moved or pinned


def decide(standing: Standing, qualified: str, tiers: list[str], policy: DowngradePolicy, as_of: datetime) -> Decision:
    """The review's decision for one client whose metrics earn `qualified` (tiers lowest first)."""
    grace = standing.grace if standing.grace and standing.grace.tier == standing.tier else None
    stale = "moved" if standing.grace and not grace else None  # a grace for a tier the client has left
    if standing.pin is not None:
        pin = standing.pin
        return Decision(PINNED, pin.tier, f"pinned to {pin.tier} until {pin.until:%Y-%m-%d} by {pin.author}: "
                                          f"{pin.reason}", until=pin.until,
                        close_grace="pinned" if standing.grace else None)
    rank = {tier: position for position, tier in enumerate(tiers)}
    current, target = rank[standing.tier], rank[qualified]
    if target > current:
        return Decision(UPGRADE, qualified, "review", close_grace="moved" if standing.grace else None)
    if target == current:
        return Decision(STAY, qualified, close_grace="recovered" if grace else stale)
    protected_until = months_before(standing.tenure_start, -policy.new_client_months)
    if as_of < protected_until:
        return _hold(standing, "new_client", protected_until, f"new client: no downgrade before "
                                                               f"{protected_until:%Y-%m-%d}", stale)
    settled_at = months_before(standing.since, -policy.min_months_in_tier)
    if as_of < settled_at:
        return _hold(standing, "min_time_in_tier", settled_at, f"in {standing.tier} since {standing.since:%Y-%m-%d}: "
                                                               f"no downgrade before {settled_at:%Y-%m-%d}", stale)
    policy_text = "review"
    if policy.grace_days:
        if grace is None:
            until = as_of + timedelta(days=policy.grace_days)
            return Decision(HOLD, standing.tier, f"grace period: keeps {standing.tier} until {until:%Y-%m-%d} "
                                                 f"unless it qualifies again", hold="grace", until=until,
                            open_grace=until, close_grace=stale)
        if as_of < grace.until:
            return Decision(HOLD, standing.tier, f"grace period: keeps {standing.tier} until {grace.until:%Y-%m-%d}",
                            hold="grace", until=grace.until)
        policy_text = "grace ended"
    lowest_allowed = current - policy.max_steps
    if target >= lowest_allowed:
        return Decision(DOWNGRADE, qualified, policy_text, close_grace="downgraded" if standing.grace else None)
    # Still short of the tier it lands in: the same decline, so its grace has already been served there.
    return Decision(DOWNGRADE, tiers[lowest_allowed],
                    f"limited to {policy.max_steps} step{'s' if policy.max_steps > 1 else ''} down",
                    close_grace="downgraded" if standing.grace else None,
                    open_grace=as_of if policy.grace_days else None)


def _hold(standing: Standing, kind: str, until: datetime, text: str, stale: str | None) -> Decision:
    return Decision(HOLD, standing.tier, text, hold=kind, until=until, close_grace=stale)


def instant_target(tier: str, qualified: str, tiers: list[str], instant: list[str]) -> str | None:
    """The highest instant-upgrade tier above `tier` that the client qualifies for, if any."""
    rank = {name: position for position, name in enumerate(tiers)}
    eligible = [name for name in instant if rank[tier] < rank[name] <= rank[qualified]]
    return max(eligible, key=rank.__getitem__) if eligible else None
