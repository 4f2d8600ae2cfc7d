"""Load rule files: YAML → pydantic schema → cross-reference and semantic checks → CEL and matcher compilation.

A file either loads completely or not at all; every problem found is reported at once, each with
its file, line, column and key path. `check_source` (for `loyalty rules check`) also lints a file:
warnings (engine/lint.py) never keep a file from loading.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from engine.boundary_events import boundary_activations
from engine.errors import Problem, RuleFileError, did_you_mean
from engine.events import matching_value, minor_unit_exponent, parse_day
from engine.expression_tokens import CLIENT_FIELDS, references
from engine.expressions import ExpressionError, compile_points
from engine.matching import RANGE_OPERATORS, AttributeTest, Matcher, MatcherLimitError, MatchRule
from engine.programme import CompiledProgramme, CompiledRule, ProgrammeSet
from engine import lint, schema
from engine.metrics import METRIC_INPUTS, METRICS
from engine.schema import AttributeSpec, Condition, Programme, Rule
from engine.yaml_source import MAX_FILE_BYTES, YamlDocument, load_yaml, size_problem

RULE_FILE_SUFFIXES = (".yaml", ".yml")
_ORDERED_TYPES = {"integer", "money", "date", "month"}


def rule_files(location: Path) -> list[Path]:
    """The rule files at `location`: the file itself, or the top-level *.yaml files of a directory."""
    if location.is_dir():
        return sorted(p for p in location.iterdir() if p.suffix in RULE_FILE_SUFFIXES and p.is_file())
    return [location]


def load_programme(path: Path) -> CompiledProgramme:
    """Load, check and compile one rule file, or raise RuleFileError listing every problem."""
    return compile_source(str(path), read_source(path))


def read_source(path: Path) -> bytes:
    """The bytes of a rule file, or RuleFileError saying why it cannot be read."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # never more: a huge file is refused, not read whole
            if len(data) > MAX_FILE_BYTES:
                size = max(len(data), path.stat().st_size)
                raise RuleFileError([size_problem(str(path), size)])  # type: ignore[list-item]
            return data
    except OSError as exc:
        raise RuleFileError([Problem(str(path), None, "", f"cannot read the file: {exc.strerror}")]) from None


def compile_source(file: str, data: bytes) -> CompiledProgramme:
    """Check and compile the bytes of rule file `file` (named in problems), or raise RuleFileError."""
    return compile_document(_parse(file, data))


def _parse(file: str, data: bytes) -> YamlDocument:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RuleFileError([Problem(file, line, "", "not UTF-8 text; save the file as UTF-8", column)]) from None
    return load_yaml(file, text)


def compile_document(doc: YamlDocument) -> CompiledProgramme:
    """Validate a parsed YAML document and compile it."""
    return _compile(doc, _validate(doc))


def _validate(doc: YamlDocument) -> Programme:
    try:
        return Programme.model_validate(doc.data)
    except ValidationError as exc:
        raise RuleFileError(_schema_problems(doc, exc.errors())) from None


def _compile(doc: YamlDocument, model: Programme) -> CompiledProgramme:
    problems = list(_cross_reference_problems(doc, model))
    problems.extend(lint.semantic_errors(doc, model))
    rules = []
    # (source, event type) → expression or refusal, tried once: the samples depend on no more than that.
    # Cached without the rule's name, which is added when reporting (another rule may share the expression).
    compiled: dict[tuple[str, str], object] = {}
    for index, rule in enumerate(model.rules):
        points = None
        if rule.award.points:
            path = ("rules", index, "award", "points")
            unknown = list(_expression_reference_problems(doc, path, model, rule))
            problems.extend(unknown)
            key = (rule.award.points, rule.when.event)
            if not unknown and key not in compiled:
                try:
                    samples, describe = boundary_activations(model, rule)
                    compiled[key] = compile_points(rule.award.points, samples, describe, _POINTS)
                except ExpressionError as exc:
                    compiled[key] = exc
            outcome = None if unknown else compiled[key]
            if isinstance(outcome, ExpressionError):
                problems.append(doc.problem(path, _naming_rule(str(outcome), rule.id)))
            else:
                points = outcome  # type: ignore[assignment]
        rules.append(CompiledRule(rule, index, points))
    if problems:
        raise RuleFileError(problems)
    try:
        matcher = Matcher([_match_rule(model, compiled) for compiled in rules])
    except MatcherLimitError as exc:
        raise RuleFileError([doc.problem(("rules",), str(exc))]) from None
    return CompiledProgramme(model, doc.file, tuple(rules), matcher)


