"""The rule-file format, version 1, as pydantic models (the single definition of what is valid).

Structural validation lives here; cross-references (a rule naming an unknown tier, product or
attribute) are checked in `engine.loader`, which knows the whole programme.
"""
from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (AwareDatetime, BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, WithJsonSchema,
                      field_validator, model_validator)

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
PROGRAMME_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
EventTypeName = Annotated[str, Field(pattern=EVENT_TYPE_PATTERN, max_length=64)]
RuleId = Annotated[str, Field(pattern=RULE_ID_PATTERN, max_length=80)]
# StrictBool: a lax bool would take 1.0 or 0.0 (YAML floats) as true or false.
Scalar = StrictBool | int | Decimal | date | str


class Strict(BaseModel):
    """Base for every rule-file model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AttributeSpec(Strict):
    """One typed attribute of an event type."""

    type: Literal["string", "integer", "money", "date", "month", "enum", "boolean"]
    required: bool = True
    values: list[str] | None = Field(default=None, description="allowed values, for type enum")
    min: int | None = Field(default=None, description="lowest allowed value, for type integer")
    max: int | None = Field(default=None, description="highest allowed value, for type integer")
    description: str = ""

    @model_validator(mode="after")
    def _values_only_for_enum(self) -> AttributeSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum attribute needs a non-empty list of values")
        if self.type != "enum" and self.values is not None:
            raise ValueError("values is only allowed on an enum attribute")
        if self.type != "integer" and (self.min is not None or self.max is not None):
            raise ValueError("min and max are only allowed on an integer attribute")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class EventTypeSpec(Strict):
    """An activity type the lender's systems report, with its attributes."""

    description: str = ""
    attributes: dict[Name, AttributeSpec] = {}


class FastTrack(Strict):
    """An approval lane with a service-level agreement."""

    lane: Name
    sla_hours: int = Field(gt=0, le=24 * 90)


class TierBenefits(Strict):
    """Standing benefits every client of a tier holds while in it."""

    points_multiplier: Decimal = Field(default=Decimal(1), ge=0, le=10)
    rate_discount_bps: dict[Name, Annotated[int, Field(ge=0, le=1000)]] = {}
    fast_track: FastTrack | None = None
    relationship_manager: bool = False
    fee_waiver_pct: int = Field(default=0, ge=0, le=100)


class Threshold(Strict):
    """A test of one client metric over the review window, e.g. {metric: loan_volume, gte: 100000000}."""

    metric: Name
    gte: Decimal | None = None
    gt: Decimal | None = None
    lte: Decimal | None = None
    lt: Decimal | None = None

    @model_validator(mode="after")
    def _one_comparison(self) -> Threshold:
        given = [op for op in ("gte", "gt", "lte", "lt") if getattr(self, op) is not None]
        if len(given) != 1:
            raise ValueError("a threshold needs exactly one of gte, gt, lte, lt")
        return self

    @property
    def operator(self) -> str:
        """The comparison given: gte, gt, lte or lt."""
        return next(op for op in ("gte", "gt", "lte", "lt") if getattr(self, op) is not None)

    @property
    def value(self) -> Decimal:
        """The threshold value."""
        return getattr(self, self.operator)


def _item_kind(value: object) -> str:
    # An item with a `metric` key is a threshold, anything else a nested group: errors then speak of
    # the one the author meant instead of listing both.
    if isinstance(value, Threshold) or (isinstance(value, dict) and "metric" in value):
        return "threshold"
    return "group"


QualificationItem = Annotated[
    Annotated[Threshold, Tag("threshold")] | Annotated["Qualification", Tag("group")],
    Discriminator(_item_kind)]


class Qualification(Strict):
    """All or any of a list of thresholds and nested groups."""

    all: list[QualificationItem] | None = Field(default=None, min_length=1)
    any: list[QualificationItem] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _all_or_any(self) -> Qualification:
        if (self.all is None) == (self.any is None):
            raise ValueError("a qualification needs exactly one of all, any")
        return self


class Tier(Strict):
    """A service level; tiers are listed lowest first. The lowest needs no qualification."""

    id: Name
    name: str
    description: str = ""
    qualification: Qualification | None = None
    benefits: TierBenefits = TierBenefits()


