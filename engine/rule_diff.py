"""Semantic diff of two programme versions: what changed in meaning, for a person reviewing a rule change.

Both sides are validated `Programme` models, so layout, comments, key order and number spelling
(1.5 against 1.50) never show. Items with ids (tiers, rules, catalogue rewards, churn signals, event
types, attributes, products) are matched by id, so moving them in the file is no change, and a
renamed rule is one removed and one added. Lists of names (products, enum values, `in` lists) are
compared as sets. Condition values are compared as the engine matches them, by their attribute's
type (50000000 and "50000000.00" are one amount), and shown in the file's terms: money as written,
bps, hours, days.

Only two orders carry meaning and are compared as orders: the tiers (lowest first) and the firing
order of rules that share an event type and a priority (ties fire in file order).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from engine.events import matching_value
from engine.schema import ChurnSignal, Programme, Qualification, Rule, Threshold

SECTIONS = ("programme", "loan_products", "discount_ceiling_bps", "event_types", "tiers", "qualification",
            "benefits", "rules", "catalogue", "review", "points", "churn")

Kind = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class Change:
    """One difference: in which section, what kind, which item (a tier, a rule…), which part of it, old and new."""

    section: str
    kind: Kind
    item: str = ""
    field: str = ""
    old: object = None
    new: object = None

    def as_dict(self) -> dict:
        """JSON-friendly form for `--json` output."""
        return asdict(self)


@dataclass(frozen=True)
class ProgrammeDiff:
    """Every difference between two programme versions, in section order."""

    changes: tuple[Change, ...]

    @property
    def identical(self) -> bool:
        """True when the two versions mean the same."""
        return not self.changes

    def by_section(self) -> dict[str, list[Change]]:
        """The changes grouped by section, sections in SECTIONS order, empty ones left out."""
        grouped: dict[str, list[Change]] = {}
        for change in self.changes:
            grouped.setdefault(change.section, []).append(change)
        return grouped

    def as_dict(self) -> dict:
        """JSON-friendly form: counts per section and every change."""
        return {"identical": self.identical, "differences": len(self.changes),
                "counts": {section: len(items) for section, items in self.by_section().items()},
                "changes": [change.as_dict() for change in self.changes]}


def diff_programmes(old: Programme, new: Programme) -> ProgrammeDiff:
    """Compare two validated programme versions by meaning."""
    changes = [
        *_flat("programme", _dump(old.programme), _dump(new.programme)),
        *_set_changes("loan_products", old.loan_products, new.loan_products),
        *_flat("discount_ceiling_bps", dict(old.discount_ceiling_bps), dict(new.discount_ceiling_bps)),
        *_keyed("event_types", {k: _dump(v) for k, v in old.event_types.items()},
                {k: _dump(v) for k, v in new.event_types.items()}),
        *_tier_changes(old, new),
        *_qualification_changes(old, new),
        *_benefit_changes(old, new),
        *_rule_changes(old, new),
        *_keyed("catalogue", {r.id: _dump(r, exclude={"id"}) for r in old.catalogue},
                {r.id: _dump(r, exclude={"id"}) for r in new.catalogue}),
        *_flat("review", _dump(old.review), _dump(new.review)),
        *_flat("points", _dump(old.points), _dump(new.points)),
        *_flat("churn", _dump(old.churn, exclude={"signals"}), _dump(new.churn, exclude={"signals"})),
        *_signal_changes(old.churn.signals, new.churn.signals),
    ]
    return ProgrammeDiff(tuple(changes))


# --- generic comparison of dumped models -----------------------------------------------------------

def _dump(model: BaseModel, exclude: set[str] | None = None, exclude_defaults: bool = False) -> dict:
    """A model as plain values, by rule-file names, without None and empty text.

    Empty maps stay, so a where-block gaining its first condition compares attribute by attribute.
    """
    dumped = model.model_dump(mode="python", by_alias=True, exclude=exclude, exclude_defaults=exclude_defaults)
    return _strip(dumped, containers=False)


def _compact(value: object) -> object:
    """A whole value added or removed, also without its empty maps and lists (where: {}, client: {})."""
    return _strip(value, containers=True)


def _strip(value: object, containers: bool) -> object:
    # An empty description says the same as leaving the key out; false and 0 are values, kept.
    if isinstance(value, dict):
        stripped = {key: _strip(item, containers) for key, item in value.items()}
        return {key: item for key, item in stripped.items()
                if not (item is None or item == "" or (containers and item in ({}, [])))}
    if isinstance(value, list):
        return [_strip(item, containers) for item in value]
    return value


def _same_key(value: object) -> object:
    # true == 1 and false == 0 in Python; in a rule file they are different values.
    try:
        hash(value)
    except TypeError:
        return (type(value).__name__, repr(value))
    return (type(value) is bool, value)


def _compare(old: object, new: object, path: tuple[str, ...] = ()) -> Iterator[tuple[Kind, str, object, object]]:
    """(kind, dotted path, old, new) for every difference between two dumped values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(key for key in new if key not in old)]:
            yield from _compare(old.get(key), new.get(key), path + (key,))
    elif old is None:
        if new is not None:
            yield "added", ".".join(path), None, _compact(new)
    elif new is None:
        yield "removed", ".".join(path), _compact(old), None
    elif isinstance(old, list) and isinstance(new, list):
        for kind, value in _set_difference(old, new):
            yield kind, ".".join(path), (value if kind == "removed" else None), (value if kind == "added" else None)
    elif _same_key(old) != _same_key(new):
        yield "changed", ".".join(path), old, new


