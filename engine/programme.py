"""A loaded, checked and compiled programme version, ready to evaluate events."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from engine.expressions import PointsExpression
from engine.matching import Matcher
from engine.schema import Programme, Rule, Tier


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its position in the file and its compiled points expression."""

    rule: Rule
    index: int
    points: PointsExpression | None

    @property
    def order(self) -> tuple[int, int]:
        """Firing order: priority, then position in the file."""
        return self.rule.priority, self.index


@dataclass(frozen=True)
class CompiledProgramme:
    """A programme version whose rules are compiled into the matching core."""

    model: Programme
    source: str
    rules: tuple[CompiledRule, ...]
    matcher: Matcher

    @property
    def id(self) -> str:
        """Programme id."""
        return self.model.programme.id

    @property
    def version(self) -> str:
        """Programme version label."""
        return self.model.programme.version

    @property
    def currency(self) -> str:
        """ISO currency of every money attribute."""
        return self.model.programme.currency

    @property
    def effective_from(self) -> datetime:
        """When this version starts to apply."""
        return self.model.programme.effective_from

    @property
    def tier_ids(self) -> list[str]:
        """Tier ids, lowest first."""
        return [tier.id for tier in self.model.tiers]

    @property
    def lowest_tier(self) -> Tier:
        """The tier new clients start in."""
        return self.model.tiers[0]

    def tier(self, tier_id: str) -> Tier:
        """The tier named `tier_id` (KeyError if the programme has none)."""
        for tier in self.model.tiers:
            if tier.id == tier_id:
                return tier
        raise KeyError(f"programme {self.id} {self.version} has no tier {tier_id!r}")

    def ceiling_bps(self, product: str) -> int:
        """The most stacked rate discount allowed on `product`."""
        ceilings = self.model.discount_ceiling_bps
        return ceilings.get(product, ceilings.get("default", 0))

    def attribute_types(self, event_type: str) -> dict[str, str]:
        """Declared type of each attribute of `event_type`."""
        return {name: spec.type for name, spec in self.model.event_types[event_type].attributes.items()}


@dataclass(frozen=True)
class ProgrammeSet:
    """Every loaded version of one programme; an event is evaluated under the version in force when it occurred."""

    versions: tuple[CompiledProgramme, ...]  # sorted by effective_from

    @property
    def current(self) -> CompiledProgramme:
        """The latest version."""
        return self.versions[-1]

    def for_moment(self, moment: datetime) -> CompiledProgramme:
        """The version in force at `moment`, or the first one for a moment before the programme began."""
        return self.at(moment) or self.versions[0]

    def at(self, moment: datetime) -> CompiledProgramme | None:
        """The version in force at `moment`, or None before the first one starts."""
        chosen = None
        for version in self.versions:
            if version.effective_from <= moment:
                chosen = version
        return chosen
