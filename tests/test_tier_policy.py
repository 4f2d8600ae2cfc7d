"""The review policy as a pure function: upgrades at once, downgrades after protection, minimum time,
grace, and at most N steps; pins override everything; instant-upgrade targets."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.schema import DowngradePolicy
from rewards.tier_policy import Grace, Pin, Standing, decide, instant_target

TIERS = ["standard", "silver", "gold", "diamond"]
AS_OF = datetime(2026, 7, 1, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
POLICY = DowngradePolicy(max_steps=1, grace_days=30, min_months_in_tier=3, new_client_months=6)


def standing(tier="gold", since=LONG_AGO, tenure=LONG_AGO, grace=None, pin=None) -> Standing:
    return Standing(tier, since, tenure, grace, pin)


def test_an_upgrade_happens_at_once_whatever_the_holds():
    decision = decide(standing("silver", since=AS_OF - timedelta(days=1), tenure=AS_OF), "diamond", TIERS, POLICY, AS_OF)
    assert (decision.action, decision.tier) == ("upgrade", "diamond")


def test_a_new_client_is_not_downgraded_in_its_first_months():
    decision = decide(standing(tenure=datetime(2026, 2, 1, tzinfo=UTC)), "standard", TIERS, POLICY, AS_OF)
    assert (decision.action, decision.tier, decision.hold) == ("hold", "gold", "new_client")
    assert decision.until == datetime(2026, 8, 1, tzinfo=UTC)


def test_a_client_stays_the_minimum_time_in_a_tier():
    decision = decide(standing(since=datetime(2026, 5, 15, tzinfo=UTC)), "silver", TIERS, POLICY, AS_OF)
    assert (decision.action, decision.hold, decision.until) == ("hold", "min_time_in_tier",
                                                                 datetime(2026, 8, 15, tzinfo=UTC))
    assert decision.open_grace is None  # the grace starts only once nothing else holds the client


def test_the_first_review_that_finds_a_client_short_starts_its_grace_and_says_until_when():
    decision = decide(standing(), "silver", TIERS, POLICY, AS_OF)
    assert (decision.action, decision.tier, decision.hold) == ("hold", "gold", "grace")
    assert decision.open_grace == decision.until == AS_OF + timedelta(days=30)
    assert "until 2026-07-31" in decision.policy


def test_during_the_grace_the_client_keeps_its_tier_and_after_it_drops_at_most_max_steps():
    during = decide(standing(grace=Grace("gold", AS_OF + timedelta(days=1))), "standard", TIERS, POLICY, AS_OF)
    assert (during.action, during.tier, during.open_grace) == ("hold", "gold", None)
    after = decide(standing(grace=Grace("gold", AS_OF)), "standard", TIERS, POLICY, AS_OF)
    assert (after.action, after.tier, after.policy) == ("downgrade", "silver", "limited to 1 step down")
    assert after.close_grace == "downgraded"
    # Still short of silver: the same decline continues without a second grace.
    assert after.open_grace == AS_OF
    next_review = decide(standing("silver", since=AS_OF - timedelta(days=120), grace=Grace("silver", AS_OF)),
                         "standard", TIERS, POLICY, AS_OF + timedelta(days=1))
    assert (next_review.action, next_review.tier) == ("downgrade", "standard")


def test_a_downgrade_within_max_steps_lands_where_the_client_qualifies():
    two_steps = DowngradePolicy(max_steps=2)
    decision = decide(standing("diamond"), "silver", TIERS, two_steps, AS_OF)
    assert (decision.action, decision.tier, decision.policy) == ("downgrade", "silver", "review")


def test_a_client_that_qualifies_again_ends_its_grace():
    decision = decide(standing(grace=Grace("gold", AS_OF + timedelta(days=9))), "gold", TIERS, POLICY, AS_OF)
    assert (decision.action, decision.close_grace) == ("stay", "recovered")


def test_a_pin_overrides_the_metrics_and_the_policy():
    pin = Pin("diamond", AS_OF + timedelta(days=90), "strategic account", "ana")
    decision = decide(standing("diamond", pin=pin, grace=Grace("diamond", AS_OF)), "standard", TIERS, POLICY, AS_OF)
    assert (decision.action, decision.tier, decision.until) == ("pinned", "diamond", pin.until)
    assert decision.close_grace == "pinned" and "by ana: strategic account" in decision.policy


def test_without_grace_or_holds_a_downgrade_is_immediate():
    decision = decide(standing(), "silver", TIERS, DowngradePolicy(), AS_OF)
    assert (decision.action, decision.tier) == ("downgrade", "silver")


def test_instant_upgrades_go_to_the_highest_listed_tier_the_client_qualifies_for():
    assert instant_target("standard", "diamond", TIERS, ["gold", "diamond"]) == "diamond"
    assert instant_target("standard", "gold", TIERS, ["gold", "diamond"]) == "gold"
    assert instant_target("standard", "silver", TIERS, ["gold", "diamond"]) is None  # silver waits for a review
    assert instant_target("gold", "gold", TIERS, ["gold", "diamond"]) is None