def _set_difference(old: list, new: list) -> Iterator[tuple[Kind, object]]:
    """Members removed (in old order) then added (in new order), each once."""
    old_keys = {_same_key(item) for item in old}
    new_keys = {_same_key(item) for item in new}
    seen: set = set()
    for kind, items, other in (("removed", old, new_keys), ("added", new, old_keys)):
        for item in items:
            key = _same_key(item)
            if key not in other and (kind, key) not in seen:
                seen.add((kind, key))
                yield kind, item


def _flat(section: str, old: dict, new: dict) -> Iterator[Change]:
    """Changes of a section without items of its own: the key path is the item."""
    for kind, path, before, after in _compare(old, new):
        yield Change(section, kind, path, "", before, after)


def _set_changes(section: str, old: list, new: list) -> Iterator[Change]:
    """Members of a list of names added or removed; each member is the item."""
    for kind, value in _set_difference(old, new):
        yield Change(section, kind, str(value))


def _keyed(section: str, old: dict[str, dict], new: dict[str, dict]) -> Iterator[Change]:
    """Items matched by id: removed or changed in old order, then the added ones in new order."""
    for key, before in old.items():
        if key not in new:
            yield Change(section, "removed", key, "", _compact(before), None)
            continue
        for kind, path, was, now in _compare(before, new[key]):
            yield Change(section, kind, key, path, was, now)
    for key, after in new.items():
        if key not in old:
            yield Change(section, "added", key, "", None, _compact(after))


# --- tiers, qualification thresholds, benefits -----------------------------------------------------

def _tier_changes(old: Programme, new: Programme) -> Iterator[Change]:
    """Tiers added, removed, renamed, and the order of tiers (lowest first), which ranks them."""
    identity = {"id", "qualification", "benefits"}
    yield from _keyed("tiers", {t.id: _dump(t, exclude=identity) for t in old.tiers},
                      {t.id: _dump(t, exclude=identity) for t in new.tiers})
    old_order, new_order = [t.id for t in old.tiers], [t.id for t in new.tiers]
    if old_order != new_order:
        yield Change("tiers", "changed", "order", "", old_order, new_order)


def _qualification_changes(old: Programme, new: Programme) -> Iterator[Change]:
    """Threshold changes per tier; a tier added or removed shows all its thresholds added or removed."""
    old_tiers, new_tiers = {t.id: t for t in old.tiers}, {t.id: t for t in new.tiers}
    for tier_id in _union(old_tiers, new_tiers):
        before, after = old_tiers.get(tier_id), new_tiers.get(tier_id)
        yield from _group_changes(tier_id, before.qualification if before else None,
                                  after.qualification if after else None, label="", place="qualification")


def _combinator(group: Qualification) -> str:
    return "all" if group.all is not None else "any"


