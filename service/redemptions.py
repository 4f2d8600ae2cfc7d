"""Redemptions: spend points on a reward from the programme's catalogue.

The points entry and the reward's grant are written in one transaction, under the client's lock, so
a balance is never spent twice. The points come out of the oldest lots first (see rewards/lots.py).
"""
from __future__ import annotations

from sqlalchemy import Engine, select

from engine.context import tier_at
from engine.errors import did_you_mean
from engine.evaluator import award_grants
from engine.programme import ProgrammeSet
from rewards.kinds import Reason
from rewards.notices import REDEEM_RULE_PREFIX
from service import telemetry
from service.answer import Answer, Moment
from service.benefits import EntitlementAnswer, entitlement_view
from service.clock import Clock, utc_now
from service.errors import ConflictError, NotFoundError
from service.expiry import expire_due
from service.retry import with_retry
from storage import clients as client_store
from storage import ledger
from storage.db import write_transaction
from storage.ledger import Provenance
from storage.models import Client


class RewardAnswer(Answer):
    """A reward of the catalogue."""

    id: str
    name: str
    description: str
    points: int
    min_tier: str | None


class RewardRef(Answer):
    """The reward redeemed."""

    id: str
    name: str


class RedemptionAnswer(Answer):
    """Points spent and the entitlement granted."""

    client_id: str
    reward: RewardRef
    points_spent: int
    points_balance: int
    redeemed_at: Moment
    entitlements: list[EntitlementAnswer]


def catalogue(programmes: ProgrammeSet, clock: Clock = utc_now) -> list[RewardAnswer]:
    """The rewards on offer now."""
    return [RewardAnswer(id=reward.id, name=reward.name, description=reward.description, points=reward.points,
                         min_tier=reward.min_tier)
            for reward in programmes.for_moment(clock()).model.catalogue]


def redeem(engine: Engine, programmes: ProgrammeSet, client_id: str, reward_id: str,
           clock: Clock = utc_now) -> RedemptionAnswer:
    """Spend the reward's points and grant it; ConflictError if the balance or the tier falls short."""
    redemption = with_retry(lambda: _redeem(engine, programmes, client_id, reward_id, clock))
    telemetry.count_redemption(reward_id)
    return redemption


def _redeem(engine: Engine, programmes: ProgrammeSet, client_id: str, reward_id: str,
            clock: Clock) -> RedemptionAnswer:
    with write_transaction(engine) as conn:
        now = clock()
        programme = programmes.for_moment(now)
        rewards = {reward.id: reward for reward in programme.model.catalogue}
        reward = rewards.get(reward_id)
        if reward is None:
            raise NotFoundError(f"no reward {reward_id!r} in the catalogue of {programme.id} {programme.version}"
                                f"{did_you_mean(reward_id, rewards)}; expected one of: {', '.join(rewards) or 'none'}")
        if not client_store.lock_clients(conn, [client_id]):
            raise NotFoundError(f"no client {client_id!r}: it has no events yet")
        # Points past their expiry are not spent, even before the expiry job has written them off.
        expire_due(conn, programme, [client_id], now, now)
        clients = Client.__table__
        balance = conn.execute(select(clients.c.points_balance).where(clients.c.client_id == client_id)).scalar_one()
        if reward.min_tier is not None:
            history = client_store.tier_histories(conn, [client_id]).get(client_id, [])
            tier = tier_at(history, now, programme.lowest_tier.id)
            if programme.tier_ids.index(tier) < programme.tier_ids.index(reward.min_tier):
                raise ConflictError(f"reward {reward.id} is for tier {reward.min_tier} and above; client {client_id} "
                                    f"is {tier}", "tier-too-low", tier=tier, min_tier=reward.min_tier)
        if balance < reward.points:
            raise ConflictError(f"insufficient points: client {client_id} has {balance:,} points, reward "
                                f"{reward.id} costs {reward.points:,}", "insufficient-points",
                                balance=balance, cost=reward.points)
        source = Provenance(programme.id, programme.version, None)
        rule_id = REDEEM_RULE_PREFIX + reward.id
        grants = award_grants(rule_id, reward.rate_discount, reward.benefit, now)
        rows = [ledger.points_entry(client_id, rule_id, -reward.points, Reason.REDEEM, now, source, now,
                                    detail={"reward": reward.id}),
                *(ledger.grant_entry(client_id, grant, source, now) for grant in grants)]
        granted = ledger.append(conn, rows)
        entitlements = {e.id: e for e in ledger.held_entitlements(conn, client_id)}
        return RedemptionAnswer(
            client_id=client_id, reward=RewardRef(id=reward.id, name=reward.name),
            points_spent=reward.points, points_balance=balance - reward.points, redeemed_at=now.isoformat(),
            entitlements=[entitlement_view(entitlements[entitlement_id]) for entitlement_id in granted],
        )