class Schedule(Strict):
    """When a periodic job runs: a five-field cron expression read in a time zone."""

    cron: str = Field(description="minute hour day-of-month month day-of-week, e.g. '0 2 1 1,4,7,10 *'")
    timezone: str = Field(default="UTC", description="IANA time zone the cron expression is read in")

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("a cron expression has five fields: minute hour day-of-month month day-of-week")
        return value


class DowngradePolicy(Strict):
    """How far and how soon a review may move a client down."""

    max_steps: int = Field(default=1, ge=1, le=20, description="most tiers a client drops in one review")
    grace_days: int = Field(default=0, ge=0, le=3660,
                            description="a client that stops qualifying keeps its tier this many days, and is told")
    min_months_in_tier: int = Field(default=0, ge=0, le=120, description="no downgrade before this long in a tier")
    new_client_months: int = Field(default=0, ge=0, le=120,
                                   description="no downgrade in a client's first months (from onboarding)")


class ReviewPolicy(Strict):
    """How tier reviews measure clients, when they run and how they move them."""

    window_months: int = Field(default=12, ge=1, le=60, description="rolling window of the metrics")
    schedule: Schedule | None = Field(default=None, description="when `loyalty scheduler` runs the review")
    instant_upgrade: list[Name] = Field(
        default=[], description="tiers a client enters as soon as an event makes it qualify, not at the next review")
    downgrade: DowngradePolicy = DowngradePolicy()


class PointsPolicy(Strict):
    """How long points last."""

    expire_after_months: int | None = Field(
        default=None, ge=1, le=240, description="points expire this many months after they were earned, oldest first")
    expiry_schedule: Schedule | None = Field(default=None, description="when `loyalty scheduler` expires points")
    expiry_notice_days: list[Annotated[int, Field(ge=1, le=366)]] = Field(
        default_factory=list, max_length=5,
        description="when expiry runs, a points.expiring notice is given once per lot for each of these "
                    "windows (days before the points expire), e.g. [30, 7]")


class ChurnSignal(Threshold):
    """A sign that a client may leave: a test of one metric, e.g. {id: dormant, metric: days_since_loan_activity, gte: 180}."""

    id: RuleId
    description: str = ""


class ChurnPolicy(Strict):
    """The early-warning signals every review evaluates."""

    min_tier: Name | None = Field(default=None, description="only flag clients of this tier or higher")
    signals: list[ChurnSignal] = []


class Condition(Strict):
    """A test on one attribute; every operator given must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    eq: Scalar | None = None
    ne: Scalar | None = None
    lt: Scalar | None = None
    lte: Scalar | None = None
    gt: Scalar | None = None
    gte: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[Scalar] | None = Field(default=None, min_length=1)
    exists: bool | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError("a condition needs at least one operator: eq, ne, lt, lte, gt, gte, in, not_in, exists")
        return self

    def operators(self) -> dict[str, object]:
        """The operators that were given, by their rule-file names."""
        return {("in" if k == "in_" else k): getattr(self, k) for k in self.model_fields_set}


class ClientConditions(Strict):
    """Conditions on the client as of the event's time."""

    tier: Condition | None = None
    min_tier: Name | None = Field(default=None, description="this tier or any higher one")
    segment: Condition | None = None
    tenure_months: Condition | None = None


class When(Strict):
    """What makes a rule fire: an event type plus conditions on its attributes and on the client."""

    event: EventTypeName
    where: dict[Name, Condition] = {}
    client: ClientConditions = ClientConditions()


Use = Literal["single", "standing"]


class RateDiscountGrant(Strict):
    """Grant an interest-rate discount in basis points on some loan products."""

    bps: int = Field(gt=0, le=1000)
    products: list[Name] = Field(min_length=1)
    use: Use = "single"
    valid_for_days: int | None = Field(default=None, gt=0, le=3660)