_POINTS = "the points expression"


def _naming_rule(message: str, rule_id: str) -> str:
    """A message about a points expression (cached for every rule that shares it), naming one rule."""
    return f"{_POINTS} of rule {rule_id}{message[len(_POINTS):]}" if message.startswith(_POINTS) else message


# --- schema errors -------------------------------------------------------------------------------

# pydantic names the member of a union it tried in the error location; these are not document keys.
_UNION_MEMBERS = {"bool", "int", "decimal", "date", "str", "threshold", "group"}
_PATTERN_MEANING = {
    schema.NAME_PATTERN: "lower-case letters, digits and _, starting with a letter",
    schema.EVENT_TYPE_PATTERN: "dotted lower-case words, e.g. loan.drawn",
    schema.RULE_ID_PATTERN: "lower-case letters, digits, ., _ and -",
    schema.PROGRAMME_ID_PATTERN: "lower-case letters, digits, _ and -",
    schema.CURRENCY_PATTERN: "a three-letter ISO currency code such as CNY",
}


@functools.cache
def _known_keys() -> frozenset[str]:
    return frozenset(field.alias or name for model in vars(schema).values()
                     if isinstance(model, type) and issubclass(model, schema.Strict)
                     for name, field in model.model_fields.items())


def _schema_problems(doc: YamlDocument, errors: list[dict]) -> list[Problem]:
    grouped: dict[tuple, list[dict]] = {}
    for err in errors:
        path = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p in _UNION_MEMBERS
                                                                          or p.startswith("function-"))))
        grouped.setdefault(path, []).append(err)
    problems = []
    for path, errs in grouped.items():
        if len(errs) > 1 and all(len(err["loc"]) > len(path) for err in errs):
            # One value that fits no member of a union: say what would fit, once.
            problems.append(doc.problem(path, "expected a single value: a number, text, a date or true/false "
                                              f"(got {errs[0].get('input')!r})"))
        else:
            problems.extend(_schema_problem(doc, path, err) for err in errs)
    return problems


def _schema_problem(doc: YamlDocument, path: tuple, err: dict) -> Problem:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(path[-1])
        return doc.problem(path, f"unknown key {key!r}{did_you_mean(key, _known_keys())}")
    if kind == "missing":
        return doc.problem(path, f"required key {path[-1]!r} is missing")
    message = err["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern")
        message = f"expected {_PATTERN_MEANING.get(pattern, f'text matching {pattern}')}"
    value = err.get("input")
    if kind not in {"model_type", "dict_type", "list_type"} and not isinstance(value, (dict, list)):
        message += f" (got {value!r})"
    return doc.problem(path, message)


# --- cross-reference checks -------------------------------------------------------------------------

