"""The append-only ledger: writing entries with their projections, reading them, and verifying both agree."""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import groupby
from datetime import datetime

from sqlalchemy import Connection, and_, bindparam, case, func, insert, select, update

from rewards import notices
from rewards.kinds import Grant, Kind, Reason, Status, Use
from rewards.stacking import Entitlement
from rewards.tiers import TIER_RULE_PREFIX, tier_rule_id
from storage import lots, outbox
from storage.bulk import insert_rows
from storage.types import UTCDateTime
from storage.models import Client, Entitlement as EntitlementRow, EventReversal, LedgerEntry, ProcessedEvent, TierAssignment

ENTRY = LedgerEntry.__table__
ENTITLEMENT = EntitlementRow.__table__
CLIENT = Client.__table__
PROCESSED = ProcessedEvent.__table__
REVERSAL = EventReversal.__table__


@dataclass(frozen=True)
class Provenance:
    """Where entries come from: the rule-file version and the event (None for tier changes)."""

    programme_id: str
    programme_version: str
    event_id: str | None


def points_entry(client_id: str, rule_id: str, points: int, reason: Reason, at: datetime, source: Provenance,
                 created_at: datetime, detail: dict | None = None) -> dict:
    """A row for a points entry (signed points)."""
    return _row(client_id, Kind.POINTS, reason, source, created_at, rule_id=rule_id, points=points,
                valid_from=at, detail=detail)


def grant_entry(client_id: str, grant: Grant, source: Provenance, created_at: datetime) -> dict:
    """A row for a grant entry; the entitlement it creates takes this entry's id."""
    return _row(client_id, grant.kind, Reason.GRANT, source, created_at, rule_id=grant.rule_id, bps=grant.bps,
                products=",".join(grant.products) or None, detail=grant.detail or None, use=grant.use,
                valid_from=grant.valid_from, valid_to=grant.valid_to)


def _row(client_id: str, kind: Kind, reason: Reason, source: Provenance, created_at: datetime, *,
         rule_id: str | None, points: int = 0, bps: int = 0, products: str | None = None,
         detail: dict | None = None, use: Use | None = None, valid_from: datetime,
         valid_to: datetime | None = None, entitlement_id: int | None = None,
         reverses_entry_id: int | None = None) -> dict:
    return {
        "client_id": client_id, "kind": str(kind), "reason": str(reason), "points": points, "bps": bps,
        "products": products, "detail": json.dumps(detail, sort_keys=True) if detail else None,
        "use": str(use) if use else None, "rule_id": rule_id, "programme_id": source.programme_id,
        "programme_version": source.programme_version, "event_id": source.event_id,
        "entitlement_id": entitlement_id, "reverses_entry_id": reverses_entry_id,
        "valid_from": valid_from, "valid_to": valid_to, "created_at": created_at,
    }


def revoke_entry(entitlement: dict, source: Provenance, at: datetime, created_at: datetime) -> dict:
    """An entry ending a granted entitlement (a row of the entitlement table) from `at`."""
    return _row(entitlement["client_id"], Kind(entitlement["kind"]), Reason.REVOKE, source, created_at,
                rule_id=entitlement["rule_id"], bps=-entitlement["bps"], products=entitlement["products"],
                detail=json.loads(entitlement["detail"]) if entitlement["detail"] else None,
                use=Use(entitlement["use"]), valid_from=at, entitlement_id=entitlement["id"])


def consume_entry(entitlement: Entitlement, at: datetime, created_at: datetime, detail: dict) -> dict:
    """An entry using up a single-use entitlement at `at` (a booked loan); `detail` says which."""
    source = Provenance(entitlement.programme_id, entitlement.programme_version, None)
    return _row(entitlement.client_id, entitlement.kind, Reason.CONSUME, source, created_at,
                rule_id=entitlement.rule_id, bps=-entitlement.bps, products=",".join(entitlement.products) or None,
                detail={**entitlement.detail, **detail}, use=entitlement.use, valid_from=at,
                entitlement_id=entitlement.id)


def active_entitlements_by_rule_prefix(conn: Connection, client_ids: list[str], prefix: str) -> dict[str, list[dict]]:
    """Active entitlement rows of `client_ids` granted under rules whose id starts with `prefix`, per client."""
    query = select(ENTITLEMENT).where(ENTITLEMENT.c.client_id.in_(client_ids), ENTITLEMENT.c.rule_id.startswith(prefix),
                                      ENTITLEMENT.c.status == Status.ACTIVE).order_by(ENTITLEMENT.c.id)
    held: dict[str, list[dict]] = defaultdict(list)
    for row in conn.execute(query):
        held[row.client_id].append(dict(row._mapping))
    return held