def _group_changes(tier_id: str, old: Qualification | None, new: Qualification | None,
                   label: str, place: str) -> Iterator[Change]:
    """Changes in one all/any group: its combinator, its thresholds by (metric, operator), nested groups by order.

    `label` prefixes the fields of nested groups (e.g. "any[1].all"); `place` names the group itself.
    """
    if old is not None and new is not None and _combinator(old) != _combinator(new):
        yield Change("qualification", "changed", tier_id, place, _combinator(old), _combinator(new))
    shown = new if new is not None else old
    here = f"{label}{_combinator(shown)}" if shown is not None else label
    prefix = f"{here}: " if label else ""
    old_items, new_items = _group_items(old), _group_items(new)
    old_thresholds, new_thresholds = _thresholds_by_key(old_items), _thresholds_by_key(new_items)
    for key in _union(old_thresholds, new_thresholds):
        before, after = old_thresholds.get(key), new_thresholds.get(key)
        field = f"{prefix}{key[0]} {key[1]}"
        if after is None:
            yield Change("qualification", "removed", tier_id, field, before.value, None)
        elif before is None:
            yield Change("qualification", "added", tier_id, field, None, after.value)
        elif before.value != after.value:
            yield Change("qualification", "changed", tier_id, field, before.value, after.value)
    old_groups = [(i, g) for i, g in enumerate(old_items) if isinstance(g, Qualification)]
    new_groups = [(i, g) for i, g in enumerate(new_items) if isinstance(g, Qualification)]
    for number in range(max(len(old_groups), len(new_groups))):
        before = old_groups[number] if number < len(old_groups) else None
        after = new_groups[number] if number < len(new_groups) else None
        position = (after or before)[0]
        yield from _group_changes(tier_id, before and before[1], after and after[1],
                                  label=f"{here}[{position}].", place=f"{here}[{position}]")


def _group_items(group: Qualification | None) -> list:
    return list((group.all or group.any or []) if group is not None else [])


def _thresholds_by_key(items: list) -> dict[tuple[str, str, int], Threshold]:
    """Thresholds keyed by metric and operator (and which occurrence, for a metric tested twice the same way)."""
    keyed: dict[tuple[str, str, int], Threshold] = {}
    for item in items:
        if isinstance(item, Threshold):
            count = sum(1 for key in keyed if key[:2] == (item.metric, item.operator))
            keyed[(item.metric, item.operator, count)] = item
    return keyed


def _benefit_changes(old: Programme, new: Programme) -> Iterator[Change]:
    """Standing benefits per tier; a tier added or removed shows the benefits it sets."""
    old_tiers, new_tiers = {t.id: t for t in old.tiers}, {t.id: t for t in new.tiers}
    for tier_id in _union(old_tiers, new_tiers):
        both = tier_id in old_tiers and tier_id in new_tiers
        before = _dump(old_tiers[tier_id].benefits, exclude_defaults=not both) if tier_id in old_tiers else {}
        after = _dump(new_tiers[tier_id].benefits, exclude_defaults=not both) if tier_id in new_tiers else {}
        for kind, path, was, now in _compare(before, after):
            yield Change("benefits", kind, tier_id, path, was, now)


def _union(old: dict, new: dict) -> list:
    return [*old, *(key for key in new if key not in old)]


# --- rules ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|[A-Za-z0-9_.]+|\S')


def _expression_tokens(expression: str) -> list[str]:
    """A CEL expression's tokens: two expressions with the same tokens differ only in spacing."""
    return _TOKEN.findall(expression)


def _rule_changes(old: Programme, new: Programme) -> Iterator[Change]:
    """Rules matched by id, part by part, then the firing order of rules sharing an event type and a priority."""
    old_dumps = {rule.id: _dump(rule, exclude={"id"}) for rule in old.rules}
    new_dumps = {rule.id: _dump(rule, exclude={"id"}) for rule in new.rules}
    old_rules = {rule.id: rule for rule in old.rules}
    for rule in new.rules:
        if rule.id not in old_rules:
            continue
        before, after = old_dumps[rule.id], new_dumps[rule.id]
        was, now = before.get("award", {}).get("points"), after.get("award", {}).get("points")
        if was and now and _expression_tokens(was) == _expression_tokens(now):
            after["award"]["points"] = was  # spacing in an expression is layout, not meaning
        _align_conditions(before["when"], after["when"], _condition_types(old, old_rules[rule.id]),
                          _condition_types(new, rule))
    yield from _keyed("rules", old_dumps, new_dumps)
    yield from _firing_order_changes(old.rules, new.rules)


# Where a condition sits in a dumped `when`, and the type its values are matched as (engine.loader._match_rule).
_CLIENT_CONDITION_TYPES = {"tier": "enum", "segment": "enum", "tenure_months": "integer"}


