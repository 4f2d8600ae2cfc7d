"""Why a client holds what it holds: each entitlement with the rule and programme version that granted it,
the rule's conditions against the event that met them, the tier decision behind standing tier benefits
(with the metric values and thresholds), what a redemption cost, and what happened to it since
(consumed by a quote, revoked by a tier move, reversed with its event, expired). Also the highest tier the
client's metrics reach and when the review policy moves it there (the outlook).

`read_facts` does all the reading, in one snapshot; everything after it is pure shaping of what was read.
The moment asked about (`at`) selects what was held then: an entitlement granted by then and not consumed,
revoked, reversed or expired by then (a reversal counts from when it was written). One consumed or reversed
after `at` therefore counts as held at `at`, unlike in `loyalty benefits --at`, which leaves out whatever is
consumed or reversed by now. History lists every entry, later ones too, in order of time.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, Engine, Select, case, func, or_, select

from engine.context import context_at
from engine.events import matching_value, minor_unit_exponent
from engine.metrics import METRICS, Check, Values, check, display, place, qualifies
from engine.programme import CompiledProgramme, ProgrammeSet
from engine.schema import Condition, Qualification, Rule, Threshold, Tier
from rewards.caps import months_before
from rewards.kinds import Reason
from rewards.tier_policy import instant_target
from rewards.tiers import TIER_RULE_PREFIX
from service.benefits import require_utc
from service.errors import NotFoundError
from service.explain_answer import ExplanationAnswer
from rewards.notices import REDEEM_RULE_PREFIX
from storage import clients as client_store
from storage import standing
from storage.db import read_snapshot
from storage.metrics import client_metrics
from storage.models import (Client, Entitlement, EventReversal, LedgerEntry, ProcessedEvent, TierAssignment,
                            TierReview)

ENTRY, CLIENT, ENTITLEMENT = LedgerEntry.__table__, Client.__table__, Entitlement.__table__
EVENTS, REVERSAL = ProcessedEvent.__table__, EventReversal.__table__
TIERS, REVIEWS = TierAssignment.__table__, TierReview.__table__
MAX_ID = 2**31 - 1  # ledger ids are INTEGER columns (32 bits on PostgreSQL): a larger one names nothing

ACTIVE, EXPIRED, NOT_YET = "active", "expired", "not_yet_granted"
_ENDED_BY = {Reason.CONSUME: "consumed", Reason.REVOKE: "revoked", Reason.REVERSE: "reversed"}
_SYMBOLS = {"eq": "=", "ne": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤", "in": "in", "not_in": "not in",
            "exists": "exists"}


@dataclass(frozen=True)
class Facts:
    """Everything an explanation is shaped from, read in one snapshot."""

    client: dict
    at: datetime
    grants: list[dict]  # the grant entries of the entitlements explained, oldest first
    followers: dict[int, list[dict]]  # entitlement id → the entries naming it (consume, revoke, reverse), in order
    events: dict[str, dict]  # event id → the processed event, payload decoded
    reversals: dict[str, dict]  # event id → its reversal
    tier_rows: list[dict]  # the client's tier history, oldest first
    pins: list[dict]
    reviews: dict[str, dict]  # review id → the review
    redemptions: list[dict]  # the client's redeem entries
    onboardings: list[tuple[datetime, str | None]]
    points: list[dict]  # per (reason, rule): points and entries, as of `at`
    metrics: Values  # the client's metrics at `at`
    recomputed: dict[int, Values]  # tier row id → metrics at its moment, for decisions that recorded none
    last_events: dict[int, str]  # tier row id → the client's latest event by then (an instant upgrade's measure)


def explain_client(engine: Engine, programmes: ProgrammeSet, client_id: str, at: datetime,
                   entitlement_id: int | None = None) -> ExplanationAnswer:
    """Why `client_id` holds each entitlement at `at` (or why it got `entitlement_id`, whatever became of it).

    NotFoundError for an unknown client, an unknown entitlement or another client's; InputError for a naive `at`.
    """
    at = require_utc(at)
    with read_snapshot(engine) as conn:
        facts = read_facts(conn, programmes, client_id, at, entitlement_id)
    return ExplanationAnswer.model_validate(explanation(facts, programmes, entitlement_id is not None))


# --- reading -------------------------------------------------------------------------------------------

def read_facts(conn: Connection, programmes: ProgrammeSet, client_id: str, at: datetime,
               entitlement_id: int | None) -> Facts:
    """Read what explaining `client_id` at `at` needs (only `entitlement_id`, if given)."""
    client = conn.execute(select(CLIENT).where(CLIENT.c.client_id == client_id)).first()
    if client is None:
        raise NotFoundError(f"no client {client_id!r}: it has no events yet")
    grants, followers = _entitlement_entries(conn, client_id)
    if entitlement_id is not None:
        if entitlement_id not in grants:
            raise _unknown_entitlement(conn, client_id, entitlement_id)
        chosen = [grants[entitlement_id]]
    else:
        chosen = [g for g in grants.values() if status_at(g, followers[g["id"]], at)[0] == ACTIVE]
    tier_rows = _rows(conn, select(TIERS).where(TIERS.c.client_id == client_id)
                      .order_by(TIERS.c.valid_from, TIERS.c.id))
    pins = standing.pin_history(conn, client_id)
    pinned_at = {pin["valid_from"] for pin in pins}
    decisions = [row for row in [_in_force(tier_rows, at), *(decision_row(tier_rows, g) for g in chosen)] if row]
    # A pin records no metrics: recompute them at its moment. An instant upgrade was measured at the client's
    # latest activity then: name it.
    recomputed = {row["id"]: _metrics(conn, programmes, client_id, row["valid_from"])
                  for row in decisions if row["details"] is None and row["previous_tier"] is not None}
    last_events = {row["id"]: event_id for row in decisions if _how(row, pinned_at) == "instant_upgrade"
                   and (event_id := _latest_event(conn, client_id, row["valid_from"])) is not None}
    event_ids = sorted({g["event_id"] for g in chosen if g["event_id"]} | set(last_events.values()))
    review_ids = sorted({row["review_id"] for row in tier_rows if row["review_id"]})
    redeems = any(g["rule_id"].startswith(REDEEM_RULE_PREFIX) for g in chosen)
    return Facts(
        client=dict(client._mapping), at=at, grants=chosen, followers=followers,
        events=_events(conn, client_id, event_ids),
        reversals={row["event_id"]: row for row in _rows(conn, select(REVERSAL).where(
            REVERSAL.c.event_id.in_(event_ids)))} if event_ids else {},
        tier_rows=tier_rows, pins=pins,
        reviews={row["id"]: row for row in _rows(conn, select(REVIEWS).where(REVIEWS.c.id.in_(review_ids)))}
        if review_ids else {},
        redemptions=_rows(conn, select(ENTRY).where(ENTRY.c.client_id == client_id, ENTRY.c.reason == Reason.REDEEM)
                          .order_by(ENTRY.c.id)) if redeems else [],
        onboardings=client_store.onboarding_histories(conn, [client_id]).get(client_id, []),
        points=_points(conn, client_id, at), metrics=_metrics(conn, programmes, client_id, at),
        recomputed=recomputed, last_events=last_events)


def _rows(conn: Connection, query: Select) -> list[dict]:
    return [dict(row._mapping) for row in conn.execute(query)]


def _entitlement_entries(conn: Connection, client_id: str) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    """The client's grant entries by id, and the entries naming each entitlement since, in order."""
    query = select(ENTRY).where(ENTRY.c.client_id == client_id,
                                or_(ENTRY.c.reason == Reason.GRANT, ENTRY.c.entitlement_id.is_not(None))) \
        .order_by(ENTRY.c.id)
    grants: dict[int, dict] = {}
    followers: dict[int, list[dict]] = defaultdict(list)
    for entry in _rows(conn, query):
        if entry["reason"] == Reason.GRANT:
            grants[entry["id"]] = entry
        else:
            followers[entry["entitlement_id"]].append(entry)
    return grants, followers