def compensating_entry(original: dict, reason: Reason, created_at: datetime, event_id: str | None) -> dict:
    """An entry that cancels `original` (a row of ledger_entry) and points to it."""
    is_grant = original["reason"] == Reason.GRANT
    return {
        **{key: original[key] for key in ("client_id", "kind", "products", "detail", "use", "rule_id",
                                         "programme_id", "programme_version", "valid_from", "valid_to")},
        "reason": str(reason), "points": -original["points"], "bps": -original["bps"], "event_id": event_id,
        "entitlement_id": original["id"] if is_grant else original["entitlement_id"],
        "reverses_entry_id": original["id"], "created_at": created_at,
    }


def append(conn: Connection, rows: list[dict]) -> list[int]:
    """Insert entries and their projections (entitlements, points balances, points lots) in the caller's
    transaction; NegativeBalanceError if the points entries would take a balance below zero.

    Entries get ids in the order of `rows`. Returns the ids of the grant entries (the entitlements
    they create), in order.
    """
    grant_ids: list[int] = []
    entitlements: list[dict] = []
    announced = []
    for is_grant, run in groupby(rows, key=lambda row: row["reason"] == Reason.GRANT):
        run = list(run)
        if is_grant:
            # Only grants need their ids back: asking for ids makes SQLite insert row by row, so the
            # (far more numerous) other entries go in one plain executemany.
            result = conn.execute(insert(ENTRY).returning(ENTRY.c.id, sort_by_parameter_order=True), run)
            ids = [row[0] for row in result]
            grant_ids.extend(ids)
            entitlements.extend(_entitlement_row(entry_id, row) for entry_id, row in zip(ids, run, strict=True))
            announced.extend(notices.from_entry(row, entry_id) for entry_id, row in zip(ids, run, strict=True))
        else:
            insert_rows(conn, ENTRY, run)
            announced.extend(notices.from_entry(row, None) for row in run if row["reason"] not in _UNANNOUNCED)
    insert_rows(conn, ENTITLEMENT, entitlements)
    if rows:
        outbox.record(conn, announced, rows[0]["created_at"])
    _apply_points(conn, rows)
    lots.record(conn, rows)
    followers = [(row, _status_after(row["reason"])) for row in rows if row["entitlement_id"] is not None]
    # One statement per run of equal statuses, in order (a review revokes tens of thousands at once).
    for status, run in groupby([pair for pair in followers if pair[1] is not None], key=lambda pair: pair[1]):
        conn.execute(_STATUS_UPDATES[status == Status.REVOKED],
                     [{"eid": row["entitlement_id"], "new_status": str(status), "revoked_at": row["valid_from"]}
                      for row, _ in run])
    return grant_ids


# Points earned and adjusted are nobody's news (the balance is there to read): no notice, no work.
_UNANNOUNCED = frozenset({Reason.EARN, Reason.ADJUST})
_REVOKED_AT = bindparam("revoked_at", type_=UTCDateTime())
# A revoked entitlement was held until the revocation's moment (or its own end, if earlier): not erased from the past.
_STATUS_UPDATES = {
    False: update(ENTITLEMENT).where(ENTITLEMENT.c.id == bindparam("eid")).values(status=bindparam("new_status")),
    True: update(ENTITLEMENT).where(ENTITLEMENT.c.id == bindparam("eid")).values(
        status=bindparam("new_status"),
        valid_to=case((and_(ENTITLEMENT.c.valid_to.is_not(None), ENTITLEMENT.c.valid_to < _REVOKED_AT),
                       ENTITLEMENT.c.valid_to), else_=_REVOKED_AT)),
}


def _status_after(reason: str) -> str | None:
    return {Reason.CONSUME: Status.CONSUMED, Reason.REVOKE: Status.REVOKED,
            Reason.REVERSE: Status.REVERSED}.get(Reason(reason))


def _entitlement_row(entry_id: int, row: dict) -> dict:
    return {"id": entry_id, "client_id": row["client_id"], "kind": row["kind"], "use": row["use"],
            "bps": row["bps"], "products": row["products"], "detail": row["detail"],
            "valid_from": row["valid_from"], "valid_to": row["valid_to"], "status": str(Status.ACTIVE),
            "rule_id": row["rule_id"], "programme_id": row["programme_id"],
            "programme_version": row["programme_version"], "event_id": row["event_id"]}


def _apply_points(conn: Connection, rows: Iterable[dict]) -> None:
    deltas: dict[str, int] = defaultdict(int)
    for row in rows:
        if row["points"]:
            deltas[row["client_id"]] += row["points"]
    if deltas:
        conn.execute(update(CLIENT).where(CLIENT.c.client_id == bindparam("cid"))
                     .values(points_balance=CLIENT.c.points_balance + bindparam("delta")),
                     [{"cid": cid, "delta": delta} for cid, delta in deltas.items()])