def _cross_reference_problems(doc: YamlDocument, model: Programme) -> Iterable[Problem]:
    products = set(model.loan_products)
    tier_ids = [t.id for t in model.tiers]
    yield from _duplicates(doc, "tiers", tier_ids)
    yield from _duplicates(doc, "rules", [r.id for r in model.rules])
    yield from _duplicates(doc, "loan_products", model.loan_products)

    for product in model.discount_ceiling_bps:
        if product != "default" and product not in products:
            yield doc.problem(("discount_ceiling_bps", product), _unknown("loan product", product, products))
    if "default" not in model.discount_ceiling_bps:
        for product in sorted(products - set(model.discount_ceiling_bps)):
            yield doc.problem(("discount_ceiling_bps",),
                              f"no ceiling for loan product {product!r}; name it or add a 'default' ceiling")
    ceilings = model.discount_ceiling_bps
    for index, tier in enumerate(model.tiers):
        for product, bps in tier.benefits.rate_discount_bps.items():
            path = ("tiers", index, "benefits", "rate_discount_bps", product)
            if product not in products:
                yield doc.problem(path, _unknown("loan product", product, products))
            elif bps > ceilings.get(product, ceilings.get("default", 0)):
                yield doc.problem(path, f"{bps} bps is above the ceiling for {product} "
                                        f"({ceilings.get(product, ceilings.get('default'))} bps): it could never apply")

    if model.tiers[0].qualification is not None:
        yield doc.problem(("tiers", 0, "qualification"),
                          "the lowest tier is where clients who qualify for nothing stay; it takes no qualification")
    for index, tier in enumerate(model.tiers):
        if index and tier.qualification is None:
            yield doc.problem(("tiers", index), f"tier {tier.id!r} has no qualification; every tier above the "
                                                "lowest needs one (otherwise every client would qualify)")
        for path, threshold in lint.thresholds(tier.qualification, ("tiers", index, "qualification")):
            if threshold.metric not in METRICS:
                yield doc.problem(path + ("metric",), _unknown("metric", threshold.metric, METRICS))

    yield from _metric_input_problems(doc, model)
    segments = _segment_values(model)
    for index, rule in enumerate(model.rules):
        base = ("rules", index)
        when = rule.when
        spec = model.event_types.get(when.event)
        if spec is None:
            yield doc.problem(base + ("when", "event"), _unknown("event type", when.event, model.event_types))
        else:
            for name, condition in when.where.items():
                path = base + ("when", "where", name)
                if name not in spec.attributes:
                    yield doc.problem(path, _unknown(f"attribute of {when.event}", name, spec.attributes))
                else:
                    yield from _condition_problems(doc, path, condition, spec.attributes[name], model.programme.currency)
        client = when.client
        if client.min_tier is not None and client.min_tier not in tier_ids:
            yield doc.problem(base + ("when", "client", "min_tier"), _unknown("tier", client.min_tier, tier_ids))
        if client.tier is not None:
            yield from _condition_problems(doc, base + ("when", "client", "tier"), client.tier,
                                           AttributeSpec(type="enum", values=tier_ids), model.programme.currency, "tier")
        if client.segment is not None:
            segment_spec = AttributeSpec(type="enum", values=segments) if segments else AttributeSpec(type="string")
            yield from _condition_problems(doc, base + ("when", "client", "segment"), client.segment,
                                           segment_spec, model.programme.currency)
        if client.tenure_months is not None:
            yield from _condition_problems(doc, base + ("when", "client", "tenure_months"), client.tenure_months,
                                           AttributeSpec(type="integer", min=0), model.programme.currency)
        grant = rule.award.rate_discount
        if grant is not None:
            for position, product in enumerate(grant.products):
                if product not in products:
                    yield doc.problem(base + ("award", "rate_discount", "products", position),
                                      _unknown("loan product", product, products))
        if rule.cap and rule.cap.points is not None and rule.award.points is None:
            yield doc.problem(base + ("cap", "points"), "a points cap needs an award with points")

    yield from _policy_problems(doc, model, tier_ids)
    yield from _duplicates(doc, "catalogue", [reward.id for reward in model.catalogue])
    for index, reward in enumerate(model.catalogue):
        base = ("catalogue", index)
        if reward.min_tier is not None and reward.min_tier not in tier_ids:
            yield doc.problem(base + ("min_tier",), _unknown("tier", reward.min_tier, tier_ids))
        for position, product in enumerate(reward.rate_discount.products if reward.rate_discount else []):
            if product not in products:
                yield doc.problem(base + ("rate_discount", "products", position),
                                  _unknown("loan product", product, products))


