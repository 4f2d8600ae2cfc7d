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
- the Host subclass starts no timer threads (we never use its asynchronous dispatch);
- a ruleset is never unregistered by durable-rules itself, and its per-sid state is never freed: a
  Matcher deletes both through the C module when it is evicted or garbage-collected. At most
  `LOADED_RULESETS_LIMIT` rulesets are loaded at once (least recently used are evicted and rebuilt on
  their next match), so a service that activates many programme versions keeps its memory bounded.
"""
from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import durable.engine as _durable
import durable_rules_engine as _core

from engine.errors import EvaluationError

# Observed: 512 distinct equality values on one attribute hang the engine at post time.
MAX_EQUALITY_VALUES_PER_ATTRIBUTE = 511
# Observed: an event satisfying more than 64 range tests fails with error 303 although the rules
# loaded; we refuse more than 64 range tests per event type, so no event can reach that.
MAX_RANGE_TESTS_PER_EVENT_TYPE = 64

# Measured in child processes (rules/README.md, "Limits"): 256 unconditional rules on one event type
# crash the process when an event matches them all (a segfault), 257 fail to load (error 108); 511
# rules told apart by eq on one attribute worked. So the bound is on the rules one event can match.
MAX_RULES_PER_EVENT_TYPE = 255
# 65 rules on one event type with a condition of alternatives (`in` of several values, `ne`, `not_in`,
# `min_tier` below the top tier: each an $or in the core) fail with error 303 on an event matching them
# all, and corrupt the heap (the process aborted later); 64 worked.
MAX_ALTERNATIVE_RULES_PER_EVENT_TYPE = 64
# 511 rules on one event type matched in a few ms; 512 (511 told apart by eq, one more) hung at the first
# event, whatever the rules one event can match. A margin below what worked.
MAX_RULES_OF_ONE_EVENT_TYPE = 400
# 4,000 rules spread over 40 event types loaded; 4,500 failed with error 106. Half of what loaded.
MAX_RULES = 2_000

# Loaded rulesets kept at once; each costs the C engine about 1 MB per 100 rules.
LOADED_RULESETS_LIMIT = int(os.environ.get("LOYALTY_LOADED_RULESETS", "16"))

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


def _has_alternatives(test: AttributeTest) -> bool:
    """Whether the core sees this test as an $or (see _condition)."""
    return test.operator in ("ne", "not_in") or (test.operator == "in" and len(test.value) > 1)  # type: ignore[arg-type]


def _most_matching(rules: Sequence[MatchRule]) -> int:
    """An upper bound of how many of `rules` (one event type) can match one event.

    A rule with an eq test matches only events with that value, and an event has one value per
    attribute: of the rules whose first eq test is on one attribute, at most those sharing the most
    common value can match together. Rules without an eq test may all match.
    """
    ungated = 0
    gated: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for rule in rules:
        gate = next((test for test in rule.tests if test.operator == "eq"), None)
        if gate is None:
            ungated += 1
        else:
            gated[gate.path][repr(gate.value)] += 1
    return ungated + sum(max(counts.values()) for counts in gated.values())


def check_limits(rules: Sequence[MatchRule]) -> None:
    """Refuse rule sets that would hang, crash or break the matching core, naming the event type and count."""
    if len(rules) > MAX_RULES:
        raise MatcherLimitError(f"the file has {len(rules):,} rules; the matching core supports at most {MAX_RULES:,} "
                                "in one programme version. Merge rules that differ only in a value into one rule "
                                "with `in`, or scale the points with an expression")
    values: dict[str, set] = defaultdict(set)
    ranges: dict[str, int] = defaultdict(int)
    by_type: dict[str, list[MatchRule]] = defaultdict(list)
    for rule in rules:
        values["type"].add(rule.event_type)
        by_type[rule.event_type].append(rule)
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
    for event_type, group in by_type.items():
        if len(group) > MAX_RULES_OF_ONE_EVENT_TYPE:
            raise MatcherLimitError(
                f"{len(group)} rules are on {event_type} events; the matching core supports at most "
                f"{MAX_RULES_OF_ONE_EVENT_TYPE} on one event type (512 hang it). Merge rules that differ only in a "
                "value into one rule with `in`, or scale the points with an expression")
        count = _most_matching(group)
        if count > MAX_RULES_PER_EVENT_TYPE:
            raise MatcherLimitError(
                f"up to {count} rules can match one {event_type} event; the matching core supports at most "
                f"{MAX_RULES_PER_EVENT_TYPE} (more crash it). Merge rules that award alike into one, or tell them "
                "apart with eq on an attribute")
        count = _most_matching([rule for rule in group if any(map(_has_alternatives, rule.tests))])
        if count > MAX_ALTERNATIVE_RULES_PER_EVENT_TYPE:
            raise MatcherLimitError(
                f"up to {count} rules that can match one {event_type} event have a condition with alternatives (in with several "
                f"values, ne, not_in, min_tier below the top tier); the matching core supports at most "
                f"{MAX_ALTERNATIVE_RULES_PER_EVENT_TYPE} per event type. Merge such rules, or test one value with eq")


class Matcher:
    """Matches facts against compiled rules; safe to call from several threads."""

    _names = itertools.count()

    def __init__(self, rules: Sequence[MatchRule]):
        check_limits(rules)
        self._rules = tuple(rules)
        self._lock = threading.Lock()
        self._fired: list[int] = []
        self._ids = itertools.count(1)
        self._loaded: list = []  # [host, ruleset name, C handle, has state] while loaded; shared with the finaliser
        weakref.finalize(self, _release, self._loaded)
        if self._rules:
            with self._lock:
                try:
                    self._load()  # a ruleset the core refuses fails here, when the rules are compiled
                except Exception as exc:  # noqa: BLE001 - the C core raises bare errors with a code
                    raise MatcherLimitError(
                        f"the matching core could not load these rules ({exc}); they are probably past one of its "
                        "limits (rules/README.md, \"Limits\"): use fewer rules or fewer values per event type") from None
            _LIVE.touch(self)

    @property
    def loaded(self) -> bool:
        """Whether the ruleset is in the matching core now (it is rebuilt on demand after eviction)."""
        return bool(self._loaded)

    def _load(self) -> None:
        name = f"programme_{next(self._names)}"
        host = _QuietHost()
        # durable-rules deletes `run` from the definition it is given, so build a fresh one each time.
        host.set_rulesets({name: {
            f"r{rule.key}": {
                "all": [{"m": {"$and": [{"type": rule.event_type}, *map(_condition, rule.tests)]}}],
                "run": self._recorder(rule.key),
            }
            for rule in self._rules
        }})
        self._loaded[:] = [host, name, host.get_ruleset(name)._handle, False]

    def unload(self) -> None:
        """Free the ruleset in the matching core; the next match loads it again."""
        with self._lock:
            _release(self._loaded)

    def _recorder(self, key: int) -> Callable[[object], None]:
        fired = self._fired

        def record(_context: object) -> None:
            fired.append(key)

        return record

    def match(self, event_type: str, event: dict, client: dict) -> list[int]:
        """Keys of every rule whose conditions hold for this event and client, in firing order."""
        if not self._rules:
            return []
        try:
            with self._lock:
                if not self._loaded:
                    self._load()
                host, name = self._loaded[:2]
                fact = {"id": next(self._ids), "type": event_type, "e": event, "c": client}
                self._fired.clear()
                try:
                    state = host.assert_fact(name, fact)
                    self._loaded[3] = True  # a match created the session's state: it must be deleted with the ruleset
                except _durable.MessageNotHandledException:
                    state = None
                except Exception as exc:  # the C core raises bare Exceptions with an error code
                    raise EvaluationError(f"the matching core refused this event: {exc}") from None
                finally:
                    self._retract(host, name, fact)
                if isinstance(state, dict) and "exception" in state:
                    host.delete_state(name, "0")
                    self._loaded[3] = False
                    raise EvaluationError(f"the matching core failed while firing rules: {state['exception']}")
                return list(self._fired)
        finally:
            _LIVE.touch(self)  # after a failure too: a ruleset loaded for this match must count against the limit

    @staticmethod
    def _retract(host: _durable.Host, name: str, fact: dict) -> None:
        try:
            host.retract_fact(name, fact)
        except Exception:  # noqa: BLE001 - a fact that was never asserted has nothing to retract
            pass


def _release(loaded: list) -> None:
    """Delete a ruleset and its state from the C core (deleting the ruleset alone leaks its state)."""
    if not loaded:
        return
    handle, has_state = loaded[2], loaded[3]
    loaded.clear()
    if has_state:  # deleting a state that was never created (no event matched yet) crashes the C core
        _core.delete_state(handle, "0")
    _core.delete_ruleset(handle)


class _LoadedRulesets:
    """The loaded matchers, least recently used first; past the limit the oldest are unloaded."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._order: OrderedDict[int, weakref.ref[Matcher]] = OrderedDict()

    def touch(self, matcher: Matcher) -> None:
        """Mark `matcher` as just used, and unload the least recently used beyond the limit."""
        victims = []
        with self._lock:
            key = id(matcher)
            ref = self._order.get(key)
            if ref is None or ref() is not matcher:
                # No weakref callback: one could run inside this lock during garbage collection.
                self._order[key] = weakref.ref(matcher)
            self._order.move_to_end(key)
            while len(self._order) > max(self.limit, 1):
                victims.append(self._order.popitem(last=False)[1]())
        # Unloaded outside the registry lock: a matcher's own lock is never taken while holding it.
        for victim in victims:
            if victim is not None:
                victim.unload()

    def loaded(self) -> int:
        """How many matchers hold a loaded ruleset now."""
        with self._lock:
            refs = list(self._order.values())
        return sum(1 for ref in refs if (matcher := ref()) is not None and matcher.loaded)


_LIVE = _LoadedRulesets(LOADED_RULESETS_LIMIT)
