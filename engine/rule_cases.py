"""Rule test cases: the YAML format product teams write beside a rule file (`rules/tests/*.yaml`), and
its loader.

A case says: given a client (onboarded on a date, in a segment, in a tier), when these events
happen (and optionally tier reviews run), expect this outcome (points, points earned per rule,
grants held, tier, the benefits a loan system would get). Loading checks the case against the
programme the way ingest checks events (engine.events), and reports every problem at once with its
file, line and key path. Running the cases is service.rule_tests' job; this module is pure.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine.context import ONBOARDING_EVENT
from engine.errors import EventError, Problem, RuleFileError, did_you_mean
from engine.events import EARLIEST_YEAR, LATEST_YEAR, parse_envelope, typed_event
from engine.loader import read_source
from engine.programme import ProgrammeSet
from engine.schema import Name
from engine.yaml_source import YamlDocument, load_yaml
from rewards.tiers import TIER_RULE_PREFIX

CASE_FILE_SUFFIXES = (".yaml", ".yml")
DEFAULT_CLIENT = "C-1"
ONBOARDING_ID = "onboarded"  # the id of the client.onboarded event a given onboarding sends


def _moment(value: object) -> object:
    """A date (midnight UTC) or a timestamp with a zone, as an aware UTC datetime; naive is an error."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a date or timestamp; write 2026-04-01 (midnight UTC) or "
                             "2026-03-01T10:00:00Z") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value.isoformat()} has no time zone; add Z for UTC, "
                             f"e.g. {value.isoformat()}Z")
        value = value.astimezone(UTC)
    elif isinstance(value, date):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        raise ValueError("expected a date (2026-04-01, midnight UTC) or a timestamp with a zone (2026-03-01T10:00:00Z)")
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"year {value.year} is outside {EARLIEST_YEAR}-{LATEST_YEAR}")
    return value


def _not_null(value: object) -> object:
    """Refuse an explicit null: the comparison skips a null expectation, and no held grant matches a null field."""
    if value is None:
        raise ValueError("null is not a value to check: give one, or leave the key out")
    return value


def _no_null_in_schema(schema: dict) -> None:
    """Drop null from a field's JSON Schema (and its null default), as _not_null drops it from validation."""
    options = [option for option in schema.pop("anyOf") if option != {"type": "null"}]
    schema.pop("default", None)
    schema.update(options[0] if len(options) == 1 else {"anyOf": options})


def _not_empty(value: dict | list) -> dict | list:
    """Refuse an empty mapping or list of expectations: it checks nothing, so the case would always pass."""
    if not value:
        raise ValueError(f"{'[]' if isinstance(value, list) else '{}'} checks nothing: list what to expect, or "
                         "leave the key out")
    return value


Moment = Annotated[datetime, BeforeValidator(_moment)]
_T = TypeVar("_T")
# A key that may be left out but not written as null: a null would make the case check nothing (see _not_null).
NonNull = Annotated[_T | None, BeforeValidator(_not_null), Field(json_schema_extra=_no_null_in_schema)]
Text = Annotated[str, Field(min_length=1, max_length=200)]
Id = Annotated[str, Field(min_length=1, max_length=64)]
Count = Annotated[int, Field(ge=0)]


class Strict(BaseModel):
    """Base of every case-file model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Given(Strict):
    """The client before the case's events: onboarded (a client.onboarded event) and set to a tier (a pin)."""

    client: Id = DEFAULT_CLIENT
    onboarded: Moment | None = Field(default=None, description="when the client.onboarded event happened")
    segment: str | None = Field(default=None, description="the onboarding event's segment")
    name: Text | None = Field(default=None, description="the onboarding event's name (default: the client id)")
    industry: Text | None = None
    tier: Name | None = Field(default=None, description="the tier the client is put in right after onboarding")


class CaseEvent(Strict):
    """One activity event; id and client are filled in when omitted."""

    type: str
    at: Moment
    data: dict[str, Any] = {}
    id: Id | None = None
    client: Id | None = None


