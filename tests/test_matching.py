"""The matching core wrapper: every matching rule fires, calls are serialised, failures surface."""
from __future__ import annotations

import threading

import pytest

from engine.errors import EvaluationError
from engine.matching import AttributeTest, Matcher, MatcherLimitError, MatchRule


def rules() -> list[MatchRule]:
    return [
        MatchRule(0, "loan.drawn", ()),
        MatchRule(1, "loan.drawn", (AttributeTest("e.amount", "gte", 5_000_000_000),)),
        MatchRule(2, "loan.drawn", (AttributeTest("e.product", "in", ("working_capital", "term_loan")),)),
        MatchRule(3, "loan.drawn", (AttributeTest("c.tier", "eq", "gold"),)),
        MatchRule(4, "loan.drawn", (AttributeTest("e.product", "not_in", ("working_capital",)),)),
        MatchRule(5, "survey.answered", (AttributeTest("e.csat", "exists", True),)),
        MatchRule(6, "survey.answered", (AttributeTest("e.csat", "exists", False),)),
        MatchRule(7, "loan.drawn", (AttributeTest("e.product", "ne", "term_loan"),
                                    AttributeTest("e.term_months", "lt", 12))),
    ]


def test_every_matching_rule_fires_not_just_the_first():
    matcher = Matcher(rules())
    fired = matcher.match("loan.drawn", {"amount": 6_000_000_000, "product": "working_capital", "term_months": 6},
                          {"tier": "gold"})
    assert sorted(fired) == [0, 1, 2, 3, 7]


def test_conditions_are_tested_by_the_engine():
    matcher = Matcher(rules())
    fired = matcher.match("loan.drawn", {"amount": 100, "product": "trade_finance", "term_months": 24},
                          {"tier": "silver"})
    assert sorted(fired) == [0, 4]
    assert matcher.match("survey.answered", {"nps": 9, "csat": 4}, {"tier": "silver"}) == [5]
    assert matcher.match("survey.answered", {"nps": 9}, {"tier": "silver"}) == [6]


def test_an_event_no_rule_handles_is_an_empty_match():
    assert Matcher(rules()).match("event.attended", {"kind": "forum"}, {"tier": "gold"}) == []
    assert Matcher([]).match("event.attended", {}, {}) == []


def test_concurrent_callers_lose_no_firings():
    matcher = Matcher(rules())
    counts = [0] * 4

    def work(slot: int) -> None:
        for _ in range(1500):
            counts[slot] += len(matcher.match("loan.drawn", {"amount": 1, "product": "term_loan", "term_months": 1},
                                              {"tier": "gold"}))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == [1500 * 4] * 4  # rules 0, 2, 3 and 4 each time, in every thread


def test_an_exception_inside_an_action_is_raised_not_swallowed():
    class Failing(Matcher):
        def _recorder(self, key):
            def record(_context):
                raise RuntimeError(f"broken action {key}")
            return record

    matcher = Failing([MatchRule(0, "loan.drawn", ())])
    with pytest.raises(EvaluationError, match="broken action 0"):
        matcher.match("loan.drawn", {}, {})


def test_512_equality_values_on_one_attribute_are_refused():
    too_many = [MatchRule(i, ("product.purchased", "product.renewed")[i % 2], (AttributeTest("e.product", "eq", f"p{i}"),))
                for i in range(512)]  # over two event types: each stays under the rules-per-type bound
    with pytest.raises(MatcherLimitError, match="'product' with 512 distinct values"):
        Matcher(too_many)
    Matcher(too_many[:511])  # the largest accepted set loads


def test_the_matcher_starts_no_background_threads():
    before = threading.active_count()
    for _ in range(5):
        Matcher(rules())
    assert threading.active_count() == before


def test_absent_attributes_are_not_equal_to_anything():
    matcher = Matcher([MatchRule(0, "survey.answered", (AttributeTest("e.csat", "ne", 5),)),
                       MatchRule(1, "survey.answered", (AttributeTest("c.segment", "not_in", ("strategic",)),))])
    assert sorted(matcher.match("survey.answered", {"nps": 3}, {"tier": "gold"})) == [0, 1]
    assert matcher.match("survey.answered", {"nps": 3, "csat": 5}, {"tier": "gold", "segment": "strategic"}) == []


def test_more_than_64_range_tests_per_event_type_are_refused():
    many = [MatchRule(i, "loan.drawn", (AttributeTest("e.amount", "gte", i),)) for i in range(65)]
    with pytest.raises(MatcherLimitError, match="65 range conditions"):
        Matcher(many)
    matcher = Matcher(many[:64])
    assert len(matcher.match("loan.drawn", {"amount": 10**9}, {})) == 64  # the most that can ever fire


