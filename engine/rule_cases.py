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
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine.context import ONBOARDING_EVENT
from engine.errors import EventError, Problem, RuleFileError, did_you_mean
from engine.events import EARLIEST_YEAR, LATEST_YEAR, parse_envelope, typed_event
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


Moment = Annotated[datetime, BeforeValidator(_moment)]
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
    kind: GrantKind | None = None
    bps: Count | None = None
    products: list[Name] | None = None
    use: Literal["single", "standing"] | None = None
    lane: Name | None = None
    sla_hours: Count | None = None
    fee_waiver_pct: Count | None = None
    valid_to: Moment | None = None
    count: Count | None = Field(default=None, description="exactly this many held entitlements match (default: at "
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

    rate_discount_bps: dict[Name, Count] = {}
    fast_track: FastTrackSpec | None = Field(default=None, description="null: no fast track at all")
    relationship_manager: bool | None = None
    fee_waiver_pct: Count | None = None


class Expect(Strict):
    """The outcome at `at` (default: the case's last moment); only what is given is checked."""

    at: Moment | None = None
    tier: Name | None = None
    qualifies_for: Name | None = Field(default=None, description="the tier the metrics earn at that moment")
    points: Count | None = Field(default=None, description="the points balance")
    earned: dict[str, Count] = Field(default={}, description="points earned per rule id")
    grants: list[GrantSpec] = []
    no_grants: list[GrantSpec] = []
    benefits: BenefitsSpec | None = None

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
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise RuleFileError([Problem(file, None, "", f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise RuleFileError([Problem(file, line, "", "not UTF-8 text; save the file as UTF-8")]) from None
    if not text.strip():
        raise RuleFileError([Problem(file, 1, "", "the file is empty; expected `cases:` with a list of cases")])
    doc = load_yaml(file, text)
    if not isinstance(doc.data, dict):
        raise RuleFileError([doc.problem((), "expected a mapping with a `cases:` list")])
    try:
        CaseFileModel.model_validate(doc.data)
    except ValidationError as exc:
        raise RuleFileError([_schema_problem(doc, err["loc"], err) for err in exc.errors()]) from None
    problems: list[Problem] = []
    cases = []
    names: dict[str, int] = {}
    for index, item in enumerate(doc.data["cases"]):
        base = ("cases", index)
        try:  # each case on its own: a broken case does not hide the problems of the others
            case = Case.model_validate(item)
        except ValidationError as exc:
            problems.extend(_schema_problem(doc, base + tuple(err["loc"]), err) for err in exc.errors())
            continue
        line = doc.line_of(base) or 0
        if case.name in names:
            problems.append(doc.problem(base + ("name",), f"case name {case.name!r} is also used by the case at line "
                                                          f"{names[case.name]}; give each case its own name"))
        names.setdefault(case.name, line)
        found = list(_case_problems(doc, base, case, programmes))
        problems.extend(found)
        if not found:
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


def _schema_problem(doc: YamlDocument, loc: tuple, err: dict) -> Problem:
    # pydantic names the member of a union or the validator function it tried; they are not document keys.
    path = tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("function-") or p in
                                                                {"FastTrackSpec", "datetime"})))
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

def _case_problems(doc: YamlDocument, base: tuple, case: Case, programmes: ProgrammeSet) -> Iterable[Problem]:
    tiers = _union(programme.tier_ids for programme in programmes.versions)
    given = case.given
    yield from _given_problems(doc, base + ("given",), given, programmes, tiers)
    generated = {_event_id(position) for position, event in enumerate(case.events) if event.id is None}
    generated |= {ONBOARDING_ID} if given.onboarded is not None else set()
    for position, event in enumerate(case.events):
        path = base + ("events", position)
        if event.id in generated:
            yield doc.problem(path + ("id",), f"id {event.id!r} is also the id of another event of this case "
                                              "(events without an id are numbered event-1, event-2, ...; the given "
                                              f"onboarding is {ONBOARDING_ID!r})")
        yield from _event_problems(doc, path, _envelope(event, position, given.client), programmes)
    for position, moment in enumerate(case.review):
        if programmes.at(moment) is None:
            yield doc.problem(base + ("review", position), f"a review at {moment.isoformat()} is before the programme "
                                                           f"begins ({programmes.versions[0].effective_from.isoformat()})")
    if not case.events and given.onboarded is None:
        yield doc.problem(base, "a case needs events or a given onboarding: otherwise there is no client to check")
    yield from _expect_problems(doc, base + ("expect",), case.expect, programmes, tiers)


def _expect_problems(doc: YamlDocument, path: tuple, expect: Expect, programmes: ProgrammeSet,
                     tiers: list[str]) -> Iterable[Problem]:
    products = _union(programme.model.loan_products for programme in programmes.versions)
    rule_ids = _union([rule.rule.id for rule in programme.rules] for programme in programmes.versions)
    for key in ("tier", "qualifies_for"):
        value = getattr(expect, key)
        if value is not None and value not in tiers:
            yield doc.problem(path + (key,), _unknown("tier", value, tiers))
    for rule_id in expect.earned:
        if rule_id not in rule_ids:
            yield doc.problem(path + ("earned", rule_id), _unknown("rule", rule_id, rule_ids))
    grant_rules = rule_ids + [TIER_RULE_PREFIX + tier for tier in tiers]
    for key in ("grants", "no_grants"):
        for position, spec in enumerate(getattr(expect, key)):
            if spec.rule not in grant_rules:
                yield doc.problem(path + (key, position, "rule"), _unknown("rule", spec.rule, grant_rules))
            for index, product in enumerate(spec.products or []):
                if product not in products:
                    yield doc.problem(path + (key, position, "products", index),
                                      _unknown("loan product", product, products))
            if key == "no_grants" and spec.count is not None:
                yield doc.problem(path + (key, position, "count"), "count belongs under grants (count: 0 there is "
                                                                   "the same as listing it under no_grants)")
    for product in expect.benefits.rate_discount_bps if expect.benefits else {}:
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