class BenefitGrant(Strict):
    """Grant a service benefit: a fast-track lane, a relationship manager or a fee waiver."""

    kind: Literal["fast_track", "relationship_manager", "fee_waiver"]
    lane: Name | None = None
    sla_hours: int | None = Field(default=None, gt=0, le=24 * 90)
    fee_waiver_pct: int | None = Field(default=None, gt=0, le=100)
    use: Use = "single"
    valid_for_days: int | None = Field(default=None, gt=0, le=3660)

    @model_validator(mode="after")
    def _fields_match_kind(self) -> BenefitGrant:
        if self.kind == "fast_track" and (self.lane is None or self.sla_hours is None):
            raise ValueError("a fast_track benefit needs lane and sla_hours")
        if self.kind == "fee_waiver" and self.fee_waiver_pct is None:
            raise ValueError("a fee_waiver benefit needs fee_waiver_pct")
        if self.kind != "fast_track" and (self.lane is not None or self.sla_hours is not None):
            raise ValueError("lane and sla_hours belong to a fast_track benefit only")
        if self.kind != "fee_waiver" and self.fee_waiver_pct is not None:
            raise ValueError("fee_waiver_pct belongs to a fee_waiver benefit only")
        return self


class Award(Strict):
    """What a rule gives: points (a CEL expression), a rate discount, a benefit, or several."""

    points: Annotated[str | None, WithJsonSchema({
        "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "null"}]})] = Field(
        default=None, description="CEL expression giving whole points, or a whole number")
    tier_multiplier: bool = True
    rate_discount: RateDiscountGrant | None = None
    benefit: BenefitGrant | None = None

    @field_validator("points", mode="before")
    @classmethod
    def _constant_points(cls, value: object) -> object:
        # `points: 2000` is a constant expression; YAML hands it over as a number.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _gives_something(self) -> Award:
        if self.points is None and self.rate_discount is None and self.benefit is None:
            raise ValueError("an award needs at least one of points, rate_discount, benefit")
        return self


class Cap(Strict):
    """Per-client limits on a rule within a calendar period (UTC)."""

    per: Literal["day", "month", "quarter", "year", "lifetime"]
    points: int | None = Field(default=None, gt=0, description="most points this rule gives per period")
    times: int | None = Field(default=None, gt=0, description="most times this rule fires per period")

    @model_validator(mode="after")
    def _limits_something(self) -> Cap:
        if self.points is None and self.times is None:
            raise ValueError("a cap needs points, times or both")
        return self


class Rule(Strict):
    """An earning rule: when an event matches, award something."""

    id: RuleId
    description: str = ""
    priority: int = Field(default=100, ge=0, le=10_000, description="lower fires first")
    when: When
    award: Award
    cap: Cap | None = None


class CatalogueReward(Strict):
    """A reward clients buy with points: a rate discount or a service benefit, granted on redemption."""

    id: RuleId
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    points: int = Field(gt=0, le=10**12, description="what one redemption costs, in points")
    min_tier: Name | None = Field(default=None, description="lowest tier that may redeem it")
    rate_discount: RateDiscountGrant | None = None
    benefit: BenefitGrant | None = None

    @model_validator(mode="after")
    def _gives_one_thing(self) -> CatalogueReward:
        if (self.rate_discount is None) == (self.benefit is None):
            raise ValueError("a catalogue reward gives exactly one of rate_discount, benefit")
        return self


class ProgrammeHeader(Strict):
    """Identity and version of a programme."""

    id: Annotated[str, Field(pattern=PROGRAMME_ID_PATTERN, max_length=64)]
    name: str = ""
    version: Annotated[str, Field(min_length=1, max_length=32)]
    currency: Annotated[str, Field(pattern=CURRENCY_PATTERN)]
    effective_from: AwareDatetime

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, value: object) -> object:
        # YAML reads 2026.1 as a number; versions are labels, so say so instead of guessing.
        if not isinstance(value, str):
            raise ValueError("version must be a quoted string, for example \"2026.1\"")
        return value


class Programme(Strict):
    """A whole rule file: a programme version."""

    format: Literal[1]
    programme: ProgrammeHeader
    loan_products: list[Name] = Field(min_length=1)
    event_types: dict[EventTypeName, EventTypeSpec] = Field(min_length=1)
    tiers: list[Tier] = Field(min_length=1)
    discount_ceiling_bps: dict[Name, Annotated[int, Field(ge=0, le=1000)]] = Field(
        description="most stacked discount per product; key 'default' covers products not named")
    rules: list[Rule] = []
    catalogue: list[CatalogueReward] = Field(default=[], description="rewards clients redeem points for")
    review: ReviewPolicy = ReviewPolicy()
    points: PointsPolicy = PointsPolicy()
    churn: ChurnPolicy = ChurnPolicy()