GrantKind = Literal["rate_discount", "fast_track", "relationship_manager", "fee_waiver"]


class GrantSpec(Strict):
    """An entitlement the client holds at the moment of the expectations; every field given must match."""

    rule: str = Field(description="the rule id that granted it (or tier:<tier> for a tier's standing benefits)")
    kind: NonNull[GrantKind] = None
    bps: NonNull[Count] = None
    products: NonNull[list[Name]] = None
    use: NonNull[Literal["single", "standing"]] = None
    lane: NonNull[Name] = None
    sla_hours: NonNull[Count] = None
    fee_waiver_pct: NonNull[Count] = None
    valid_to: NonNull[Moment] = None
    count: NonNull[Count] = Field(default=None, description="exactly this many held entitlements match (default: at "
                                                            "least one)")

    def criteria(self) -> dict[str, object]:
        """The fields given, except count: what a held entitlement must match."""
        return {key: getattr(self, key) for key in type(self).model_fields if key in self.model_fields_set
                and key != "count"}


class FastTrackSpec(Strict):
    """The approval lane a loan application gets."""

    lane: Name
    sla_hours: Count | None = None


class BenefitsSpec(Strict):
    """What a loan system gets, after stacking and the ceiling (fields as in a tier's benefits)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    rate_discount_bps: dict[Name, Count] = Field(default={}, json_schema_extra={"minProperties": 1})
    fast_track: FastTrackSpec | None = Field(default=None, description="null: no fast track at all")
    relationship_manager: NonNull[bool] = None
    fee_waiver_pct: NonNull[Count] = None

    _no_empty = field_validator("rate_discount_bps")(_not_empty)

    @model_validator(mode="after")
    def _checks_something(self) -> BenefitsSpec:
        if not self.model_fields_set:
            raise ValueError("{} checks nothing: give any of rate_discount_bps, fast_track, relationship_manager, "
                             "fee_waiver_pct, or leave benefits out")
        return self


class Expect(Strict):
    """The outcome at `at` (default: the case's last moment); only what is given is checked."""

    at: Moment | None = None
    tier: NonNull[Name] = None
    qualifies_for: NonNull[Name] = Field(default=None, description="the tier the metrics earn at that moment")
    points: NonNull[Count] = Field(default=None, description="the points balance")
    earned: dict[str, Count] = Field(default={}, description="points earned per rule id",
                                     json_schema_extra={"minProperties": 1})
    grants: list[GrantSpec] = Field(default=[], json_schema_extra={"minItems": 1})
    no_grants: list[GrantSpec] = Field(default=[], json_schema_extra={"minItems": 1})
    benefits: NonNull[BenefitsSpec] = None

    # The comparison skips an empty mapping or list, so the case could pass checking nothing.
    _no_empty = field_validator("earned", "grants", "no_grants")(_not_empty)

    @model_validator(mode="after")
    def _checks_something(self) -> Expect:
        if not self.model_fields_set - {"at"}:
            raise ValueError("expect needs at least one of tier, qualifies_for, points, earned, grants, no_grants, "
                             "benefits; a case that checks nothing always passes")
        return self


class Case(Strict):
    """One example: given a client, when events happen (and reviews run), expect an outcome."""

    name: Text
    description: str = ""
    given: Given = Given()
    events: list[CaseEvent] = []
    review: Annotated[list[Moment], WithJsonSchema({  # one moment or a list, as the validator below accepts
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})] = Field(
        default=[], description="tier reviews to run, each after the events up to its moment")
    expect: Expect

    @field_validator("review", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return value if isinstance(value, list) else [value]


class CaseFileModel(Strict):
    """A whole case file (its cases are validated one by one, so every broken case is reported)."""

    description: str = ""
    cases: list[Any] = Field(min_length=1)


@dataclass(frozen=True)
class RuleCase:
    """A checked case, ready to run, with the envelopes ingest takes."""

    case: Case
    file: str
    line: int
    onboarding: dict | None  # the client.onboarded envelope, when the case gives an onboarding
    events: tuple[tuple[int, dict], ...]  # (line, envelope), in the order written

    @property
    def name(self) -> str:
        """The case's name."""
        return self.case.name

    @property
    def client_id(self) -> str:
        """The client whose outcome the case checks."""
        return self.case.given.client

    @property
    def at(self) -> datetime:
        """The moment the expectations are read at: `expect.at`, else the latest moment the case mentions."""
        moments = [self.case.given.onboarded, *self.case.review, *(event.at for event in self.case.events)]
        return self.case.expect.at or max(moment for moment in moments if moment is not None)


def case_files(location: Path) -> list[Path]:
    """The case files at `location`: the file itself, or the *.yaml files of a directory."""
    if location.is_dir():
        return sorted(p for p in location.iterdir() if p.suffix in CASE_FILE_SUFFIXES and p.is_file())
    return [location]


def load_cases(paths: Iterable[Path], programmes: ProgrammeSet) -> list[RuleCase]:
    """Load and check case files against `programmes`, or raise RuleFileError listing every problem of every file."""
    cases: list[RuleCase] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            cases.extend(load_case_file(path, programmes))
        except RuleFileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RuleFileError(problems)
    return cases


def load_case_file(path: Path, programmes: ProgrammeSet) -> list[RuleCase]:
    """Load one case file, or raise RuleFileError listing every problem with its line and key path."""
    file = str(path)
    data = read_source(path)  # at most MAX_FILE_BYTES are read: a case file is untrusted input too
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RuleFileError([Problem(file, line, "", "not UTF-8 text; save the file as UTF-8")]) from None
    if not text.strip():
        raise RuleFileError([Problem(file, 1, "", "the file is empty; expected `cases:` with a list of cases")])
    # Counted while composed: a case file is read in this process, with no trial process to contain it.
    doc = load_yaml(file, text, fast=False)
    if not isinstance(doc.data, dict):
        raise RuleFileError([doc.problem((), "expected a mapping with a `cases:` list")])
    problems: list[Problem] = []
    try:
        CaseFileModel.model_validate(doc.data)
    except ValidationError as exc:
        problems = [_schema_problem(doc, err["loc"], err) for err in exc.errors()]
        if any(err["loc"][:1] == ("cases",) for err in exc.errors()):  # no list of cases to read
            raise RuleFileError(problems) from None
    cases = []
    names: dict[str, int] = {}
    for index, item in enumerate(doc.data["cases"]):
        base = ("cases", index)
        case: Case | None = None
        errors: list[dict] = []
        try:  # each case on its own: a broken case does not hide the problems of the others
            case = Case.model_validate(item)
        except ValidationError as exc:
            errors = exc.errors()
        found = [_schema_problem(doc, base + tuple(err["loc"]), err) for err in errors]
        # The cross-checks read the parts that validated, so a structure error does not hide them.
        parts = _parts(item, [_document_path(err["loc"]) for err in errors])
        line = doc.line_of(base) or 0
        if parts.name is not None:
            if parts.name in names:
                found.append(doc.problem(base + ("name",), f"case name {parts.name!r} is also used by the case at "
                                                           f"line {names[parts.name]}; give each case its own name"))
            names.setdefault(parts.name, line)
        found.extend(_case_problems(doc, base, parts, programmes))
        problems.extend(sorted(found, key=lambda problem: (problem.line or 0, problem.column or 0)))
        if case is not None and not found:
            cases.append(RuleCase(case, file, line, onboarding_event(case.given, programmes),
                                  tuple(_envelopes(doc, base, case))))
    if problems:
        raise RuleFileError(problems)
    return cases


# --- structure -----------------------------------------------------------------------------------------

@functools.cache
def _known_keys() -> frozenset[str]:
    return frozenset(name for model in (CaseFileModel, Case, Given, CaseEvent, Expect, GrantSpec, BenefitsSpec,
                                        FastTrackSpec) for name in model.model_fields)


def _document_path(loc: tuple) -> tuple:
    """A pydantic error location as a key path of the document."""
    # pydantic names the member of a union or the validator function it tried; they are not document keys.
    return tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p in
                                                                {"FastTrackSpec", "datetime"})))