def _unknown_entitlement(conn: Connection, client_id: str, entitlement_id: int) -> NotFoundError:
    owner = conn.execute(select(ENTITLEMENT.c.client_id).where(ENTITLEMENT.c.id == entitlement_id)).scalar() \
        if 1 <= entitlement_id <= MAX_ID else None
    if owner is not None:
        return NotFoundError(f"entitlement {entitlement_id} is not client {client_id}'s: it belongs to another "
                             f"client; `loyalty explain {client_id}` lists the ones {client_id} holds")
    return NotFoundError(f"no entitlement {entitlement_id}: entitlement ids are the ids of grant entries, as "
                         f"`loyalty benefits {client_id}` or `loyalty ledger {client_id}` show them")


def _events(conn: Connection, client_id: str, event_ids: list[str]) -> dict[str, dict]:
    if not event_ids:
        return {}
    query = select(EVENTS.c.event_id, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.payload,
                   EVENTS.c.programme_version).where(EVENTS.c.client_id == client_id,
                                                     EVENTS.c.event_id.in_(event_ids))
    return {row.event_id: {"id": row.event_id, "type": row.type, "occurred_at": row.occurred_at,
                           "data": json.loads(row.payload)["data"], "programme_version": row.programme_version}
            for row in conn.execute(query)}


