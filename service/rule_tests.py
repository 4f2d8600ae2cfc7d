"""Run rule test cases (engine/rule_cases.py) through the real engine, each in its own scratch database.

A case's client is set up the way an operator's would be: a `client.onboarded` event (segment,
tenure) and, for a given tier, a pin (service/pins.py) that ends a second later, so from then on the
programme moves the client as it would any other. Its events go through service.ingest.Ingestor one
at a time, in the order written, as a source system would send them through the API (each event
may upgrade the client at once); each review runs through service.review.run_review after the
events up to its moment. The outcome is read through the services the CLI uses (benefits, profile,
the ledger) and compared with the case's expectations.

Each case gets a fresh in-memory SQLite database (never the user's), and a clock that stands at the
moment of each step, so nothing depends on today's date.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from engine.programme import CompiledProgramme, ProgrammeSet
from engine.rule_cases import Expect, GrantSpec, RuleCase, load_cases
from rewards.kinds import Reason
from service.benefits import client_benefits
from service.errors import ConflictError, InputError, NotFoundError
from service.ingest import REJECTED, Ingestor
from service.pins import pin_tier
from service.profile import client_profile
from service.review import run_review
from storage import ledger
from storage.db import init_schema, make_engine, read_snapshot

SCRATCH_DATABASE = "sqlite://"  # in memory, one per case, gone when the case ends
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)  # no event may be earlier (engine.events)
PIN_AUTHOR = "rule test"
# A given tier is a pin this short: long enough to put the client in the tier, over before the
# case's events, so instant upgrades and reviews treat the client like any other.
PIN_LENGTH = timedelta(seconds=1)


@dataclass(frozen=True)
class Difference:
    """One expectation that did not hold: the field, what the case expected, what the engine gave."""

    field: str
    expected: object
    actual: object

    def as_dict(self) -> dict:
        """JSON form."""
        return {"field": self.field, "expected": self.expected, "actual": self.actual}


@dataclass(frozen=True)
class CaseResult:
    """One case's verdict: passed, or the differences (or the error that stopped it)."""

    name: str
    file: str
    line: int
    differences: tuple[Difference, ...] = ()
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Every expectation held and nothing stopped the case."""
        return not self.differences and self.error is None

    def as_dict(self) -> dict:
        """JSON form."""
        return {"name": self.name, "file": self.file, "line": self.line,
                "status": "passed" if self.passed else "failed", "seconds": round(self.seconds, 4),
                "differences": [d.as_dict() for d in self.differences], "error": self.error}


@dataclass(frozen=True)
class UncoveredRule:
    """A rule of the programme that gave nothing in any case."""

    programme_id: str
    version: str
    rule_id: str
    source: str

    def as_dict(self) -> dict:
        """JSON form."""
        return {"programme": self.programme_id, "version": self.version, "rule_id": self.rule_id,
                "file": self.source}


@dataclass(frozen=True)
class RuleTestReport:
    """Every case's verdict, and the rules no case exercised."""

    cases: tuple[CaseResult, ...]
    uncovered: tuple[UncoveredRule, ...]
    seconds: float

    @property
    def passed(self) -> int:
        """Cases that passed."""
        return sum(result.passed for result in self.cases)

    @property
    def failed(self) -> int:
        """Cases that failed."""
        return len(self.cases) - self.passed

    @property
    def ok(self) -> bool:
        """True when every case passed."""
        return self.failed == 0

    def as_dict(self) -> dict:
        """The `--json` form."""
        return {"ok": self.ok, "passed": self.passed, "failed": self.failed, "seconds": round(self.seconds, 3),
                "cases": [result.as_dict() for result in self.cases],
                "uncovered_rules": [rule.as_dict() for rule in self.uncovered]}


@dataclass(frozen=True)
class Outcome:
    """What a case's client ended with, in the words of the case format."""

    tier: str
    qualifies_for: str
    points: int
    earned: dict[str, int]
    held: list[dict]  # entitlements held at the moment, as grant specs (see grant_view)
    benefits: dict  # rate_discount_bps by product, fast_track, relationship_manager, fee_waiver_pct


def only_version(programme: CompiledProgramme) -> ProgrammeSet:
    """A programme set of `programme` alone, in force from the earliest possible moment: every case event is
    evaluated under it, whatever its effective_from (to test a version before it starts)."""
    header = programme.model.programme.model_copy(update={"effective_from": EARLIEST})
    return ProgrammeSet((replace(programme, model=programme.model.model_copy(update={"programme": header})),))


