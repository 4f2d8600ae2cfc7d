"""Pure evaluation: one event and the client's context as of its time → the awards of every matching rule."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from engine.context import ClientContext
from engine.events import Event, expression_value, matching_value
from engine.programme import CompiledProgramme, CompiledRule
from engine.schema import BenefitGrant, RateDiscountGrant
from rewards.kinds import Grant, Kind, PointsAward, Use
from rewards.points import apply_multiplier


@dataclass(frozen=True)
class RuleOutcome:
    """The awards of one fired rule, before caps."""

    rule: CompiledRule
    points: PointsAward | None
    grants: tuple[Grant, ...]


def matching_rules(programme: CompiledProgramme, event: Event, client: ClientContext) -> list[CompiledRule]:
    """Every rule whose conditions hold, in firing order (priority, then file order)."""
    types = programme.attribute_types(event.type)
    facts = {name: matching_value(types[name], value, programme.currency) for name, value in event.data.items()}
    keys = programme.matcher.match(event.type, facts, client.matching_view())
    return sorted((programme.rules[key] for key in keys), key=lambda rule: rule.order)


def evaluate(programme: CompiledProgramme, event: Event, client: ClientContext) -> list[RuleOutcome]:
    """Apply every matching rule to `event`; raises EvaluationError when a rule cannot be applied."""
    fired = matching_rules(programme, event, client)
    if not fired:
        return []
    types = programme.attribute_types(event.type)
    activation = {
        "event": {name: expression_value(types[name], value) for name, value in event.data.items()},
        "client": {"tier": client.tier, "segment": client.segment or "", "tenure_months": client.tenure_months},
    }
    multiplier = programme.tier(client.tier).benefits.points_multiplier
    return [_outcome(compiled, event, activation, multiplier) for compiled in fired]


def _outcome(compiled: CompiledRule, event: Event, activation: dict, multiplier: Decimal) -> RuleOutcome:
    rule = compiled.rule
    award = rule.award
    points = None
    if compiled.points is not None:
        base = compiled.points.evaluate(activation)
        factor = multiplier if award.tier_multiplier else Decimal(1)
        points = PointsAward(rule.id, apply_multiplier(base, factor), base, factor)
    grants = award_grants(rule.id, award.rate_discount, award.benefit, event.occurred_at)
    return RuleOutcome(compiled, points, tuple(grants))


def award_grants(source_id: str, rate_discount: RateDiscountGrant | None, benefit: BenefitGrant | None,
                 start: datetime) -> list[Grant]:
    """The entitlements a rule award or a catalogue reward creates, valid from `start`."""
    grants: list[Grant] = []
    if rate_discount is not None:
        grants.append(Grant(Kind.RATE_DISCOUNT, source_id, Use(rate_discount.use), start,
                            _until(start, rate_discount.valid_for_days), bps=rate_discount.bps,
                            products=tuple(rate_discount.products)))
    if benefit is not None:
        detail = {key: value for key, value in
                  {"lane": benefit.lane, "sla_hours": benefit.sla_hours, "fee_waiver_pct": benefit.fee_waiver_pct}.items()
                  if value is not None}
        grants.append(Grant(Kind(benefit.kind), source_id, Use(benefit.use), start,
                            _until(start, benefit.valid_for_days), detail=detail))
    return grants


def _until(start: datetime, days: int | None) -> datetime | None:
    return start + timedelta(days=days) if days else None