def _latest_event(conn: Connection, client_id: str, moment: datetime) -> str | None:
    """The client's latest applied event at or before `moment` that was not reversed."""
    return conn.execute(select(EVENTS.c.event_id).where(
        EVENTS.c.client_id == client_id, EVENTS.c.occurred_at <= moment,
        EVENTS.c.event_id.not_in(select(REVERSAL.c.event_id)))
        .order_by(EVENTS.c.occurred_at.desc(), EVENTS.c.event_id.desc()).limit(1)).scalar()


def _points(conn: Connection, client_id: str, at: datetime) -> list[dict]:
    # A reversal counts from when it was written: its entries keep the moment of what they cancel.
    when = case((ENTRY.c.reason == Reason.REVERSE, ENTRY.c.created_at), else_=ENTRY.c.valid_from)
    query = select(ENTRY.c.reason, ENTRY.c.rule_id, func.sum(ENTRY.c.points), func.count()).where(
        ENTRY.c.client_id == client_id, ENTRY.c.points != 0, when <= at) \
        .group_by(ENTRY.c.reason, ENTRY.c.rule_id).order_by(ENTRY.c.reason, ENTRY.c.rule_id)
    return [{"reason": reason, "rule_id": rule_id, "points": int(points), "entries": count}
            for reason, rule_id, points, count in conn.execute(query)]


def _metrics(conn: Connection, programmes: ProgrammeSet, client_id: str, moment: datetime) -> Values:
    programme = programmes.for_moment(moment)
    window = programme.model.review.window_months
    values = client_metrics(conn, moment, months_before(moment, window), window, programme.currency, [client_id])
    return values.get(client_id, dict.fromkeys(METRICS))


# --- what was held, and what decided it (pure) -------------------------------------------------------------

def status_at(grant: dict, followers: list[dict], at: datetime) -> tuple[str, datetime | None]:
    """The entitlement's status at `at` and since when: active, consumed, revoked, reversed, expired, or
    not yet granted. A reversal ends it when it was written; the others at their entry's moment."""
    if grant["valid_from"] > at:
        return NOT_YET, None
    endings = [(_moment(entry), _ENDED_BY[Reason(entry["reason"])]) for entry in followers
               if entry["reason"] in _ENDED_BY]
    if grant["valid_to"] is not None:
        endings.append((grant["valid_to"], EXPIRED))
    past = [ending for ending in endings if ending[0] <= at]
    if not past:
        return ACTIVE, None
    moment, status = min(past, key=lambda ending: ending[0])
    return status, moment


def _moment(entry: dict) -> datetime:
    return entry["created_at"] if entry["reason"] == Reason.REVERSE else entry["valid_from"]


def decision_row(tier_rows: list[dict], grant: dict) -> dict | None:
    """The tier-history row whose move granted a standing tier benefit (None for other grants)."""
    if not grant["rule_id"].startswith(TIER_RULE_PREFIX):
        return None
    tier = grant["rule_id"][len(TIER_RULE_PREFIX):]
    # A move grants the new tier's benefits at the moment it takes effect.
    candidates = [row for row in tier_rows if row["tier"] == tier and row["valid_from"] <= grant["valid_from"]]
    exact = [row for row in candidates if row["valid_from"] == grant["valid_from"]]
    return (exact or candidates or [None])[-1]


def _in_force(tier_rows: list[dict], at: datetime) -> dict | None:
    started = [row for row in tier_rows if row["valid_from"] <= at]
    return started[-1] if started else None


def _how(row: dict, pinned_at: set[datetime]) -> str:
    """How a tier decision came about: new_client, review, pin or instant_upgrade."""
    if row["previous_tier"] is None:
        return "new_client"
    if row["review_id"] is not None:
        return "review"
    return "pin" if row["valid_from"] in pinned_at else "instant_upgrade"