# --- reading -------------------------------------------------------------------------------------------

def client_entries(conn: Connection, client_id: str, limit: int | None = None, before_id: int | None = None) -> list[dict]:
    """Entries of a client, newest first; with `before_id`, only those older than that entry (for paging)."""
    query = select(ENTRY).where(ENTRY.c.client_id == client_id).order_by(ENTRY.c.id.desc())
    if before_id is not None:
        query = query.where(ENTRY.c.id < before_id)
    if limit is not None:
        query = query.limit(limit)
    return [entry_view(dict(row._mapping)) for row in conn.execute(query)]


def event_entries(conn: Connection, event_id: str) -> list[dict]:
    """Entries written because of an event (raw rows, oldest first)."""
    query = select(ENTRY).where(ENTRY.c.event_id == event_id).order_by(ENTRY.c.id)
    return [dict(row._mapping) for row in conn.execute(query)]


def entry_view(row: dict) -> dict:
    """An entry as users see it: products as a list, detail as an object, timestamps as ISO text."""
    view = dict(row)
    view["products"] = row["products"].split(",") if row["products"] else []
    view["detail"] = json.loads(row["detail"]) if row["detail"] else {}
    for key in ("valid_from", "valid_to", "created_at"):
        view[key] = row[key].isoformat() if row[key] else None
    return view


HELD_STATUSES = (Status.ACTIVE, Status.REVOKED)  # a revoked entitlement was held until its revocation


# Built once: the benefits query runs it for every request.
_HELD_BY_CLIENT = select(ENTITLEMENT).where(ENTITLEMENT.c.client_id == bindparam("client_id"),
                                            ENTITLEMENT.c.status.in_(HELD_STATUSES)).order_by(ENTITLEMENT.c.id)


def held_entitlements(conn: Connection, client_id: str) -> list[Entitlement]:
    """The client's active and revoked entitlements (the caller applies validity windows at its moment)."""
    return [to_entitlement(row._mapping) for row in conn.execute(_HELD_BY_CLIENT, {"client_id": client_id})]


def held_entitlements_of_all(conn: Connection) -> dict[str, list[Entitlement]]:
    """Every active and revoked entitlement, per client."""
    held: dict[str, list[Entitlement]] = defaultdict(list)
    query = select(ENTITLEMENT).where(ENTITLEMENT.c.status.in_(HELD_STATUSES)).order_by(ENTITLEMENT.c.id)
    for row in conn.execute(query):
        held[row.client_id].append(to_entitlement(dict(row._mapping)))
    return held


def to_entitlement(row: Mapping) -> Entitlement:
    """Domain view of an entitlement row."""
    return Entitlement(
        id=row["id"], client_id=row["client_id"], kind=Kind(row["kind"]), use=Use(row["use"]), bps=row["bps"],
        products=tuple(row["products"].split(",")) if row["products"] else (),
        detail=json.loads(row["detail"]) if row["detail"] else {}, valid_from=row["valid_from"],
        valid_to=row["valid_to"], status=Status(row["status"]), rule_id=row["rule_id"],
        programme_id=row["programme_id"], programme_version=row["programme_version"], event_id=row["event_id"])


# --- verification --------------------------------------------------------------------------------------

