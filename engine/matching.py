"""The only module that touches durable-rules: compiles rule conditions to its JSON form and matches facts.

durable-rules has sharp edges (see shared/DURABLE_RULES_NOTES.md); this module is where they are
handled so nothing else has to know:
- every call into a Host is serialised by a lock (concurrent calls silently lose firings);
- facts are asserted then retracted, so every matching rule fires and the live fact set stays empty
  (which also keeps the engine's 32-bit message-identity hash from colliding);
- one `sid` only, so per-sid state does not grow;
- exceptions raised inside actions are stored by the engine, not raised: we check and raise them;
- hard limits (512+ distinct equality values on one attribute hang the engine) are refused when the
  rules are compiled, with a message naming the attribute;
- the Host subclass starts no timer threads (we never use its asynchronous dispatch).
"""
from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import durable.engine as _durable

from engine.errors import EvaluationError

# Observed: 512 distinct equality values on one attribute hang the engine at post time.
MAX_EQUALITY_VALUES_PER_ATTRIBUTE = 511
# Observed: an event satisfying more than 64 range tests fails with error 303 although the rules
# loaded; we refuse more than 64 range tests per event type, so no event can reach that.
MAX_RANGE_TESTS_PER_EVENT_TYPE = 64

RANGE_OPERATORS = {"lt": "$lt", "lte": "$lte", "gt": "$gt", "gte": "$gte"}


@dataclass(frozen=True)
class AttributeTest:
    """One operator applied to one fact attribute; `value` is already in matching form."""

    path: str  # dotted path in the fact, e.g. "e.amount" or "c.tier"
    operator: str  # eq, ne, lt, lte, gt, gte, in, not_in, exists
    value: object


@dataclass(frozen=True)
class MatchRule:
    """A rule as the matcher sees it: an event type and the tests that must all hold."""

    key: int  # position of the rule in its programme; returned on a match
    event_type: str
    tests: tuple[AttributeTest, ...]


class MatcherLimitError(ValueError):
    """The rules would cross one of the matching core's hard limits."""


class _QuietHost(_durable.Host):
    """A Host that starts no background timer threads: we only use synchronous assert/retract."""

    def _run(self) -> None:  # noqa: D401 - overrides the timer start-up
        return None


def _condition(test: AttributeTest) -> dict:
    path, op, value = test.path, test.operator, test.value
    if op == "eq":
        return {path: value}
    # An absent attribute is "not equal" to anything: durable's $neq alone would need it present.
    if op == "ne":
        return {"$or": [{"$nex": {path: 1}}, {"$neq": {path: value}}]}
    if op in RANGE_OPERATORS:
        return {RANGE_OPERATORS[op]: {path: value}}
    if op == "in":
        values = list(value)  # type: ignore[arg-type]
        return {path: values[0]} if len(values) == 1 else {"$or": [{path: v} for v in values]}
    if op == "not_in":
        return {"$or": [{"$nex": {path: 1}}, {"$and": [{"$neq": {path: v}} for v in value]}]}  # type: ignore[union-attr]
    if op == "exists":
        return {"$ex" if value else "$nex": {path: 1}}
    raise ValueError(f"unknown operator {op!r}")


def check_limits(rules: Sequence[MatchRule]) -> None:
    """Refuse rule sets that would hang or break the matching core."""
    values: dict[str, set] = defaultdict(set)
    ranges: dict[str, int] = defaultdict(int)
    for rule in rules:
        values["type"].add(rule.event_type)
        ranges[rule.event_type] += sum(test.operator in RANGE_OPERATORS for test in rule.tests)
        for test in rule.tests:
            if test.operator in ("eq", "ne"):
                values[test.path].add(repr(test.value))
            elif test.operator in ("in", "not_in"):
                values[test.path].update(repr(v) for v in test.value)  # type: ignore[union-attr]
    for path, seen in values.items():
        if len(seen) > MAX_EQUALITY_VALUES_PER_ATTRIBUTE:
            name = "event type" if path == "type" else f"attribute {path.split('.', 1)[-1]!r}"
            raise MatcherLimitError(
                f"the rules compare {name} with {len(seen)} distinct values; the matching core "
                f"supports at most {MAX_EQUALITY_VALUES_PER_ATTRIBUTE}. Group values into fewer rules "
                "or move the distinction into an attribute with fewer values.")
    for event_type, count in ranges.items():
        if count > MAX_RANGE_TESTS_PER_EVENT_TYPE:
            raise MatcherLimitError(
                f"the rules test {event_type} events with {count} range conditions (lt, lte, gt, gte); the "
                f"matching core supports at most {MAX_RANGE_TESTS_PER_EVENT_TYPE} per event type. Merge "
                "thresholds into fewer rules, e.g. one rule whose points expression scales with the amount.")


class Matcher:
    """Matches facts against compiled rules; safe to call from several threads."""

    _names = itertools.count()

    def __init__(self, rules: Sequence[MatchRule]):
        check_limits(rules)
        self._lock = threading.Lock()
        self._fired: list[int] = []
        self._ids = itertools.count(1)
        self._ruleset = f"programme_{next(self._names)}"
        self._host = _QuietHost()
        definition = {
            f"r{rule.key}": {
                "all": [{"m": {"$and": [{"type": rule.event_type}, *map(_condition, rule.tests)]}}],
                "run": self._recorder(rule.key),
            }
            for rule in rules
        }
        self._empty = not definition
        if definition:
            self._host.set_rulesets({self._ruleset: definition})

    def _recorder(self, key: int) -> Callable[[object], None]:
        fired = self._fired

        def record(_context: object) -> None:
            fired.append(key)

        return record

    def match(self, event_type: str, event: dict, client: dict) -> list[int]:
        """Keys of every rule whose conditions hold for this event and client, in firing order."""
        if self._empty:
            return []
        with self._lock:
            fact = {"id": next(self._ids), "type": event_type, "e": event, "c": client}
            self._fired.clear()
            try:
                state = self._host.assert_fact(self._ruleset, fact)
            except _durable.MessageNotHandledException:
                return []
            except Exception as exc:  # the C core raises bare Exceptions with an error code
                raise EvaluationError(f"the matching core refused this event: {exc}") from None
            finally:
                self._retract(fact)
            if isinstance(state, dict) and "exception" in state:
                self._host.delete_state(self._ruleset, "0")
                raise EvaluationError(f"the matching core failed while firing rules: {state['exception']}")
            return list(self._fired)

    def _retract(self, fact: dict) -> None:
        try:
            self._host.retract_fact(self._ruleset, fact)
        except Exception:  # noqa: BLE001 - a fact that was never asserted has nothing to retract
            pass