# --- shaping (pure) -------------------------------------------------------------------------------------

def explanation(facts: Facts, programmes: ProgrammeSet, single: bool) -> dict:
    """The explanation as JSON (the same for `loyalty explain --json` and the HTTP API)."""
    programme = programmes.for_moment(facts.at)
    client = facts.client
    return {
        "client_id": client["client_id"], "name": client["name"], "as_of": facts.at.isoformat(),
        "programme": {"id": programme.id, "version": programme.version},
        "entitlement_id": facts.grants[0]["id"] if single else None,
        "tier": _tier_view(facts, programmes, programme),
        "points": _points_view(facts.points),
        "entitlements": [_entitlement_view(facts, programmes, grant) for grant in facts.grants],
    }


def _tier_view(facts: Facts, programmes: ProgrammeSet, programme: CompiledProgramme) -> dict:
    row = _in_force(facts.tier_rows, facts.at)
    currency = programme.currency
    metrics = {name: _metric_view(name, value, currency) for name, value in facts.metrics.items()}
    if row is None:
        return {"current": None, "since": None, "decision": None, "metrics": metrics, "qualified": None,
                "outlook": None, "next_tier": None}
    qualified = place(programme.model.tiers, facts.metrics).tier
    ids = programme.tier_ids
    above = ids[ids.index(row["tier"]) + 1] if row["tier"] in ids and row["tier"] != ids[-1] else None
    next_tier = None
    if above is not None:
        tier = programme.tier(above)
        next_tier = {"tier": above, "name": tier.name, "qualifies": qualifies(tier.qualification, facts.metrics)[0],
                     "instant_upgrade": above in programme.model.review.instant_upgrade,
                     "requirement": requirement(tier.qualification, facts.metrics, currency)}
    return {"current": row["tier"], "since": row["valid_from"].isoformat(),
            "decision": _decision_view(facts, programmes, row), "metrics": metrics, "qualified": qualified,
            "outlook": outlook(programme, row["tier"], qualified, _pin_in_force(facts.pins, facts.at)),
            "next_tier": next_tier}


def _pin_in_force(pins: list[dict], at: datetime) -> dict | None:
    # As storage.standing.pins_in_force: the latest pin started by then, unless it has ended.
    started = [pin for pin in pins if pin["valid_from"] <= at]
    return started[-1] if started and started[-1]["until"] > at else None


def outlook(programme: CompiledProgramme, current: str, qualified: str, pin: dict | None) -> dict | None:
    """Where the review policy takes a client of tier `current` whose metrics reach `qualified`, and when."""
    ids = programme.tier_ids
    if current not in ids:
        return None  # a tier this rule-file version no longer has: no policy to apply to it
    policy = programme.model.review
    view = {"action": "stay", "moves": [], "pinned_until": None}
    if pin is not None:
        return {**view, "action": "pinned", "pinned_until": pin["until"].isoformat(),
                "text": f"pinned to {pin['tier']} until {pin['until']:%Y-%m-%d} (its metrics reach {qualified}): "
                        f"reviews and instant upgrades leave it there until then"}
    rank, target = ids.index(current), ids.index(qualified)
    if target == rank:
        return {**view, "text": f"qualifies for {qualified}, its tier: stays there"}
    if target < rank:
        steps = policy.downgrade.max_steps
        lowest = ids[max(target, rank - steps)]
        return {**view, "action": "downgrade",
                "text": f"qualifies only for {qualified}: a review may move it down to {lowest} (at most {steps} "
                        f"tier{'s' if steps > 1 else ''} per review) once the review policy's new-client protection, "
                        f"minimum time in tier and grace period allow"}
    # Upgrades: the highest instant-upgrade tier it reaches comes with its next event, the rest at the next review.
    instant = instant_target(current, qualified, ids, policy.instant_upgrade)
    moves = [{"tier": instant, "when": "next_event"}] if instant else []
    if instant != qualified:
        moves.append({"tier": qualified, "when": "next_review"})
    when = {"next_event": "with its next event (instant upgrade)", "next_review": "at the next review"}
    steps = [f"{'there' if move['tier'] == qualified and len(moves) == 1 else 'to ' + move['tier']} "
             f"{when[move['when']]}" for move in moves]
    return {**view, "action": "upgrade", "moves": moves,
            "text": f"qualifies for {qualified}: moves " + ", then ".join(steps)}


