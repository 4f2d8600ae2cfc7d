"""Semantic checks of a rule file, beyond what its schema can say (pure: no I/O, no matching engine).

Both entry points take the parsed YamlDocument (for lines and columns) and the validated Programme,
and return Problems. They tolerate a model whose cross-references are broken (the loader reports
those): a condition naming an unknown attribute, tier or value is left out of the reasoning.

Errors (`semantic_errors`; the loader refuses the file, so `load_programmes` and `rules check` agree):
- tier thresholds that fall as tiers rise: a metric a tier certainly requires (gte/gt) at a lower
  value than a lower tier certainly requires, or certainly allows (lte/lt) at a higher value.
  "Certainly" means through `all` groups, and through an `any` group only when every branch
  bounds the metric (then the loosest branch counts): a threshold in one branch of an `any` is
  never compared;
- a qualification that can never hold (loan_volume gte 10 and lte 5 both required) and a threshold
  outside the values its metric can take (a ratio above 1, a count below 0);
- a rule condition that can never hold, with the reason: gt 10 with lt 5, eq X with ne X, in [...]
  emptied by not_in, a range outside an integer attribute's declared min/max, money at or below 0,
  client.tier outside client.min_tier, exists: false with a test that needs the attribute, or on a
  required attribute.

Warnings (`warnings`; reported by `loyalty rules check`, never keep a file from loading):
- overlapping grants: two rules on the same event type whose conditions can all hold for one event
  (every attribute both test has a value passing both) and that both grant a rate discount on the
  same loan product, or both the same kind of benefit. One warning per rule and award kind, at the
  later rule, naming the first earlier rule it overlaps with and such an event. Points are not
  compared: rules adding up points for one event (a base rate plus a bonus) are normal;
- unbounded grants: a rule's standing discount or benefit without valid_for_days (every firing adds
  one that never expires, kept whatever the client's tier); a rule's single-use discount or benefit
  with neither valid_for_days nor a cap (one more per matching event, none ever expiring); a
  catalogue reward that is standing without valid_for_days (bought once, held forever);
- a granted discount above its product's ceiling (cut to the ceiling; never applied at ceiling 0);
- a constant points award above its rule's points cap (the rule never gives its full award);
- tier benefits that fall as tiers rise, against the tier just below: points multiplier, standing
  discount per product, fee waiver, fast track (a longer SLA or none) and relationship manager;
- `exists: false` beside `ne`/`not_in` on one attribute (an absent attribute passes them anyway).
"""
from __future__ import annotations

import functools
import itertools
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from engine.errors import Problem
from engine.events import minor_unit_exponent, parse_day
from engine.metrics import METRICS
from engine.schema import (AttributeSpec, BenefitGrant, Condition, Programme, Qualification, RateDiscountGrant, Rule,
                           Threshold, TierBenefits)
from engine.yaml_source import YamlDocument

_ORDERED = frozenset({"integer", "money", "date", "month"})
_OPERATOR_ORDER = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists")
# engine.events.parse_money refuses amounts of 10^15 and above, and amounts at or below 0.
_MONEY_DIGITS = 15