def run_rule_tests(programmes: ProgrammeSet, case_files: list[Path]) -> RuleTestReport:
    """Load the case files against `programmes` (RuleFileError listing every problem if any does not load),
    run every case in a scratch database, and report the verdicts and the rules no case exercised."""
    started = time.perf_counter()
    cases = load_cases(case_files, programmes)
    results, fired = [], set()
    for case in cases:
        result, rules = run_case(programmes, case)
        results.append(result)
        fired |= rules
    uncovered = tuple(UncoveredRule(version.id, version.version, compiled.rule.id, version.source)
                      for version in programmes.versions for compiled in version.rules
                      if (version.version, compiled.rule.id) not in fired)
    return RuleTestReport(tuple(results), uncovered, time.perf_counter() - started)


def run_case(programmes: ProgrammeSet, case: RuleCase) -> tuple[CaseResult, set[tuple[str, str]]]:
    """Run one case in a fresh scratch database: its verdict, and the (version, rule id) pairs that gave something."""
    started = time.perf_counter()
    engine = make_engine(SCRATCH_DATABASE)
    fired: set[tuple[str, str]] = set()
    differences: list[Difference] = []
    try:
        init_schema(engine)
        error = _play(engine, programmes, case)
        fired = _fired_rules(engine, case)
        if error is None:
            differences = compare(case.case.expect, read_outcome(engine, programmes, case.client_id, case.at))
    except (InputError, ConflictError, NotFoundError) as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one case crashing must not hide the verdicts of the others
        error = f"the engine failed on this case ({type(exc).__name__}): {exc}"
    finally:
        engine.dispose()
    return CaseResult(case.name, case.file, case.line, tuple(differences), error,
                      time.perf_counter() - started), fired


class _Clock:
    """The case's clock: it stands where the runner puts it, at the moment of each step."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _play(engine: Engine, programmes: ProgrammeSet, case: RuleCase) -> str | None:
    """Onboard, pin, send the events and run the reviews; the first event refused, as an error."""
    given = case.case.given
    clock = _Clock(given.onboarded or EARLIEST)
    ingestor = Ingestor(engine, programmes, clock, batch_size=1)  # one event, one batch: as through the API
    if case.onboarding is not None:
        error = _send(ingestor, clock, [(case.line, case.onboarding)])
        if error:
            return error
    if given.tier is not None:
        pin_tier(engine, programmes, given.client, given.tier, clock.now + PIN_LENGTH,
                 f"rule test case {case.name!r}: given tier {given.tier}", PIN_AUTHOR, clock)
    pending = list(case.events)
    for review in sorted(case.case.review):
        due = [item for item in pending if _moment(item) <= review]
        pending = [item for item in pending if _moment(item) > review]
        error = _send(ingestor, clock, due)
        if error:
            return error
        clock.now = review
        run_review(engine, programmes, review, clock=clock)
    return _send(ingestor, clock, pending)


def _moment(item: tuple[int, dict]) -> datetime:
    return datetime.fromisoformat(item[1]["occurred_at"])


def _send(ingestor: Ingestor, clock: _Clock, items: list[tuple[int, dict]]) -> str | None:
    """Ingest `items` (line, envelope) with the clock at the latest of them; the first refusal, as an error."""
    if not items:
        return None
    clock.now = max(_moment(item) for item in items)
    for outcome in ingestor.ingest_raw(items):
        if outcome.status == REJECTED:
            return f"the event at line {outcome.line} ({outcome.event_id}) was rejected: {outcome.error}"
    return None


def _fired_rules(engine: Engine, case: RuleCase) -> set[tuple[str, str]]:
    """(version, rule id) of every earning and grant an event produced, for any client of the case."""
    clients = {case.client_id} | {envelope["client_id"] for _, envelope in case.events}
    with read_snapshot(engine) as conn:
        entries = [entry for client_id in sorted(clients) for entry in ledger.client_entries(conn, client_id)]
    return {(entry["programme_version"], entry["rule_id"]) for entry in entries
            if entry["event_id"] is not None and entry["reason"] in (Reason.EARN, Reason.GRANT)}


def read_outcome(engine: Engine, programmes: ProgrammeSet, client_id: str, at: datetime) -> Outcome:
    """A client's outcome at `at`, read as the CLI reads it: benefits, profile and ledger entries."""
    answer = client_benefits(engine, programmes, client_id, at)
    profile = client_profile(engine, programmes, client_id, at)
    with read_snapshot(engine) as conn:
        entries = ledger.client_entries(conn, client_id)
    balance, earned = points_at(entries, at)
    fast_track = ({"lane": answer.fast_track_lane, "sla_hours": answer.fast_track_sla_hours}
                  if answer.fast_track_lane else None)
    return Outcome(profile.tier, profile.qualifies_for, balance, earned,
                   [grant_view(entitlement.model_dump(mode="json")) for entitlement in answer.entitlements],
                   {"rate_discount_bps": answer.rate_discount_bps_by_product, "fast_track": fast_track,
                    "relationship_manager": answer.relationship_manager, "fee_waiver_pct": answer.fee_waiver_pct})