def _metric_view(name: str, value: Decimal | None, currency: str) -> dict:
    return {"value": display(value), "unit": METRICS[name].unit,
            "text": _metric_text(name, display(value), currency)}


def requirement(qualification: Qualification | None, values: Values, currency: str) -> dict | None:
    """A qualification as a tree of groups (all / any) and checks, each with the client's value and, for a
    threshold not met, how far the value is from it."""
    if qualification is None:
        return None
    items = [_check_view(check(item, values), currency) if isinstance(item, Threshold)
             else requirement(item, values, currency) for item in qualification.all or qualification.any or []]
    return {"combine": "all" if qualification.all is not None else "any",
            "met": qualifies(qualification, values)[0], "items": items}


def _check_view(result: Check, currency: str) -> dict:
    view = result.as_dict()
    gap = _gap(result)
    to_go = f" ({_metric_text(result.metric, gap, currency)} to go)" if gap else ""
    return {**view, "gap": gap, "text": _check_text(view, currency) + to_go}


def _gap(result: Check) -> str | None:
    """How much the value must rise (gte, gt) or fall (lte, lt) to meet the threshold; None if met or unknown."""
    if result.met or result.value is None:
        return None
    distance = result.threshold - result.value if result.operator in ("gte", "gt") else result.value - result.threshold
    return display(distance)


def _decision_view(facts: Facts, programmes: ProgrammeSet, row: dict) -> dict:
    pinned_at = {pin["valid_from"]: pin for pin in facts.pins}
    how = _how(row, set(pinned_at))
    programme = _version(programmes, row["programme_id"], row["programme_version"]) \
        or programmes.for_moment(row["valid_from"])
    if row["details"] is not None:
        reasons, source = json.loads(row["details"]), "recorded"
    elif row["id"] in facts.recomputed:
        above = programme.tier_ids[programme.tier_ids.index(row["tier"]) + 1:][:1] \
            if row["tier"] in programme.tier_ids else []
        reasons = place(programme.model.tiers, facts.recomputed[row["id"]]).reasons(row["tier"], *above)
        source = "recomputed"
    else:
        reasons, source = [], "none"
    review = facts.reviews.get(row["review_id"]) if row["review_id"] else None
    pin = pinned_at.get(row["valid_from"]) if how == "pin" else None
    latest = facts.last_events.get(row["id"])
    return {
        "id": row["id"], "how": how, "tier": row["tier"], "from_tier": row["previous_tier"],
        "valid_from": row["valid_from"].isoformat(), "reason": row["reason"],
        "programme": {"id": row["programme_id"], "version": row["programme_version"]},
        "review": {"id": review["id"], "as_of": review["as_of"].isoformat(), "trigger": review["trigger"]}
        if review else ({"id": row["review_id"], "as_of": None, "trigger": None} if row["review_id"] else None),
        "pin": {"author": pin["author"], "reason": pin["reason"], "until": pin["until"].isoformat()} if pin else None,
        # An instant upgrade is measured at the end of the ingest batch that brought the client's activity.
        "latest_event": _event_view(facts, latest) if latest in facts.events else None,
        "reasons_source": source,
        "reasons": [{**verdict, "checks": [{**c, "text": _check_text(c, programme.currency)}
                                           for c in verdict["checks"]]} for verdict in reasons],
    }