# --- value domains ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Domain:
    """The values one attribute can take while some tests hold; ordered types are integer keys.

    Every ordered type is discrete once converted (money in minor units, dates as day numbers,
    months as month numbers), so `gt 10` is `lo = 11` and a range is empty when lo > hi.
    """

    absent_ok: bool
    present_ok: bool = True
    lo: int | None = None
    hi: int | None = None
    allowed: frozenset | None = None  # None: any value of the type
    excluded: frozenset = frozenset()

    def narrow(self, op: str, value: object) -> Domain:
        """This domain with one more test applied (`value` in key form; a frozenset for in/not_in)."""
        absent_ok, present_ok, lo, hi, allowed, excluded = (self.absent_ok, self.present_ok, self.lo, self.hi,
                                                             self.allowed, self.excluded)
        if op == "exists":
            absent_ok, present_ok = (False, present_ok) if value else (absent_ok, False)
        elif op in ("ne", "not_in"):
            excluded = excluded | _as_set(value)
        else:
            absent_ok = False  # every other test fails on an absent attribute
            if op in ("eq", "in"):
                allowed = _meet_sets(allowed, _as_set(value))
            elif op in ("gt", "gte"):
                lo = _max(lo, value + 1 if op == "gt" else value)  # type: ignore[operator]
            else:
                hi = _min(hi, value - 1 if op == "lt" else value)  # type: ignore[operator]
        return Domain(absent_ok, present_ok, lo, hi, allowed, excluded)

    def meet(self, other: Domain) -> Domain:
        """The values both domains allow."""
        return Domain(self.absent_ok and other.absent_ok, self.present_ok and other.present_ok,
                      _max(self.lo, other.lo), _min(self.hi, other.hi), _meet_sets(self.allowed, other.allowed),
                      self.excluded | other.excluded)

    def example(self) -> object | None:
        """A present value of the domain (the smallest), or None when the attribute cannot be present."""
        if not self.present_ok or (self.lo is not None and self.hi is not None and self.lo > self.hi):
            return None
        if self.allowed is not None:
            fits = [v for v in self.allowed if v not in self.excluded and self._within(v)]
            return min(fits) if fits else None
        if self.lo is None and self.hi is None:
            return _ANY
        # At most len(excluded) + 1 candidates from one bound inwards settle it.
        step, start = (1, self.lo) if self.lo is not None else (-1, self.hi)
        for candidate in itertools.islice(itertools.count(start, step), len(self.excluded) + 1):  # type: ignore[arg-type]
            if not self._within(candidate):
                return None
            if candidate not in self.excluded:
                return candidate
        return None

    def is_empty(self) -> bool:
        """True when no event can pass the tests: no present value, and absence fails them."""
        return not self.absent_ok and self.example() is None

    def _within(self, value: object) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return True
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)


_ANY = object()  # stands for "some value" of an unbounded type (text, or an integer with no bound)


def _as_set(value: object) -> frozenset:
    return value if isinstance(value, frozenset) else frozenset([value])