def _policy_problems(doc: YamlDocument, model: Programme, tier_ids: list[str]) -> Iterable[Problem]:
    """Review, points and churn policies: known tiers and metrics, valid schedules."""
    for position, tier in enumerate(model.review.instant_upgrade):
        path = ("review", "instant_upgrade", position)
        if tier not in tier_ids:
            yield doc.problem(path, _unknown("tier", tier, tier_ids))
        elif tier == tier_ids[0]:
            yield doc.problem(path, f"{tier!r} is the lowest tier: every client is already in it or above")
    for path, schedule in ((("review", "schedule"), model.review.schedule),
                           (("points", "expiry_schedule"), model.points.expiry_schedule)):
        if schedule is not None:
            yield from (doc.problem(path + (key,), message) for key, message in schedule_problems(schedule))
    if model.points.expiry_schedule is not None and model.points.expire_after_months is None:
        yield doc.problem(("points", "expiry_schedule"), "an expiry schedule needs expire_after_months")
    if model.points.expiry_notice_days and model.points.expire_after_months is None:
        yield doc.problem(("points", "expiry_notice_days"), "expiry notices need expire_after_months")
    churn = model.churn
    if churn.min_tier is not None and churn.min_tier not in tier_ids:
        yield doc.problem(("churn", "min_tier"), _unknown("tier", churn.min_tier, tier_ids))
    yield from _duplicates(doc, "churn", [signal.id for signal in churn.signals], ("churn", "signals"))
    for position, signal in enumerate(churn.signals):
        if signal.metric not in METRICS:
            yield doc.problem(("churn", "signals", position, "metric"), _unknown("metric", signal.metric, METRICS))


def schedule_problems(schedule: schema.Schedule) -> list[tuple[str, str]]:
    """(key, message) for a cron expression or time zone the scheduler would refuse."""
    from apscheduler.triggers.cron import CronTrigger  # where a schedule is checked, not with the loader

    problems = []
    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(("timezone", f"unknown time zone {schedule.timezone!r}; expected an IANA name such as "
                                     "UTC or Asia/Shanghai"))
        zone = ZoneInfo("UTC")
    try:
        CronTrigger.from_crontab(schedule.cron, timezone=zone)
    except ValueError as exc:
        problems.append(("cron", f"invalid cron expression {schedule.cron!r}: {exc}"))
    return problems


_INPUT_TYPES = ({"money"}, {"integer"}, {"enum", "string", "month"})


def _metric_input_problems(doc: YamlDocument, model: Programme) -> Iterable[Problem]:
    """Metrics read fixed attributes of the standard event types: where declared, their types must fit."""
    for event_type, attributes in METRIC_INPUTS.items():
        spec = model.event_types.get(event_type)
        for name, allowed in zip(attributes, _INPUT_TYPES):
            declared = spec.attributes.get(name) if spec and name else None
            if declared is not None and declared.type not in allowed:
                yield doc.problem(("event_types", event_type, "attributes", name, "type"),
                                  f"tier metrics read {event_type} {name} as {' or '.join(sorted(allowed))}; "
                                  f"it is declared {declared.type}")


def _segment_values(model: Programme) -> list[str]:
    onboarded = model.event_types.get("client.onboarded")
    segment = onboarded.attributes.get("segment") if onboarded else None
    return list(segment.values or []) if segment is not None and segment.type == "enum" else []


def _duplicates(doc: YamlDocument, key: str, ids: list[str], key_path: tuple | None = None) -> Iterable[Problem]:
    seen: set[str] = set()
    for index, item in enumerate(ids):
        if item in seen:
            yield doc.problem((key_path or (key,)) + (index,), f"{item!r} appears more than once; ids must be unique")
        seen.add(item)


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    known = list(known)
    return f"unknown {what} {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"