def _entitlement_view(facts: Facts, programmes: ProgrammeSet, grant: dict) -> dict:
    followers = facts.followers.get(grant["id"], [])
    status, since = status_at(grant, followers, facts.at)
    rule_id = grant["rule_id"]
    detail = json.loads(grant["detail"]) if grant["detail"] else {}
    products = grant["products"].split(",") if grant["products"] else []
    view = {
        "id": grant["id"], "kind": grant["kind"], "use": grant["use"], "bps": grant["bps"] or None,
        "products": products, "detail": detail,
        "valid_from": grant["valid_from"].isoformat(),
        "valid_to": grant["valid_to"].isoformat() if grant["valid_to"] else None,
        "what": _what(grant["kind"], grant["bps"], products, detail, grant["use"]),
        "status": status, "status_since": since.isoformat() if since else None,
        "source": "tier" if rule_id.startswith(TIER_RULE_PREFIX) else
                  "redemption" if rule_id.startswith(REDEEM_RULE_PREFIX) else "rule",
        "rule_id": rule_id,
        "programme": {"id": grant["programme_id"], "version": grant["programme_version"]},
        "rule": None, "events": [], "redemption": None, "tier_decision": None,
        "history": _history(facts, grant, followers),
    }
    programme = _version(programmes, grant["programme_id"], grant["programme_version"])
    if view["source"] == "tier":
        tier_id = rule_id[len(TIER_RULE_PREFIX):]
        tier = _tier_of(programme, tier_id)
        name = tier.name if tier else tier_id
        view["rule"] = _rule_stub(rule_id, f"standing benefit of tier {name}", tier is not None)
        row = decision_row(facts.tier_rows, grant)
        view["tier_decision"] = _decision_view(facts, programmes, row) if row else None
    elif view["source"] == "redemption":
        view["redemption"] = _redemption_view(facts, programme, grant)
        name = view["redemption"]["name"]
        view["rule"] = _rule_stub(rule_id, f"catalogue reward: {name}" if name else None, name is not None)
    else:
        event = facts.events.get(grant["event_id"]) if grant["event_id"] else None
        view["rule"] = _rule_view(facts, programme, grant, event)
        view["events"] = [_event_view(facts, grant["event_id"])] if event else []
    return view


def _version(programmes: ProgrammeSet, programme_id: str | None, version: str | None) -> CompiledProgramme | None:
    """The loaded programme version that wrote an entry, or None when its rule file is not loaded any more."""
    return next((p for p in programmes.versions if p.id == programme_id and p.version == version), None)


def _tier_of(programme: CompiledProgramme | None, tier_id: str) -> Tier | None:
    return next((tier for tier in programme.model.tiers if tier.id == tier_id), None) if programme else None


def _what(kind: str, bps: int, products: list[str], detail: dict, use: str | None) -> str:
    """What an entitlement gives, in words."""
    gives = {
        "rate_discount": f"{bps} bps off the interest rate on {', '.join(products)}",
        "fast_track": f"fast-track approval: {detail.get('lane')} lane, {detail.get('sla_hours')} h SLA",
        "relationship_manager": "a dedicated relationship manager",
        "fee_waiver": f"{detail.get('fee_waiver_pct')}% fee waiver",
    }.get(kind, kind)
    return f"{gives} ({'single use: the next booked loan consumes it' if use == 'single' else 'standing'})"


def _rule_view(facts: Facts, programme: CompiledProgramme | None, grant: dict, event: dict | None) -> dict:
    rule_id = grant["rule_id"]
    rule = next((c.rule for c in programme.rules if c.rule.id == rule_id), None) if programme else None
    if rule is None:
        return _rule_stub(rule_id, None, False,
                          f"{grant['programme_id']} {grant['programme_version']} is not among the loaded rule files"
                          if programme is None else f"{programme.source} has no rule {rule_id}")
    return {**_rule_stub(rule.id, rule.description, True), "priority": rule.priority, "event_type": rule.when.event,
            "award": rule.award.model_dump(mode="json", exclude_none=True),
            "cap": rule.cap.model_dump(mode="json", exclude_none=True) if rule.cap else None,
            "conditions": rule_conditions(rule, programme, event["data"], _client_context(facts, programme, event))
            if event is not None else []}


def _rule_stub(rule_id: str, description: str | None, found: bool, note: str | None = None) -> dict:
    """What granted an entitlement, with the fields only a rule of the rule file has left empty."""
    return {"id": rule_id, "description": description, "found": found, "note": note, "priority": None,
            "event_type": None, "award": None, "cap": None, "conditions": []}


def _client_context(facts: Facts, programme: CompiledProgramme, event: dict) -> dict:
    """The client as rules saw it when the event occurred: tier then, segment, tenure."""
    tiers = [(row["valid_from"], row["tier"]) for row in facts.tier_rows]
    context = context_at(facts.client["client_id"], event["occurred_at"], tiers, programme.lowest_tier.id,
                         facts.onboardings, facts.client["first_seen_at"])
    return {"tier": context.tier, "segment": context.segment, "tenure_months": context.tenure_months}