def _condition_types(programme: Programme, rule: Rule) -> dict[tuple[str, str], str]:
    """The attribute type of each condition of a rule, keyed by (where|client, name)."""
    attributes = programme.event_types[rule.when.event].attributes
    types = {("where", name): attributes[name].type for name in rule.when.where if name in attributes}
    types.update({("client", name): kind for name, kind in _CLIENT_CONDITION_TYPES.items()})
    return types


def _align_conditions(before: dict, after: dict, old_types: dict[tuple[str, str], str],
                      new_types: dict[tuple[str, str], str]) -> None:
    """Give `after` the old spelling of every condition value that matches the same as before.

    The schema keeps a value's YAML type (50000000, "50000000.00", a quoted or unquoted date); the
    engine converts it by the attribute's type before matching, so the diff compares it that way too.
    """
    for (scope, name), new_type in new_types.items():
        old_type = old_types.get((scope, name))
        was, now = before.get(scope, {}).get(name), after.get(scope, {}).get(name)
        if old_type is None or not isinstance(was, dict) or not isinstance(now, dict):
            continue
        for operator, value in now.items():
            if operator not in was or operator == "exists":
                continue
            if isinstance(value, list) and isinstance(was[operator], list):
                spelled = {_condition_key(old_type, item): item for item in was[operator]}
                now[operator] = [spelled.get(_condition_key(new_type, item), item) for item in value]
            elif _condition_key(old_type, was[operator]) == _condition_key(new_type, value):
                now[operator] = was[operator]


def _condition_key(attribute_type: str, value: object) -> object:
    """A condition value as the engine matches it, for comparison only."""
    try:
        if attribute_type == "money":
            # An exact amount, not minor units: a currency change is reported once, in the programme header.
            return _same_key(Decimal(str(value)))
        return _same_key(matching_value(attribute_type, value, ""))
    except (ArithmeticError, TypeError, ValueError):
        return _same_key(value)  # both files loaded, so this is only a safety net: compare as written


def _firing_order_changes(old: list[Rule], new: list[Rule]) -> Iterator[Change]:
    """Rules kept in both files whose firing order among each other changed by moving them in the file.

    Only rules of one event type fire together, and caps are per rule, so order matters only between
    rules sharing an event type and a priority: it decides whose entries and grants come first (the
    older grant wins a tie when single-use discounts or fast-track lanes are stacked). Priority and
    event changes are reported on their rules; groups are those of the new file. Only the rules that
    changed places relative to another are listed.
    """
    old_position = {rule.id: index for index, rule in enumerate(old)}
    groups: dict[tuple[int, str], list[str]] = {}
    for rule in new:  # in new file order
        if rule.id in old_position:
            groups.setdefault((rule.priority, rule.when.event), []).append(rule.id)
    for (priority, event), after in sorted(groups.items()):
        before = sorted(after, key=old_position.__getitem__)
        if before == after:
            continue
        new_rank = {rule_id: index for index, rule_id in enumerate(after)}
        swapped = [(first, second) for index, first in enumerate(before) for second in before[index + 1:]
                   if new_rank[first] > new_rank[second]]
        moved = {rule_id for pair in swapped for rule_id in pair}
        yield Change("rules", "changed", f"firing order of {event} rules at priority {priority}", "",
                     [rule_id for rule_id in before if rule_id in moved],
                     [rule_id for rule_id in after if rule_id in moved])


# --- churn signals ---------------------------------------------------------------------------------------

def _signal_changes(old: list[ChurnSignal], new: list[ChurnSignal]) -> Iterator[Change]:
    """Churn signals matched by id: description, and the test as metric and operator with its value."""
    old_signals, new_signals = {s.id: s for s in old}, {s.id: s for s in new}
    for signal_id in _union(old_signals, new_signals):
        before, after = old_signals.get(signal_id), new_signals.get(signal_id)
        item = f"signals.{signal_id}"
        if after is None:
            yield Change("churn", "removed", item, "", _compact(_dump(before, exclude={"id"})), None)
        elif before is None:
            yield Change("churn", "added", item, "", None, _compact(_dump(after, exclude={"id"})))
        else:
            if before.description != after.description:
                yield Change("churn", "changed", item, "description", before.description, after.description)
            old_test, new_test = f"{before.metric} {before.operator}", f"{after.metric} {after.operator}"
            if old_test != new_test:
                yield Change("churn", "removed", item, old_test, before.value, None)
                yield Change("churn", "added", item, new_test, None, after.value)
            elif before.value != after.value:
                yield Change("churn", "changed", item, new_test, before.value, after.value)