def verify(conn: Connection) -> list[str]:
    """Recompute balances and entitlements from the entries; return every mismatch found (empty: consistent)."""
    problems: list[str] = []
    sums = dict(conn.execute(select(ENTRY.c.client_id, func.sum(ENTRY.c.points)).group_by(ENTRY.c.client_id)).all())
    for client_id, balance in conn.execute(select(CLIENT.c.client_id, CLIENT.c.points_balance)):
        expected = int(sums.pop(client_id, 0) or 0)
        if balance != expected:
            problems.append(f"client {client_id}: points balance {balance} but entries sum to {expected}")
    for client_id in sums:
        problems.append(f"entries name client {client_id}, which does not exist")

    original = ENTRY.alias("original")
    reversals = select(ENTRY.c.id, ENTRY.c.reverses_entry_id, ENTRY.c.points, ENTRY.c.bps, ENTRY.c.client_id,
                       ENTRY.c.kind, ENTRY.c.rule_id, ENTRY.c.entitlement_id,
                       original.c.id.label("found"), original.c.points.label("o_points"),
                       original.c.bps.label("o_bps"), original.c.client_id.label("o_client"),
                       original.c.kind.label("o_kind"), original.c.rule_id.label("o_rule"),
                       original.c.reason.label("o_reason"), original.c.entitlement_id.label("o_entitlement")) \
        .join(original, original.c.id == ENTRY.c.reverses_entry_id, isouter=True) \
        .where(ENTRY.c.reverses_entry_id.is_not(None))
    for row in conn.execute(reversals):
        if row.found is None:
            problems.append(f"entry {row.id} reverses entry {row.reverses_entry_id}, which does not exist")
            continue
        expected_entitlement = row.found if row.o_reason == Reason.GRANT else row.o_entitlement
        if (row.o_points, row.o_bps, row.o_client, row.o_kind, row.o_rule, expected_entitlement) != \
                (-row.points, -row.bps, row.client_id, row.kind, row.rule_id, row.entitlement_id):
            problems.append(f"entry {row.id} does not exactly cancel entry {row.reverses_entry_id}")
    # NOT EXISTS, not NOT IN: PostgreSQL turns a NOT IN over millions of events into a nested loop.
    orphans = select(ENTRY.c.id, ENTRY.c.event_id).where(
        ENTRY.c.event_id.is_not(None), ~select(PROCESSED.c.event_id).where(
            PROCESSED.c.event_id == ENTRY.c.event_id).exists())
    for row in conn.execute(orphans):
        problems.append(f"entry {row.id} names event {row.event_id}, which was never processed")
    unrecorded = select(ENTRY.c.id, ENTRY.c.event_id).where(
        ENTRY.c.reason == Reason.REVERSE, ENTRY.c.event_id.not_in(select(REVERSAL.c.event_id)))
    for row in conn.execute(unrecorded):
        problems.append(f"entry {row.id} reverses event {row.event_id}, but no reversal of it is recorded")

    grants = {row.id: dict(row._mapping) for row in conn.execute(select(ENTRY).where(ENTRY.c.reason == Reason.GRANT))}
    expected_status: dict[int, str] = dict.fromkeys(grants, Status.ACTIVE)
    expected_end = {entitlement_id: grant["valid_to"] for entitlement_id, grant in grants.items()}
    followers = select(ENTRY.c.id, ENTRY.c.entitlement_id, ENTRY.c.reason, ENTRY.c.valid_from) \
        .where(ENTRY.c.entitlement_id.is_not(None)).order_by(ENTRY.c.id)
    for row in conn.execute(followers):
        if row.entitlement_id not in grants:
            problems.append(f"entry {row.id} names entitlement {row.entitlement_id}, which was never granted")
        elif _status_after(row.reason):
            expected_status[row.entitlement_id] = _status_after(row.reason)  # type: ignore[assignment]
            end = expected_end[row.entitlement_id]
            if row.reason == Reason.REVOKE and (end is None or row.valid_from < end):
                expected_end[row.entitlement_id] = row.valid_from
    rows = {row.id: dict(row._mapping) for row in conn.execute(select(ENTITLEMENT))}
    for entitlement_id, status in expected_status.items():
        row = rows.pop(entitlement_id, None)
        grant = grants[entitlement_id]
        if row is None:
            problems.append(f"entitlement {entitlement_id} was granted but is missing from the entitlement table")
            continue
        if row["status"] != status:
            problems.append(f"entitlement {entitlement_id}: status {row['status']} but entries say {status}")
        if row["valid_to"] != expected_end[entitlement_id]:
            problems.append(f"entitlement {entitlement_id}: valid_to is {row['valid_to']} but its entries say "
                            f"{expected_end[entitlement_id]}")
        for key in ("client_id", "kind", "use", "bps", "products", "detail", "valid_from", "rule_id",
                    "programme_id", "programme_version", "event_id"):
            if row[key] != grant[key]:
                problems.append(f"entitlement {entitlement_id}: {key} is {row[key]!r} but its grant says {grant[key]!r}")
    for entitlement_id in rows:
        problems.append(f"entitlement {entitlement_id} has no grant entry")
    problems.extend(_standing_benefit_problems(conn))
    problems.extend(lots.verify(conn))
    return problems


def _standing_benefit_problems(conn: Connection) -> list[str]:
    """Every active standing tier benefit must belong to the client's latest tier."""
    tiers = TierAssignment.__table__
    latest: dict[str, str] = {}
    for row in conn.execute(select(tiers.c.client_id, tiers.c.tier).order_by(tiers.c.client_id, tiers.c.valid_from)):
        latest[row.client_id] = row.tier
    query = select(ENTITLEMENT.c.id, ENTITLEMENT.c.client_id, ENTITLEMENT.c.rule_id).where(
        ENTITLEMENT.c.rule_id.startswith(TIER_RULE_PREFIX), ENTITLEMENT.c.status == Status.ACTIVE)
    return [f"entitlement {row.id} ({row.rule_id}) is active but client {row.client_id} is in tier "
            f"{latest.get(row.client_id)}" for row in conn.execute(query)
            if row.rule_id != tier_rule_id(latest.get(row.client_id, ""))]