def rule_conditions(rule: Rule, programme: CompiledProgramme, data: dict, client: dict) -> list[dict]:
    """Each condition of `rule` with the value the event (or the client then) had, and whether it holds."""
    currency = programme.currency
    types = programme.attribute_types(rule.when.event)
    checks = [item for name, condition in rule.when.where.items() for item in
              condition_checks("event", name, condition, types.get(name, "string"), data.get(name), currency)]
    conditions = rule.when.client
    if conditions.min_tier is not None:
        ids = programme.tier_ids
        tier = client["tier"]
        met = tier in ids and ids.index(tier) >= ids.index(conditions.min_tier)
        checks.append({"on": "client", "attribute": "tier", "operator": "min_tier", "expected": conditions.min_tier,
                       "value": tier, "met": met, "text": f"client tier {tier} ≥ {conditions.min_tier} (min_tier)"})
    for name, kind in (("tier", "enum"), ("segment", "enum"), ("tenure_months", "integer")):
        condition = getattr(conditions, name)
        if condition is not None:
            checks.extend(condition_checks("client", name, condition, kind, client[name], currency))
    return checks


def condition_checks(on: str, name: str, condition: Condition, attribute_type: str, value: object,
                     currency: str) -> list[dict]:
    """One check per operator of `condition` against `value` (None: the attribute is absent)."""
    label = f"client {name}" if on == "client" else name
    operators = condition.operators()
    checks = []
    for op in sorted(operators, key=list(_SYMBOLS).index):
        expected = operators[op]
        met = _holds(op, expected, value, attribute_type, currency)
        shown_expected = _shown(expected, attribute_type, currency, as_written=True)
        text = (f"{label} {'present' if value is not None else 'absent'} (exists: {str(expected).lower()})"
                if op == "exists" else
                f"{label} {_shown(value, attribute_type, currency)} {_SYMBOLS[op]} {shown_expected}")
        checks.append({"on": on, "attribute": name, "operator": op, "expected": _plain(expected),
                       "value": _plain(value), "met": met, "text": text})
    return checks


def _holds(op: str, expected: object, value: object, attribute_type: str, currency: str) -> bool:
    """The matching core's semantics: an absent attribute satisfies ne and not_in and fails every other test."""
    if op == "exists":
        return (value is not None) == bool(expected)
    if value is None:
        return op in ("ne", "not_in")
    actual = matching_value(attribute_type, value, currency)
    if op in ("in", "not_in"):
        members = {matching_value(attribute_type, item, currency) for item in expected}  # type: ignore[union-attr]
        return (actual in members) == (op == "in")
    limit = matching_value(attribute_type, expected, currency)
    return {"eq": actual == limit, "ne": actual != limit, "gt": actual > limit, "gte": actual >= limit,
            "lt": actual < limit, "lte": actual <= limit}[op]