def _schema_problem(doc: YamlDocument, loc: tuple, err: dict) -> Problem:
    path = _document_path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(path[-1])
        return doc.problem(path, f"unknown key {key!r}{did_you_mean(key, _known_keys())}")
    if kind == "missing":
        return doc.problem(path, f"required key {path[-1]!r} is missing")
    message = err["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        message = "expected an id as the rule file writes it: lower-case letters, digits and _"
    value = err.get("input")
    if kind not in {"model_type", "dict_type", "list_type", "value_error"} and not isinstance(value, (dict, list)):
        message += f" (got {value!r})"
    return doc.problem(path, message)


# --- cross-references with the programme ---------------------------------------------------------------

@dataclass(frozen=True)
class _Parts:
    """The parts of a case that validate (all of them for a valid case): what the cross-checks read."""

    name: str | None = None
    given: Given | None = None  # None: `given` has a structure problem
    events: tuple[tuple[int, CaseEvent], ...] = ()  # (position, event)
    unnumbered: frozenset[int] = frozenset()  # positions of the events without an id (numbered event-1, ...)
    no_events: bool = False  # the case has no events, for certain
    review: tuple[tuple[int, datetime], ...] = ()  # (position, moment)
    tiers: tuple[tuple[str, str], ...] = ()  # (expect key, tier) of tier and qualifies_for
    earned: tuple[str, ...] = ()  # rule ids of expect.earned
    grants: tuple[tuple[str, int, GrantSpec], ...] = ()  # (grants or no_grants, position, spec)
    discounted: tuple[str, ...] = ()  # products of expect.benefits.rate_discount_bps


_TEXT, _GIVEN, _EVENT = TypeAdapter(Text), TypeAdapter(Given), TypeAdapter(CaseEvent)
_MOMENT, _NAME, _GRANT = TypeAdapter(Moment), TypeAdapter(Name), TypeAdapter(GrantSpec)


def _parts(item: object, errors: list[tuple]) -> _Parts:
    """The parts of a raw case that validate on their own; `errors` are the key paths of its structure errors."""
    if not isinstance(item, dict):
        return _Parts()

    def clean(*path: object) -> bool:
        # A part with a structure error at or under its path is left out: its problem is reported already.
        return not any(loc[: len(path)] == path for loc in errors)

    def valid(adapter: TypeAdapter, value: object, *path: object) -> Any:
        if not clean(*path):
            return None
        try:
            return adapter.validate_python(value)
        except ValidationError:  # pragma: no cover - the whole case validated this part already
            return None

    def mapping(value: object) -> dict:
        return value if isinstance(value, dict) else {}

    def items(value: object) -> list:
        return value if isinstance(value, list) else []

    given = valid(_GIVEN, item.get("given", {}), "given")
    raw_events = item.get("events", [])
    raw_review = item.get("review", [])
    expect = mapping(item.get("expect"))
    earned, benefits = mapping(expect.get("earned")), mapping(expect.get("benefits"))
    discounts = mapping(benefits.get("rate_discount_bps"))
    return _Parts(
        name=valid(_TEXT, item["name"], "name") if "name" in item else None,
        given=given,
        events=tuple((position, event) for position, raw in enumerate(items(raw_events))
                     if (event := valid(_EVENT, raw, "events", position)) is not None),
        unnumbered=frozenset(position for position, raw in enumerate(items(raw_events))
                             if isinstance(raw, dict) and raw.get("id") is None),
        # An unknown key of the case may be its misspelt events: then it is not known to have none.
        no_events=raw_events == [] and not any(len(loc) == 1 and loc[0] not in Case.model_fields for loc in errors),
        review=tuple((position, moment) for position, raw in enumerate(raw_review if isinstance(raw_review, list)
                                                                       else [raw_review])
                     if (moment := valid(_MOMENT, raw, "review", position)) is not None),
        tiers=tuple((key, tier) for key in ("tier", "qualifies_for") if key in expect
                    and (tier := valid(_NAME, expect[key], "expect", key)) is not None),
        earned=tuple(rule_id for rule_id in earned if isinstance(rule_id, str) and clean("expect", "earned", rule_id)),
        grants=tuple((key, position, spec) for key in ("grants", "no_grants")
                     for position, raw in enumerate(items(expect.get(key)))
                     if (spec := valid(_GRANT, raw, "expect", key, position)) is not None),
        discounted=tuple(product for product in discounts if isinstance(product, str)
                         and clean("expect", "benefits", "rate_discount_bps", product)))


def _case_problems(doc: YamlDocument, base: tuple, parts: _Parts, programmes: ProgrammeSet) -> Iterable[Problem]:
    tiers = _union(programme.tier_ids for programme in programmes.versions)
    given = parts.given
    if given is not None:
        yield from _given_problems(doc, base + ("given",), given, programmes, tiers)
    generated = {_event_id(position) for position in parts.unnumbered}
    generated |= {ONBOARDING_ID} if given is not None and given.onboarded is not None else set()
    for position, event in parts.events:
        path = base + ("events", position)
        if event.id in generated:
            yield doc.problem(path + ("id",), f"id {event.id!r} is also the id of another event of this case "
                                              "(events without an id are numbered event-1, event-2, ...; the given "
                                              f"onboarding is {ONBOARDING_ID!r})")
        yield from _event_problems(doc, path, _envelope(event, position, given.client if given else DEFAULT_CLIENT),
                                   programmes)
    for position, moment in parts.review:
        if programmes.at(moment) is None:
            yield doc.problem(base + ("review", position), f"a review at {moment.isoformat()} is before the programme "
                                                           f"begins ({programmes.versions[0].effective_from.isoformat()})")
    if parts.no_events and given is not None and given.onboarded is None:
        yield doc.problem(base, "a case needs events or a given onboarding: otherwise there is no client to check")
    yield from _expect_problems(doc, base + ("expect",), parts, programmes, tiers)


def _expect_problems(doc: YamlDocument, path: tuple, parts: _Parts, programmes: ProgrammeSet,
                     tiers: list[str]) -> Iterable[Problem]:
    products = _union(programme.model.loan_products for programme in programmes.versions)
    rule_ids = _union([rule.rule.id for rule in programme.rules] for programme in programmes.versions)
    for key, tier in parts.tiers:
        if tier not in tiers:
            yield doc.problem(path + (key,), _unknown("tier", tier, tiers))
    for rule_id in parts.earned:
        if rule_id not in rule_ids:
            yield doc.problem(path + ("earned", rule_id), _unknown("rule", rule_id, rule_ids))
    grant_rules = rule_ids + [TIER_RULE_PREFIX + tier for tier in tiers]
    for key, position, spec in parts.grants:
        if spec.rule not in grant_rules:
            yield doc.problem(path + (key, position, "rule"), _unknown("rule", spec.rule, grant_rules))
        for index, product in enumerate(spec.products or []):
            if product not in products:
                yield doc.problem(path + (key, position, "products", index),
                                  _unknown("loan product", product, products))
        if key == "no_grants" and spec.count is not None:
            yield doc.problem(path + (key, position, "count"), "count belongs under grants (count: 0 there is "
                                                               "the same as listing it under no_grants)")
    for product in parts.discounted:
        if product not in products:
            yield doc.problem(path + ("benefits", "rate_discount_bps", product),
                              _unknown("loan product", product, products))


def _given_problems(doc: YamlDocument, path: tuple, given: Given, programmes: ProgrammeSet,
                    tiers: list[str]) -> Iterable[Problem]:
    if given.tier is not None and given.tier not in tiers:
        yield doc.problem(path + ("tier",), _unknown("tier", given.tier, tiers))
    onboarding = onboarding_event(given, programmes)
    if onboarding is None:
        for key in ("segment", "name", "industry", "tier"):
            if getattr(given, key) is not None:
                yield doc.problem(path + (key,), f"given {key} needs given onboarded: the client is onboarded "
                                                 "(a client.onboarded event) and then set up")
        return
    programme = programmes.for_moment(given.onboarded)  # type: ignore[arg-type]  # onboarded, since onboarding is set
    if ONBOARDING_EVENT not in programme.model.event_types:
        yield doc.problem(path + ("onboarded",), f"programme {programme.id} {programme.version} has no "
                                                 f"{ONBOARDING_EVENT} event type, so a case cannot onboard a client")
        return
    try:
        typed_event(parse_envelope(onboarding), programme.model.event_types, programme.currency)
    except EventError as exc:
        field = (exc.field or "").removeprefix("data.")
        message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        if field in Given.model_fields:
            yield doc.problem(path + (field,), message)
        else:  # an attribute the case format has no key for
            yield doc.problem(path, f"the {ONBOARDING_EVENT} event: {exc}")


def _event_problems(doc: YamlDocument, path: tuple, raw: dict, programmes: ProgrammeSet) -> Iterable[Problem]:
    floats = [key for key, value in raw["data"].items() if isinstance(value, float)]
    for key in floats:
        yield doc.problem(path + ("data", key), f"{raw['data'][key]!r} is a decimal number: quote it "
                                                f"(\"{raw['data'][key]}\") so it is read exactly, never as a float")
    if floats:
        return
    try:
        envelope = parse_envelope(raw)
        programme = programmes.for_moment(envelope.occurred_at)
        typed_event(envelope, programme.model.event_types, programme.currency)
    except EventError as exc:
        where = tuple((exc.field or "").split(".")) if exc.field else ()
        where = ("at",) if where == ("occurred_at",) else where
        message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        yield doc.problem(path + where, message)


def _union(groups: Iterable[Iterable[str]]) -> list[str]:
    return list(dict.fromkeys(item for group in groups for item in group))


def _unknown(what: str, name: str, known: list[str]) -> str:
    return f"unknown {what} {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"


# --- what ingest receives ---------------------------------------------------------------------------------

def _event_id(position: int) -> str:
    return f"event-{position + 1}"


def _envelope(event: CaseEvent, position: int, client_id: str) -> dict:
    return {"id": event.id or _event_id(position), "client_id": event.client or client_id, "type": event.type,
            "occurred_at": event.at.isoformat(), "data": dict(event.data)}


def _envelopes(doc: YamlDocument, base: tuple, case: Case) -> Iterable[tuple[int, dict]]:
    for position, event in enumerate(case.events):
        yield doc.line_of(base + ("events", position)) or 0, _envelope(event, position, case.given.client)


def onboarding_event(given: Given, programmes: ProgrammeSet) -> dict | None:
    """The client.onboarded envelope of `given` (None without an onboarding); the name defaults to the client id."""
    if given.onboarded is None:
        return None
    spec = programmes.for_moment(given.onboarded).model.event_types.get(ONBOARDING_EVENT)
    declared = spec.attributes if spec else {}
    data = {"name": given.name or (given.client if "name" in declared else None), "segment": given.segment,
            "industry": given.industry}
    return {"id": ONBOARDING_ID, "client_id": given.client, "type": ONBOARDING_EVENT,
            "occurred_at": given.onboarded.isoformat(), "data": {k: v for k, v in data.items() if v is not None}}