def _condition_problems(doc: YamlDocument, path: tuple, condition: Condition, spec: AttributeSpec,
                        currency: str, what: str = "value") -> Iterable[Problem]:
    for op, value in condition.operators().items():
        if op == "exists":
            continue
        if op in RANGE_OPERATORS and spec.type not in _ORDERED_TYPES:
            yield doc.problem(path + (op,), f"{op} compares order; {spec.type} values can only be tested with "
                                            "eq, ne, in, not_in or exists")
            continue
        for item in (value if op in ("in", "not_in") else [value]):
            error = _literal_error(spec, item, currency, what)
            if error:
                yield doc.problem(path + (op,), error)


def _literal_error(spec: AttributeSpec, value: object, currency: str, what: str = "value") -> str | None:
    kind = spec.type
    if kind == "enum":
        if value not in (spec.values or []):
            return _unknown(what, str(value), spec.values or [])
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected a whole number, got {value!r}"
    elif kind == "money":
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            return f"expected an amount, got {value!r}"
        if isinstance(value, bool) or amount != amount.quantize(Decimal(1).scaleb(-minor_unit_exponent(currency))):
            return f"expected an amount with at most {minor_unit_exponent(currency)} decimals, got {value!r}"
    elif kind == "boolean":
        if not isinstance(value, bool):
            return f"expected true or false, got {value!r}"
    elif kind == "date":
        if parse_day(value) is None:
            return f"expected a date YYYY-MM-DD, got {value!r}"
    elif kind == "month":
        if parse_day(f"{value}-01") is None:
            return f"expected a month \"YYYY-MM\" (quoted), got {value!r}"
    elif kind == "string" and not isinstance(value, str):
        return f"expected text, got {value!r}"
    return None


# --- compilation --------------------------------------------------------------------------------------

def _match_rule(model: Programme, compiled: CompiledRule) -> MatchRule:
    rule = compiled.rule
    currency = model.programme.currency
    types = {name: spec.type for name, spec in model.event_types[rule.when.event].attributes.items()}
    tests: list[AttributeTest] = []
    for name, condition in rule.when.where.items():
        tests.extend(_tests(f"e.{name}", condition, types[name], currency))
    client = rule.when.client
    if client.tier is not None:
        tests.extend(_tests("c.tier", client.tier, "enum", currency))
    if client.min_tier is not None:
        tier_ids = [t.id for t in model.tiers]
        tests.append(AttributeTest("c.tier", "in", tuple(tier_ids[tier_ids.index(client.min_tier):])))
    if client.segment is not None:
        tests.extend(_tests("c.segment", client.segment, "enum", currency))
    if client.tenure_months is not None:
        tests.extend(_tests("c.tenure_months", client.tenure_months, "integer", currency))
    return MatchRule(compiled.index, rule.when.event, tuple(tests))


def _tests(path: str, condition: Condition, attribute_type: str, currency: str) -> list[AttributeTest]:
    def convert(value: object) -> object:
        return matching_value(attribute_type, value, currency)

    tests = []
    for op, value in sorted(condition.operators().items()):
        if op == "exists":
            tests.append(AttributeTest(path, op, value))
        elif op in ("in", "not_in"):
            tests.append(AttributeTest(path, op, tuple(convert(v) for v in value)))  # type: ignore[union-attr]
        else:
            tests.append(AttributeTest(path, op, convert(value)))
    return tests


def _expression_reference_problems(doc: YamlDocument, path: tuple, model: Programme, rule: Rule) -> Iterable[Problem]:
    """Names a points expression reads that its event type or the client does not have, with did-you-mean."""
    spec = model.event_types.get(rule.when.event)
    if spec is None:
        return  # the unknown event type is reported on its own
    for scope, name in references(rule.award.points or ""):
        known = list(spec.attributes) if scope == "event" else list(CLIENT_FIELDS)
        if name not in known:
            owner = f"attribute of {rule.when.event}" if scope == "event" else "client field"
            yield doc.problem(path, f"points expression reads {scope}.{name}: {_unknown(owner, name, known)}")