def points_at(entries: Iterable[dict], at: datetime) -> tuple[int, dict[str, int]]:
    """The points balance and the points earned per rule at `at`, from a client's ledger entries (entry_view)."""
    balance, earned = 0, defaultdict(int)
    for entry in entries:
        # Counted as service.explain counts points at a moment (the benefits answer's balance is today's): a
        # reversal from when it was written, since its entries keep the moment of what they cancel; any other
        # entry from its valid_from.
        moment = entry["created_at"] if entry["reason"] == Reason.REVERSE else entry["valid_from"]
        if datetime.fromisoformat(moment) > at:
            continue
        balance += entry["points"]
        if entry["reason"] == Reason.EARN:
            earned[entry["rule_id"]] += entry["points"]
    return balance, dict(earned)


def grant_view(entitlement: dict) -> dict:
    """An entitlement of the benefits answer in the words of a case's grant spec (empty fields left out)."""
    detail = entitlement["detail"] or {}
    view = {"rule": entitlement["rule_id"], "kind": entitlement["kind"], "bps": entitlement["bps"],
            "products": entitlement["products"] or None, "use": entitlement["use"], "lane": detail.get("lane"),
            "sla_hours": detail.get("sla_hours"), "fee_waiver_pct": detail.get("fee_waiver_pct"),
            "valid_to": entitlement["valid_to"]}
    return {key: value for key, value in view.items() if value is not None}


# --- comparing (pure) ----------------------------------------------------------------------------------------

def compare(expect: Expect, outcome: Outcome) -> list[Difference]:
    """Every expectation of `expect` that `outcome` does not meet (empty: the case passes)."""
    differences = [Difference(key, getattr(expect, key), getattr(outcome, key))
                   for key in ("tier", "qualifies_for", "points")
                   if getattr(expect, key) is not None and getattr(expect, key) != getattr(outcome, key)]
    differences += [Difference(f"earned.{rule_id}", points, outcome.earned.get(rule_id, 0))
                    for rule_id, points in expect.earned.items() if outcome.earned.get(rule_id, 0) != points]
    differences += _grant_differences(expect.grants, expect.no_grants, outcome.held)
    differences += _benefit_differences(expect, outcome.benefits)
    return differences


def _grant_differences(grants: Iterable[GrantSpec], no_grants: Iterable[GrantSpec], held: list[dict]) -> list[Difference]:
    differences = []
    for position, spec in enumerate(grants):
        matching = [view for view in held if _matches(spec, view)]
        if (len(matching) != spec.count) if spec.count is not None else not matching:
            expected = _spec_view(spec)
            if spec.count is not None:
                expected = {**expected, "count": spec.count}
            differences.append(Difference(f"grants[{position}]", expected, _held_from(spec.rule, held)))
    for position, spec in enumerate(no_grants):
        matching = [view for view in held if _matches(spec, view)]
        if matching:
            differences.append(Difference(f"no_grants[{position}]", f"none like {flow(_spec_view(spec))}", matching))
    return differences


def _spec_view(spec: GrantSpec) -> dict:
    """A grant spec as the case wrote it (moments as ISO text)."""
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in spec.criteria().items()}


def _held_from(rule_id: str, held: list[dict]) -> list[dict] | str:
    same_rule = [view for view in held if view["rule"] == rule_id]
    return same_rule or f"nothing held from {rule_id}"


def _matches(spec: GrantSpec, view: dict) -> bool:
    for key, expected in spec.criteria().items():
        actual = view.get(key)
        if key == "products":
            if sorted(actual or []) != sorted(expected):
                return False
        elif key == "valid_to":
            if actual is None or datetime.fromisoformat(actual) != expected:
                return False
        elif key == "bps":
            if (actual or 0) != expected:  # the benefits answer shows 0 bps as null
                return False
        elif actual != expected:
            return False
    return True


def _benefit_differences(expect: Expect, actual: dict) -> list[Difference]:
    spec = expect.benefits
    if spec is None:
        return []
    differences = [Difference(f"benefits.rate_discount_bps.{product}", bps, actual["rate_discount_bps"].get(product))
                   for product, bps in spec.rate_discount_bps.items() if actual["rate_discount_bps"].get(product) != bps]
    if "fast_track" in spec.model_fields_set:
        wanted = spec.fast_track.model_dump(exclude_none=True) if spec.fast_track else None
        got = actual["fast_track"]
        shown = {key: got[key] for key in wanted} if wanted and got else got
        if wanted != shown:
            differences.append(Difference("benefits.fast_track", wanted, got))
    for key in ("relationship_manager", "fee_waiver_pct"):
        if getattr(spec, key) is not None and getattr(spec, key) != actual[key]:
            differences.append(Difference(f"benefits.{key}", getattr(spec, key), actual[key]))
    return differences


def flow(value: object) -> str:
    """A value in YAML flow style, the way a case file writes it (how differences are shown to people)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {flow(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