def _meet_sets(a: frozenset | None, b: frozenset | None) -> frozenset | None:
    return b if a is None else (a if b is None else a & b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else (a if b is None else max(a, b))


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else (a if b is None else min(a, b))


@dataclass(frozen=True)
class _Attribute:
    """Something a rule tests (an event attribute or a client field): its literals and its values."""

    label: str  # as shown: amount, client.tier
    spec: AttributeSpec
    currency: str
    noun: str = "value"

    def key(self, value: object) -> object:
        """The comparable form of a literal; ValueError when it is not a value of this type."""
        kind = self.spec.type
        if kind == "integer" or kind == "boolean":
            if not isinstance(value, int) or isinstance(value, bool) != (kind == "boolean"):
                raise ValueError(value)
            return value
        if kind == "money":
            if isinstance(value, bool):
                raise ValueError(value)
            try:
                scaled = Decimal(str(value)).scaleb(minor_unit_exponent(self.currency))
            except InvalidOperation:
                raise ValueError(value) from None
            if scaled != scaled.to_integral_value():
                raise ValueError(value)
            return int(scaled)
        if kind in ("date", "month"):
            day = parse_day(value if kind == "date" else f"{value}-01")
            if day is None:
                raise ValueError(value)
            return day.toordinal() if kind == "date" else day.year * 12 + day.month - 1
        if not isinstance(value, str) or (kind == "enum" and value not in (self.spec.values or [])):
            raise ValueError(value)
        return value

    def render(self, key: object) -> str:
        """A key written back as the rule file would write it."""
        kind = self.spec.type
        if kind == "money":
            return format(Decimal(key).scaleb(-minor_unit_exponent(self.currency)), "f")  # type: ignore[arg-type]
        if kind == "date":
            return date.fromordinal(key).isoformat()  # type: ignore[arg-type]
        if kind == "month":
            return f"{key // 12:04d}-{key % 12 + 1:02d}"  # type: ignore[operator]
        if kind == "boolean":
            return str(key).lower()
        return str(key)

    @functools.cached_property
    def universe(self) -> Domain:
        """Every value an event (or client) can carry here."""
        spec, kind = self.spec, self.spec.type
        absent_ok = not spec.required
        if kind == "integer":
            return Domain(absent_ok, lo=spec.min, hi=spec.max)
        if kind == "money":
            return Domain(absent_ok, lo=1, hi=10 ** (_MONEY_DIGITS + minor_unit_exponent(self.currency)) - 1)
        if kind == "date":
            return Domain(absent_ok, lo=date.min.toordinal(), hi=date.max.toordinal())
        if kind == "month":
            return Domain(absent_ok, lo=12, hi=9999 * 12 + 11)
        if kind == "enum":
            return Domain(absent_ok, allowed=frozenset(spec.values or []))
        if kind == "boolean":
            return Domain(absent_ok, allowed=frozenset([True, False]))
        return Domain(absent_ok)

    def example(self, domain: Domain) -> object | None:
        """A present value of `domain`; for an enum, the first in declared order (tiers lowest first)."""
        if self.spec.type == "enum" and domain.example() is not None:
            return next(v for v in self.spec.values or [] if v in domain.allowed and v not in domain.excluded)  # type: ignore[operator]
        return domain.example()

    def describe(self) -> str:
        """What values exist here, for a reason."""
        spec, kind = self.spec, self.spec.type
        if kind in ("enum", "boolean"):
            return "one of " + ", ".join(spec.values or []) if kind == "enum" else "true or false"
        if kind == "integer":
            if spec.min is not None and spec.max is not None:
                return f"a whole number from {spec.min} to {spec.max}"
            return "a whole number" + (f" of at least {spec.min}" if spec.min is not None else "") \
                + (f" of at most {spec.max}" if spec.max is not None else "")
        if kind == "money":
            return f"an amount above 0 and below 10^{_MONEY_DIGITS} {self.currency}"
        return f"a {kind}"


@dataclass(frozen=True)
class _Test:
    """One operator of a condition, as applied and as written."""

    op: str  # the operator applied to the domain (min_tier is applied as `in`)
    value: object  # key form
    path: tuple
    written: str  # the key it was written under: gt, exists, min_tier
    raw: object  # the value as written

    @property
    def shown(self) -> str:
        """As the author wrote it: "gt 10", "exists: false", "min_tier gold (gold or higher)"."""
        if self.written == "min_tier":
            return f"min_tier {self.raw} ({self.raw} or higher)"
        return f"{self.written}{':' if self.written == 'exists' else ''} {_show(self.raw)}"


@dataclass(frozen=True)
class _Tested:
    """Everything one rule tests about one attribute."""

    attribute: _Attribute
    path: tuple
    tests: tuple[_Test, ...]
    domain: Domain


def _show(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _condition_tests(attribute: _Attribute, path: tuple, condition: Condition) -> list[_Test] | None:
    """The condition's operators as tests, or None when one is not a value of the attribute's type."""
    tests = []
    operators = condition.operators()
    for op in sorted(operators, key=_OPERATOR_ORDER.index):
        value = operators[op]
        if op in ("gt", "gte", "lt", "lte") and attribute.spec.type not in _ORDERED:
            return None
        try:
            if op == "exists":
                key: object = value
            elif op in ("in", "not_in"):
                key = frozenset(attribute.key(v) for v in value)  # type: ignore[union-attr]
            else:
                key = attribute.key(value)
        except ValueError:
            return None
        tests.append(_Test(op, key, path + (op,), op, value))
    return tests


def _tested(attribute: _Attribute, path: tuple, tests: list[_Test]) -> _Tested:
    domain = attribute.universe
    for test in tests:
        domain = domain.narrow(test.op, test.value)
    return _Tested(attribute, path, tuple(tests), domain)


class _Context:
    """What rule conditions are read against: the programme's client fields."""

    def __init__(self, model: Programme):
        self.model = model
        self.currency = model.programme.currency
        self.tier_ids = [tier.id for tier in model.tiers]
        self.tier = _Attribute("client.tier", AttributeSpec(type="enum", values=self.tier_ids), self.currency, "tier")
        onboarded = model.event_types.get("client.onboarded")
        segment = onboarded.attributes.get("segment") if onboarded else None
        # A client never onboarded has no segment: rules see it absent.
        segment_spec = (AttributeSpec(type="enum", values=segment.values, required=False)
                        if segment is not None and segment.type == "enum" else AttributeSpec(type="string", required=False))
        self.segment = _Attribute("client.segment", segment_spec, self.currency)
        self.tenure = _Attribute("client.tenure_months", AttributeSpec(type="integer", min=0), self.currency)
        self._attributes: dict[tuple[str, str], _Attribute | None] = {}

    def conditions(self, index: int, rule: Rule) -> dict[str, _Tested]:
        """What rule `index` tests, by attribute label; conditions the loader refuses are left out."""
        base = ("rules", index, "when")
        found: dict[str, _Tested] = {}
        for name, condition in rule.when.where.items():
            attribute = self._attribute(rule.when.event, name)
            if attribute is not None:
                tests = _condition_tests(attribute, base + ("where", name), condition)
                if tests is not None:
                    found[name] = _tested(attribute, base + ("where", name), tests)
        client = rule.when.client
        tier_tests = self._tier_tests(base + ("client",), rule)
        if tier_tests:
            path = base + ("client", "tier" if client.tier is not None else "min_tier")
            found["client.tier"] = _tested(self.tier, path, tier_tests)
        for attribute, condition, key in ((self.segment, client.segment, "segment"),
                                          (self.tenure, client.tenure_months, "tenure_months")):
            if condition is not None:
                tests = _condition_tests(attribute, base + ("client", key), condition)
                if tests is not None:
                    found[attribute.label] = _tested(attribute, base + ("client", key), tests)
        return found

    def _attribute(self, event_type: str, name: str) -> _Attribute | None:
        """The declared attribute, made once per programme (its universe is computed once)."""
        key = (event_type, name)
        if key not in self._attributes:
            spec = self.model.event_types.get(event_type)
            declared = spec.attributes.get(name) if spec else None
            self._attributes[key] = _Attribute(name, declared, self.currency) if declared else None
        return self._attributes[key]

    def _tier_tests(self, path: tuple, rule: Rule) -> list[_Test] | None:
        client = rule.when.client
        tests: list[_Test] = []
        if client.tier is not None:
            tests = _condition_tests(self.tier, path + ("tier",), client.tier) or []
        if client.min_tier in self.tier_ids:
            above = frozenset(self.tier_ids[self.tier_ids.index(client.min_tier):])  # type: ignore[arg-type]
            tests.append(_Test("in", above, path + ("min_tier",), "min_tier", client.min_tier))
        return tests


def _why_empty(tested: _Tested) -> tuple[str, tuple]:
    """The reason a condition can never hold, and where to point: one test, then a pair, then all of them."""
    attribute, tests = tested.attribute, tested.tests
    universe = attribute.universe
    for test in tests:
        if universe.narrow(test.op, test.value).is_empty():
            if test.op == "exists":
                return (f"exists: false needs {attribute.label} absent, but it is required: every event has it",
                        test.path)
            return f"{test.shown} leaves no possible {attribute.noun}: {attribute.label} is {attribute.describe()}", \
                test.path
    for first, second in itertools.combinations(tests, 2):
        if universe.narrow(first.op, first.value).narrow(second.op, second.value).is_empty():
            absent = next((t for t in (first, second) if t.op == "exists" and not t.value), None)
            if absent is not None:
                other = second if absent is first else first
                return f"exists: false needs {attribute.label} absent, but {other.shown} needs it present", tested.path
            return f"no {attribute.noun} is both {first.shown} and {second.shown}", tested.path
    return f"no {attribute.noun} passes {', '.join(t.shown for t in tests)} together", tested.path


# --- tier qualifications -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Bound:
    """A threshold a qualification certainly requires."""

    value: Decimal
    strict: bool
    shown: str  # gte 100000000
    path: tuple


_LOW, _HIGH = "low", "high"


def _side(threshold: Threshold) -> str:
    return _LOW if threshold.operator in ("gte", "gt") else _HIGH


def _tighter(side: str, a: _Bound, b: _Bound) -> bool:
    """True when `a` asks strictly more than `b` (a higher floor, or a lower ceiling)."""
    if a.value != b.value:
        return a.value > b.value if side == _LOW else a.value < b.value
    return a.strict and not b.strict


def _bound_of(threshold: Threshold, path: tuple) -> _Bound:
    return _Bound(threshold.value, threshold.operator in ("gt", "lt"),
                  f"{threshold.operator} {threshold.value}", path)


def _required_bounds(qualification: Qualification, path: tuple,
                     contradictions: list[tuple[str, _Bound, _Bound]]) -> dict[tuple[str, str], _Bound]:
    """(metric, side) → the bound every qualifying client meets; records groups that can never hold."""
    key = "all" if qualification.all is not None else "any"
    parts = []
    for position, item in enumerate(qualification.all or qualification.any or []):
        item_path = path + (key, position)
        if isinstance(item, Threshold):
            parts.append({(item.metric, _side(item)): _bound_of(item, item_path)})
        else:
            parts.append(_required_bounds(item, item_path, contradictions))
    bounds: dict[tuple[str, str], _Bound] = {}
    if key == "all":
        for part in parts:
            for metric_side, bound in part.items():
                held = bounds.get(metric_side)
                if held is None or _tighter(metric_side[1], bound, held):
                    bounds[metric_side] = bound
        known = {c[1].path for c in contradictions} | {c[2].path for c in contradictions}
        for (metric, side), low in bounds.items():
            high = bounds.get((metric, _HIGH))
            if side == _LOW and high is not None and _crossed(low, high) and not {low.path, high.path} <= known:
                contradictions.append((metric, low, high))
    else:  # a metric is certainly bounded by an `any` only when every branch bounds it: by the loosest
        for metric_side in set(parts[0]).intersection(*parts[1:]):
            loosest = parts[0][metric_side]
            for part in parts[1:]:
                if _tighter(metric_side[1], loosest, part[metric_side]):
                    loosest = part[metric_side]
            bounds[metric_side] = loosest
    return bounds


def _crossed(low: _Bound, high: _Bound) -> bool:
    return low.value > high.value or (low.value == high.value and (low.strict or high.strict))


def _metric_ranges(model: Programme) -> dict[str, tuple[Decimal | None, Decimal | None, str]]:
    """The values each metric can take (see engine/metrics.py); every other metric is 0 or more."""
    survey = model.event_types.get("survey.answered")
    nps = survey.attributes.get("nps") if survey else None
    nps_range = (Decimal(nps.min) if nps and nps.min is not None else None,
                 Decimal(nps.max) if nps and nps.max is not None else None)
    return {
        "on_time_repayment_ratio": (Decimal(0), Decimal(1), "a share from 0 to 1"),
        "loan_volume_change": (Decimal(-1), None, "-1 or more (-1: no loans at all in the window)"),
        "latest_nps": (*nps_range, f"an NPS answer ({_range_text(*nps_range)}, as survey.answered nps is declared)"),
    }


def _range_text(low: Decimal | None, high: Decimal | None) -> str:
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f"at least {low}" if low is not None else (f"at most {high}" if high is not None else "any value")


def _out_of_range(threshold: Threshold, ranges: dict) -> str | None:
    """Why `threshold` can never be met by its metric's values, or None."""
    low, high, meaning = ranges.get(threshold.metric, (Decimal(0), None, "0 or more"))
    value, op = threshold.value, threshold.operator
    if (op == "gte" and high is not None and value > high) or (op == "gt" and high is not None and value >= high) \
            or (op == "lte" and low is not None and value < low) or (op == "lt" and low is not None and value <= low):
        return f"{threshold.metric} {op} {value} can never be met: {threshold.metric} is {meaning}"
    return None


def thresholds(qualification: Qualification | None, path: tuple) -> Iterator[tuple[tuple, Threshold]]:
    """(key path, threshold) of every threshold in a qualification, nested groups included."""
    if qualification is None:
        return
    key = "all" if qualification.all is not None else "any"
    for position, item in enumerate(qualification.all or qualification.any or []):
        if isinstance(item, Threshold):
            yield path + (key, position), item
        else:
            yield from thresholds(item, path + (key, position))


def _tier_problems(doc: YamlDocument, model: Programme) -> Iterator[Problem]:
    ranges = _metric_ranges(model)
    required: list[dict[tuple[str, str], _Bound]] = []
    for index, tier in enumerate(model.tiers):
        path = ("tiers", index, "qualification")
        if tier.qualification is None:
            required.append({})
            continue
        impossible = set()
        for threshold_path, threshold in thresholds(tier.qualification, path):
            reason = _out_of_range(threshold, ranges) if threshold.metric in METRICS else None
            if reason:
                impossible.add(threshold_path)
                yield doc.problem(threshold_path + (threshold.operator,), reason)
        contradictions: list[tuple[str, _Bound, _Bound]] = []
        bounds = _required_bounds(tier.qualification, path, contradictions)
        for metric, low, high in contradictions:
            top_low, top_high = bounds.get((metric, _LOW)), bounds.get((metric, _HIGH))
            unreachable = top_low is not None and top_high is not None and _crossed(top_low, top_high)
            yield doc.problem(high.path, f"can never hold: {metric} {low.shown} (line {doc.line_of(low.path)}) and "
                                         f"{metric} {high.shown} are both required"
                                         + (f"; tier {tier.id!r} can never be reached" if unreachable else ""))
        # Thresholds already refused (unknown metric, impossible value) would only add noise here.
        required.append({key: bound for key, bound in bounds.items()
                         if key[0] in METRICS and bound.path not in impossible})
    for index, bounds in enumerate(required):
        for (metric, side), bound in bounds.items():
            lower = [(model.tiers[i].id, required[i][(metric, side)]) for i in range(index)
                     if (metric, side) in required[i] and _tighter(side, required[i][(metric, side)], bound)]
            if not lower:
                continue
            name, strongest = lower[0]
            for other_name, other in lower[1:]:
                if _tighter(side, other, strongest):
                    name, strongest = other_name, other
            verb, than = ("asks", "less") if side == _LOW else ("allows", "more")
            yield doc.problem(bound.path, f"tier {model.tiers[index].id!r} {verb} {metric} {bound.shown}, {than} than "
                                          f"the lower tier {name!r} {verb} ({strongest.shown}, line "
                                          f"{doc.line_of(strongest.path)}): thresholds must rise with the tiers")


def _churn_problems(doc: YamlDocument, model: Programme) -> Iterator[Problem]:
    ranges = _metric_ranges(model)
    for index, signal in enumerate(model.churn.signals):
        reason = _out_of_range(signal, ranges) if signal.metric in METRICS else None
        if reason:
            yield doc.problem(("churn", "signals", index, signal.operator), f"{reason}; signal {signal.id!r} never shows")


# --- errors --------------------------------------------------------------------------------------------

def semantic_errors(doc: YamlDocument, model: Programme) -> list[Problem]:
    """Mistakes the schema cannot see that keep the file from loading: falling tier thresholds, conditions
    and qualifications that can never hold."""
    problems = list(_tier_problems(doc, model))
    problems.extend(_churn_problems(doc, model))
    context = _Context(model)
    for index, rule in enumerate(model.rules):
        for tested in context.conditions(index, rule).values():
            if tested.domain.is_empty():
                reason, path = _why_empty(tested)
                problems.append(doc.problem(path, f"can never hold: {reason}; rule {rule.id!r} never fires"))
    return problems


# --- warnings ------------------------------------------------------------------------------------------

def warnings(doc: YamlDocument, model: Programme) -> list[Problem]:
    """Things a product team should look at that do not keep the file from loading (see the module docstring)."""
    context = _Context(model)
    conditions = [context.conditions(index, rule) for index, rule in enumerate(model.rules)]
    problems = list(_overlap_warnings(doc, model, conditions))
    problems.extend(_unbounded_grant_warnings(doc, model))
    problems.extend(_ceiling_warnings(doc, model))
    problems.extend(_points_cap_warnings(doc, model))
    problems.extend(_tier_benefit_warnings(doc, model))
    problems.extend(_redundant_test_warnings(doc, conditions))
    return problems


def _granted(rule: Rule, kind: str) -> tuple[str, ...]:
    """What a rule grants of one award kind: the discounted products, or the benefit kind."""
    if kind == "rate_discount":
        return tuple(rule.award.rate_discount.products) if rule.award.rate_discount else ()
    return (rule.award.benefit.kind,) if rule.award.benefit else ()


def _can_meet(a: dict[str, _Tested], b: dict[str, _Tested]) -> bool:
    """True when one event (and client) can pass both rules' conditions, each of which can hold on its own:
    every attribute both test has a value passing both."""
    return all(not a[label].domain.meet(b[label].domain).is_empty() for label in a.keys() & b.keys())


def _common_event(a: dict[str, _Tested], b: dict[str, _Tested]) -> list[tuple[_Attribute, Domain]]:
    """What an event passing both rules' conditions looks like, per tested attribute (event first, then client)."""
    common = []
    for label in sorted(a.keys() | b.keys(), key=lambda label: (label.startswith("client."), label)):
        first, second = a.get(label), b.get(label)
        domain = first.domain.meet(second.domain) if first and second else (first or second).domain  # type: ignore[union-attr]
        common.append(((first or second).attribute, domain))  # type: ignore[union-attr]
    return common


def _describe_event(event_type: str, common: list[tuple[_Attribute, Domain]]) -> str:
    parts = []
    for attribute, domain in common:
        example = attribute.example(domain)
        if example is None:
            parts.append(f"no {attribute.label}")
        elif example is _ANY:
            shown = ", ".join(sorted(attribute.render(v) for v in domain.excluded))
            parts.append(f"{attribute.label} other than {shown}" if shown else f"{attribute.label} present")
        else:
            parts.append(f"{attribute.label} {attribute.render(example)}")
    return event_type + (f" with {', '.join(parts)}" if parts else "")


def _overlap_warnings(doc: YamlDocument, model: Programme, conditions: list[dict[str, _Tested]]) -> Iterator[Problem]:
    """One warning per rule and award kind, naming the first earlier rule it overlaps with.

    Only rules on one event type granting one award kind are compared, and each stops at its first
    overlap, so many overlapping rules cost (and report) linearly; rules that never overlap are
    compared pairwise, each comparison a few set operations.
    """
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, rule in enumerate(model.rules):
        if any(tested.domain.is_empty() for tested in conditions[index].values()):
            continue  # it never fires (an error already says why)
        for kind in ("rate_discount", "benefit"):
            if _granted(rule, kind):
                groups[(rule.when.event, kind)].append(index)
    found = []
    for (_event, kind), members in groups.items():
        for position, later in enumerate(members):
            grants = _granted(model.rules[later], kind)
            for earlier in members[:position]:
                shared = [what for what in grants if what in _granted(model.rules[earlier], kind)]
                if shared and _can_meet(conditions[earlier], conditions[later]):
                    found.append((later, kind, earlier, shared))
                    break
    for later, kind, earlier, shared in sorted(found):
        a, b = model.rules[earlier], model.rules[later]
        granted = f"a rate discount on {', '.join(shared)}" if kind == "rate_discount" else f"a {shared[0]} benefit"
        example = _describe_event(b.when.event, _common_event(conditions[earlier], conditions[later]))
        yield doc.warning(("rules", later, "award", kind),
                          f"rules {a.id!r} (line {doc.line_of(('rules', earlier))}) and {b.id!r} both grant {granted} "
                          f"for one event, e.g. {example}: such a client gets both; make their conditions exclusive "
                          "or merge the rules")


def _grant_name(grant: RateDiscountGrant | BenefitGrant) -> str:
    if isinstance(grant, RateDiscountGrant):
        return f"the {grant.bps} bps discount on {', '.join(grant.products)}"
    return f"the {grant.kind} benefit"


def _unbounded_grant_warnings(doc: YamlDocument, model: Programme) -> Iterator[Problem]:
    for index, rule in enumerate(model.rules):
        for kind in ("rate_discount", "benefit"):
            grant = getattr(rule.award, kind)
            if grant is None or grant.valid_for_days is not None:
                continue
            path, what = ("rules", index, "award", kind), _grant_name(grant)
            if grant.use == "standing":
                yield doc.warning(path, f"{what} is standing with no valid_for_days: every firing of rule {rule.id!r} "
                                        "adds one that never expires, kept whatever the client's tier; set "
                                        "valid_for_days")
            elif rule.cap is None:
                yield doc.warning(path, f"{what} has no valid_for_days and rule {rule.id!r} has no cap: every "
                                        "matching event grants one more, and none ever expires; set valid_for_days "
                                        "or a cap")
    for index, reward in enumerate(model.catalogue):
        for kind in ("rate_discount", "benefit"):
            grant = getattr(reward, kind)
            if grant is not None and grant.use == "standing" and grant.valid_for_days is None:
                yield doc.warning(("catalogue", index, kind),
                                  f"{_grant_name(grant)} is standing with no valid_for_days: one redemption of "
                                  f"{reward.id!r} gives it for ever; set valid_for_days")


def _ceiling_warnings(doc: YamlDocument, model: Programme) -> Iterator[Problem]:
    ceilings = model.discount_ceiling_bps
    grants = [(("rules", i, "award", "rate_discount"), r.id, r.award.rate_discount) for i, r in enumerate(model.rules)]
    grants += [(("catalogue", i, "rate_discount"), r.id, r.rate_discount) for i, r in enumerate(model.catalogue)]
    for path, owner, grant in grants:
        if grant is None:
            continue
        for position, product in enumerate(grant.products):
            ceiling = ceilings.get(product, ceilings.get("default"))
            if product not in model.loan_products or ceiling is None or grant.bps <= ceiling:
                continue
            effect = "it never applies" if ceiling == 0 else f"at most {ceiling} bps of it ever applies"
            yield doc.warning(path + ("products", position),
                              f"{owner!r} grants {grant.bps} bps on {product}, above its discount ceiling of "
                              f"{ceiling} bps: {effect}")


def _points_cap_warnings(doc: YamlDocument, model: Programme) -> Iterator[Problem]:
    for index, rule in enumerate(model.rules):
        points = rule.award.points
        if rule.cap and rule.cap.points is not None and points and re.fullmatch(r"\d+", points.strip()) \
                and int(points) > rule.cap.points:
            yield doc.warning(("rules", index, "cap", "points"),
                              f"the cap of {rule.cap.points} points per {rule.cap.per} is below the rule's constant "
                              f"award of {int(points)}: rule {rule.id!r} never gives its full award")


def _tier_benefit_warnings(doc: YamlDocument, model: Programme) -> Iterator[Problem]:
    for index in range(1, len(model.tiers)):
        lower, higher = model.tiers[index - 1], model.tiers[index]
        for key, falls in _falling_benefits(lower.benefits, higher.benefits):
            yield doc.warning(("tiers", index, "benefits", *key),
                              f"tier {higher.id!r} {falls.format(below=repr(lower.id))}: a client moving up loses out")


def _falling_benefits(lower: TierBenefits, higher: TierBenefits) -> Iterator[tuple[tuple, str]]:
    """(key path, what falls, with {below} standing for the lower tier) for each benefit that falls."""
    if higher.points_multiplier < lower.points_multiplier:
        yield ("points_multiplier",), (f"multiplies points by {higher.points_multiplier}, less than the tier below, "
                                       f"{{below}} ({lower.points_multiplier})")
    for product, bps in lower.rate_discount_bps.items():
        given = higher.rate_discount_bps.get(product, 0)
        if given < bps:
            key = ("rate_discount_bps", product) if product in higher.rate_discount_bps else ("rate_discount_bps",)
            yield key, f"gives {given} bps on {product}, less than the tier below, {{below}} ({bps} bps)"
    if higher.fee_waiver_pct < lower.fee_waiver_pct:
        yield ("fee_waiver_pct",), (f"waives {higher.fee_waiver_pct}% of fees, less than the tier below, {{below}} "
                                    f"({lower.fee_waiver_pct}%)")
    if lower.fast_track is not None and higher.fast_track is None:
        yield ("fast_track",), f"has no fast track, unlike the tier below, {{below}} ({lower.fast_track.sla_hours} h)"
    elif lower.fast_track is not None and higher.fast_track.sla_hours > lower.fast_track.sla_hours:  # type: ignore[union-attr]
        yield ("fast_track", "sla_hours"), (f"has a {higher.fast_track.sla_hours} h fast track, slower than the tier "  # type: ignore[union-attr]
                                            f"below, {{below}} ({lower.fast_track.sla_hours} h)")
    if lower.relationship_manager and not higher.relationship_manager:
        yield ("relationship_manager",), "has no relationship manager, unlike the tier below, {below}"


def _redundant_test_warnings(doc: YamlDocument, conditions: list[dict[str, _Tested]]) -> Iterator[Problem]:
    for tested_by_label in conditions:
        for tested in tested_by_label.values():
            if tested.domain.is_empty() or not any(t.op == "exists" and not t.value for t in tested.tests):
                continue
            for test in tested.tests:
                if test.op in ("ne", "not_in"):
                    yield doc.warning(test.path, f"{test.shown} adds nothing: exists: false already leaves "
                                                 f"{tested.attribute.label} absent, and an absent attribute passes it")