def load_programmes(location: Path) -> ProgrammeSet:
    """Load every rule file at `location` as versions of one programme, or raise listing every problem."""
    return load_sources(read_sources(location))


def read_sources(location: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every rule file at `location`, or RuleFileError listing every one that cannot be read."""
    files = rule_files(location)
    if not files:
        raise RuleFileError([Problem(str(location), None, "", "no rule files (*.yaml) here")])
    sources, problems = [], []
    for path in files:
        try:
            sources.append((str(path), read_source(path)))
        except RuleFileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RuleFileError(problems)
    return sources


def load_sources(sources: Iterable[tuple[str, bytes]]) -> ProgrammeSet:
    """Compile each (name, bytes) as a version of one programme, or raise listing every problem."""
    loaded, problems = [], []
    for file, data in sources:
        try:
            loaded.append(compile_source(file, data))
        except RuleFileError as exc:
            problems.extend(exc.problems)
    problems.extend(version_problems(loaded))
    if problems:
        raise RuleFileError(problems)
    return ProgrammeSet(tuple(sorted(loaded, key=lambda p: p.effective_from)))


@dataclass(frozen=True)
class FileCheck:
    """What checking one rule file found: its errors and warnings, and the programme when it loads."""

    file: str
    programme: CompiledProgramme | None  # None when the file itself does not load
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        """The problems that keep the file from loading."""
        return [p for p in self.problems if p.is_error]


def check_source(file: str, data: bytes) -> FileCheck:
    """Check and lint the bytes of rule file `file`: every error and warning at once, and the programme when it loads.

    Warnings are looked for whenever the file fits the schema, so a file with a broken reference
    still shows them.
    """
    try:
        doc = _parse(file, data)
        model = _validate(doc)
    except RuleFileError as exc:
        return FileCheck(file, None, list(exc.problems))
    warnings = lint.warnings(doc, model)
    try:
        return FileCheck(doc.file, _compile(doc, model), warnings)
    except RuleFileError as exc:
        return FileCheck(doc.file, None, list(exc.problems) + warnings)


def version_problems(loaded: list[CompiledProgramme]) -> Iterable[Problem]:
    """Problems between versions of one programme: mixed ids, repeated versions or starts, dropped tiers."""
    if not loaded:
        return
    ordered = sorted(loaded, key=lambda p: p.effective_from)
    for earlier, later in zip(ordered, ordered[1:]):
        dropped = [tier for tier in earlier.tier_ids if tier not in later.tier_ids]
        if dropped:
            yield Problem(later.source, None, "tiers",
                          f"tiers {', '.join(dropped)} of version {earlier.version} ({earlier.source}) are missing; "
                          "clients may hold them, so a later version must keep every earlier tier id")
    first = loaded[0]
    seen_versions: dict[str, str] = {}
    seen_starts: dict[datetime, str] = {}
    for programme in loaded:
        if programme.id != first.id:
            yield Problem(programme.source, None, "programme.id",
                          f"programme {programme.id!r} differs from {first.id!r} in {first.source}; "
                          "one rules location holds versions of one programme")
        if programme.version in seen_versions:
            yield Problem(programme.source, None, "programme.version",
                          f"version {programme.version!r} is also defined in {seen_versions[programme.version]}")
        if programme.effective_from in seen_starts:
            yield Problem(programme.source, None, "programme.effective_from",
                          f"{programme.effective_from.isoformat()} is also the start of {seen_starts[programme.effective_from]}")
        seen_versions[programme.version] = programme.source
        seen_starts[programme.effective_from] = programme.source