def test_rulesets_beyond_the_limit_are_unloaded_and_rebuilt_on_their_next_match(monkeypatch):
    from engine import matching

    monkeypatch.setattr(matching._LIVE, "limit", 3)
    matchers = [Matcher(rules()) for _ in range(5)]
    assert [m.loaded for m in matchers] == [False, False, True, True, True]
    assert matching._LIVE.loaded() == 3
    # The evicted first matcher still answers (rebuilt), and the least recently used one makes room.
    first = sorted(matchers[0].match("loan.drawn", {"product": "working_capital", "amount": 60_000_000}, {"tier": "gold"}))
    assert first == sorted(matchers[4].match("loan.drawn", {"product": "working_capital", "amount": 60_000_000},
                                             {"tier": "gold"}))
    assert [m.loaded for m in matchers] == [True, False, False, True, True]


def test_dropped_and_evicted_matchers_give_their_memory_back(monkeypatch):
    from engine import matching

    def rss_mib() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    monkeypatch.setattr(matching._LIVE, "limit", 4)
    many = [MatchRule(i, f"type.t{i % 10}", (AttributeTest("e.product", "eq", f"p{i % 50}"),
                                             AttributeTest("e.amount", "gte", i))) for i in range(100)]
    kept = []
    for round_ in range(40):  # warm up allocator arenas first
        kept.append(Matcher(many))
        kept[-1].match("type.t1", {"product": "p1", "amount": 10**9}, {})
    before = rss_mib()
    for round_ in range(200):
        matcher = Matcher(many)
        matcher.match("type.t1", {"product": "p1", "amount": 10**9}, {})
        if round_ % 2:
            kept.append(matcher)  # half stay referenced (evicted), half are dropped (finalised)
    grown = rss_mib() - before
    print(f"RSS growth over 200 rulesets of 100 rules: {grown:.1f} MiB")
    # Without deleting state and ruleset each one kept about 1 MiB (200 MiB here).
    assert grown < 40


def test_a_match_that_fails_still_counts_its_ruleset_against_the_limit(monkeypatch):
    from engine import matching

    class Failing(Matcher):
        def _recorder(self, key):
            def record(_context):
                raise RuntimeError("broken action")
            return record

    monkeypatch.setattr(matching._LIVE, "limit", 2)
    failing = [Failing([MatchRule(0, "loan.drawn", ())]) for _ in range(6)]
    for matcher in failing:  # each was evicted by the next ones; a failing match loads it again
        with pytest.raises(EvaluationError):
            matcher.match("loan.drawn", {}, {})
    assert sum(m.loaded for m in failing) == matching._LIVE.loaded() == 2


def test_a_ruleset_no_event_matched_is_freed_without_crashing_the_process():
    """Deleting session state the core never created (every event matched no rule) crashed the process, on
    eviction and at exit; run in a child so a crash fails the test instead of killing the run."""
    import subprocess
    import sys

    script = (
        "from engine.matching import AttributeTest, Matcher, MatchRule\n"
        "rules = [MatchRule(1, 't', (AttributeTest('e.x', 'eq', 0),))]\n"
        "unmatched, matched = Matcher(rules), Matcher(rules)\n"
        "assert unmatched.match('t', {'x': 5}, {}) == [] and matched.match('t', {'x': 0}, {}) == [1]\n"
        "unmatched.unload(); matched.unload()\n"
        "assert unmatched.match('t', {'x': 0}, {}) == [1]  # loaded again on demand\n"
        "left = Matcher(rules); left.match('t', {'x': 5}, {})  # freed at exit\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_more_rules_on_one_event_type_than_the_core_matches_are_refused():
    """512 rules on one event type hung the core at the first event, even when eq tells them apart."""
    from engine.matching import MAX_RULES_OF_ONE_EVENT_TYPE

    rules = [MatchRule(i, "loan.drawn", (AttributeTest("e.loan_id", "eq", f"L{i}"),))
             for i in range(MAX_RULES_OF_ONE_EVENT_TYPE + 1)]
    with pytest.raises(MatcherLimitError, match=f"{MAX_RULES_OF_ONE_EVENT_TYPE + 1} rules are on loan.drawn events"):
        Matcher(rules)
    assert Matcher(rules[:-1]).match("loan.drawn", {"loan_id": "L7"}, {}) == [7]