def _shown(value: object, attribute_type: str, currency: str, as_written: bool = False) -> str:
    """A value for people: money with thousands separators (an event's amount with the currency's decimals,
    a rule's threshold as written), lists in brackets."""
    if value is None:
        return "(absent)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(item, attribute_type, currency, as_written) for item in value) + "]"
    if attribute_type == "money":
        amount = Decimal(str(value))
        return f"{amount:,}" if as_written else f"{amount:,.{minor_unit_exponent(currency)}f}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _plain(value: object) -> object:
    """A rule-file or event value as plain JSON text (lists stay lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return None if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _check_text(check_: dict, currency: str) -> str:
    """A metric check for people: `loan_volume 105,000,000.00 ≥ 100,000,000`."""
    value = _metric_text(check_["metric"], check_["value"], currency)
    threshold = check_["threshold"]
    if check_["metric"] in METRICS and METRICS[check_["metric"]].unit == "money":
        threshold = f"{Decimal(threshold):,}"
    return f"{check_['metric']} {value} {_SYMBOLS.get(check_['operator'], check_['operator'])} {threshold}"


def _metric_text(name: str, value: str | None, currency: str) -> str:
    if value is None:
        return "(no value)"
    if name in METRICS and METRICS[name].unit == "money":
        return f"{Decimal(value):,.{minor_unit_exponent(currency)}f}"
    return value


def _event_view(facts: Facts, event_id: str) -> dict:
    event = facts.events[event_id]
    reversal = facts.reversals.get(event_id)
    return {"id": event_id, "type": event["type"], "occurred_at": event["occurred_at"].isoformat(),
            "data": event["data"], "programme_version": event["programme_version"],
            "reversed": {"at": reversal["reversed_at"].isoformat(), "reason": reversal["reason"]} if reversal else None}


def _redemption_view(facts: Facts, programme: CompiledProgramme | None, grant: dict) -> dict:
    reward_id = grant["rule_id"][len(REDEEM_RULE_PREFIX):]
    # A redemption writes its spend just before its grant, at the same moment.
    spends = [entry for entry in facts.redemptions if entry["rule_id"] == grant["rule_id"]
              and entry["valid_from"] == grant["valid_from"] and entry["id"] < grant["id"]]
    spend = spends[-1] if spends else None
    reward = next((r for r in programme.model.catalogue if r.id == reward_id), None) if programme else None
    return {"reward": reward_id, "name": reward.name if reward else None,
            "points": -spend["points"] if spend else None, "entry_id": spend["id"] if spend else None,
            "redeemed_at": grant["valid_from"].isoformat()}


def _history(facts: Facts, grant: dict, followers: list[dict]) -> list[dict]:
    """The grant, every entry about the entitlement since (later than the moment asked about too) with what
    caused each, and its expiry if it had lapsed by that moment: in order of time, then of entry id."""
    source = (f"rule {grant['rule_id']}" + (f" for event {grant['event_id']}" if grant["event_id"] else "")
              + f" ({grant['programme_id']} {grant['programme_version']})")
    history = [{"entry_id": grant["id"], "at": grant["valid_from"].isoformat(), "action": "granted",
                "text": f"granted by {source}"}]
    moments = [grant["valid_from"]]
    moves = {row["valid_from"]: row for row in facts.tier_rows}
    for entry in followers:
        reason = Reason(entry["reason"])
        detail = json.loads(entry["detail"]) if entry["detail"] else {}
        item = {"entry_id": entry["id"], "at": _moment(entry).isoformat(), "action": _ENDED_BY.get(reason, str(reason))}
        if reason == Reason.CONSUME:
            loan = f" (loan {detail['loan_id']})" if detail.get("loan_id") else ""
            item["text"] = f"consumed by quote {detail.get('quote_id', '?')}{loan}"
        elif reason == Reason.REVOKE:
            move = moves.get(entry["valid_from"])
            item["text"] = (f"revoked by the tier move {move['previous_tier']} → {move['tier']} ({move['reason']})"
                            + (f", review {move['review_id']}" if move["review_id"] else "")) if move else "revoked"
        elif reason == Reason.REVERSE:
            why = facts.reversals.get(entry["event_id"], {}).get("reason") if entry["event_id"] else None
            item["text"] = f"reversed with event {entry['event_id']}" + (f": {why}" if why else "")
        else:
            item["text"] = str(reason)
        history.append(item)
        moments.append(_moment(entry))
    status, since = status_at(grant, followers, facts.at)
    if status == EXPIRED:
        history.append({"entry_id": None, "at": since.isoformat(), "action": "expired",  # type: ignore[union-attr]
                        "text": "validity ended (no entry: it lapses by itself)"})
        moments.append(since)  # type: ignore[arg-type]
    # Entry order is not time order: a reversal is dated when it was written, possibly after the lapse (which has
    # no entry). On a tie an entry goes before the lapse, as status_at lets the entry decide the status.
    order = sorted(range(len(history)), key=lambda i: (moments[i], history[i]["entry_id"] is None,
                                                        history[i]["entry_id"] or 0))
    return [history[i] for i in order]


def _points_view(rows: list[dict]) -> dict:
    """The balance as of the moment, split into what was earned by each rule and what took points away."""
    def total(reason: Reason) -> int:
        return sum(row["points"] for row in rows if row["reason"] == reason)

    return {
        "balance": sum(row["points"] for row in rows),
        "earned": total(Reason.EARN),
        "earned_by_rule": [{"rule_id": row["rule_id"], "points": row["points"], "entries": row["entries"]}
                           for row in rows if row["reason"] == Reason.EARN],
        "redeemed": total(Reason.REDEEM),
        "redeemed_by_reward": [{"reward": (row["rule_id"] or "").removeprefix(REDEEM_RULE_PREFIX),
                                "points": row["points"], "entries": row["entries"]}
                               for row in rows if row["reason"] == Reason.REDEEM],
        "expired": total(Reason.EXPIRE), "reversed": total(Reason.REVERSE), "adjusted": total(Reason.ADJUST),
    }
