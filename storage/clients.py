"""Client rows, tier history and processed-event records: the reads and writes ingest needs, in bulk."""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, insert, select, union_all, update

from engine.context import ONBOARDING_EVENT
from rewards import notices
from rewards.kinds import Reason
from storage import outbox
from storage.bulk import insert_rows
from storage.types import as_utc
from storage.models import Client, ClientMonth, EventReversal, LedgerEntry, ProcessedEvent, TierAssignment

CLIENT = Client.__table__
TIER = TierAssignment.__table__
PROCESSED = ProcessedEvent.__table__
REVERSAL = EventReversal.__table__
ENTRY = LedgerEntry.__table__
MONTH = ClientMonth.__table__


@dataclass
class ClientRecord:
    """A client's profile as ingest works with it."""

    client_id: str
    first_seen_at: datetime
    name: str | None = None
    segment: str | None = None
    industry: str | None = None
    onboarded_at: datetime | None = None


def lock_clients(conn: Connection, client_ids: list[str]) -> dict[str, ClientRecord]:
    """Existing clients among `client_ids`, locked for update in id order (so writers never deadlock)."""
    if not client_ids:
        return {}
    query = select(CLIENT.c.client_id, CLIENT.c.first_seen_at, CLIENT.c.name, CLIENT.c.segment,
                   CLIENT.c.industry, CLIENT.c.onboarded_at) \
        .where(CLIENT.c.client_id.in_(sorted(client_ids))).order_by(CLIENT.c.client_id)
    if conn.dialect.name != "sqlite":  # SQLite's write lock already serialises writers
        query = query.with_for_update()
    return {row.client_id: ClientRecord(*row) for row in conn.execute(query)}


def insert_clients(conn: Connection, records: list[ClientRecord], created_at: datetime) -> None:
    """Create new clients with a zero balance."""
    if records:
        conn.execute(insert(CLIENT), [{**vars(r), "points_balance": 0, "created_at": created_at} for r in records])


def update_profiles(conn: Connection, records: list[ClientRecord]) -> None:
    """Store the latest profile (name, segment, industry, onboarding time, first event time)."""
    if records:
        conn.execute(update(CLIENT).where(CLIENT.c.client_id == bindparam("cid")).values(
            name=bindparam("p_name"), segment=bindparam("p_segment"), industry=bindparam("p_industry"),
            onboarded_at=bindparam("p_onboarded_at"), first_seen_at=bindparam("p_first_seen_at")),
            [{"cid": r.client_id, "p_name": r.name, "p_segment": r.segment, "p_industry": r.industry,
              "p_onboarded_at": r.onboarded_at, "p_first_seen_at": r.first_seen_at} for r in records])


def onboarding_histories(conn: Connection, client_ids: list[str]) -> dict[str, list[tuple[datetime, str | None]]]:
    """(occurred_at, segment) of each client's onboarding events that were not reversed, oldest first."""
    histories: dict[str, list[tuple[datetime, str | None]]] = defaultdict(list)
    if client_ids:
        query = select(PROCESSED.c.client_id, PROCESSED.c.occurred_at, PROCESSED.c.payload).where(
            PROCESSED.c.client_id.in_(client_ids), PROCESSED.c.type == ONBOARDING_EVENT,
            PROCESSED.c.event_id.not_in(select(REVERSAL.c.event_id))).order_by(PROCESSED.c.occurred_at)
        for row in conn.execute(query):
            histories[row.client_id].append((row.occurred_at, json.loads(row.payload)["data"].get("segment")))
    return histories


def tier_histories(conn: Connection, client_ids: list[str]) -> dict[str, list[tuple[datetime, str]]]:
    """(valid_from, tier) pairs per client, oldest first."""
    histories: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    if client_ids:
        query = select(TIER.c.client_id, TIER.c.valid_from, TIER.c.tier) \
            .where(TIER.c.client_id.in_(client_ids)).order_by(TIER.c.client_id, TIER.c.valid_from, TIER.c.id)
        for row in conn.execute(query):
            histories[row.client_id].append((row.valid_from, row.tier))
    return histories


def insert_tier_assignments(conn: Connection, rows: list[dict]) -> None:
    """Append tier-history rows, with a tier.changed notice for each that moves a client (a row with a
    previous tier carries the move's `direction`, up or down, for the notice; the table does not keep it)."""
    if not rows:
        return
    moves = [row for row in rows if row.get("previous_tier") is not None]
    outbox.record(conn, [notices.tier_changed(row) for row in moves], rows[0]["created_at"])
    conn.execute(insert(TIER), [{key: value for key, value in row.items() if key != "direction"} for row in rows])


def latest_event_moment(conn: Connection) -> datetime | None:
    """The latest `occurred_at` of any event already applied."""
    return conn.execute(select(func.max(PROCESSED.c.occurred_at))).scalar()


def processed_hashes(conn: Connection, event_ids: list[str]) -> dict[str, str]:
    """Content hash of each already-processed event among `event_ids`."""
    if not event_ids:
        return {}
    query = select(PROCESSED.c.event_id, PROCESSED.c.content_hash).where(PROCESSED.c.event_id.in_(event_ids))
    return dict(conn.execute(query).all())


def insert_processed(conn: Connection, rows: list[dict]) -> None:
    """Record events as processed (fails on a duplicate id: the caller retries the batch)."""
    insert_rows(conn, PROCESSED, rows)


def cap_history(conn: Connection, client_ids: list[str],
                since_by_rule: dict[str, datetime | None]) -> list[tuple[str, str, datetime, int, str]]:
    """(client, rule, valid_from, points, event) of earn and grant entries of capped rules, not reversed.

    `since_by_rule` gives, per rule, the earliest time that matters (None: the whole history).
    """
    if not client_ids or not since_by_rule:
        return []
    # One indexed range per rule (client, rule, time), glued with UNION ALL: an OR of the ranges would
    # make SQLite read every entry of the batch's clients, which grows with the ledger.
    not_reversed = ENTRY.c.event_id.not_in(select(REVERSAL.c.event_id))
    columns = (ENTRY.c.client_id, ENTRY.c.rule_id, ENTRY.c.valid_from, ENTRY.c.points, ENTRY.c.event_id)
    parts = []
    for rule_id, since in sorted(since_by_rule.items()):
        conditions = [ENTRY.c.client_id.in_(client_ids), ENTRY.c.rule_id == rule_id,
                      ENTRY.c.reason.in_([Reason.EARN, Reason.GRANT]), not_reversed]
        if since is not None:
            conditions.append(ENTRY.c.valid_from >= since)
        parts.append(select(*columns).where(*conditions))
    query = union_all(*parts) if len(parts) > 1 else parts[0]
    return [tuple(row) for row in conn.execute(query)]


@dataclass(frozen=True)
class TierInForce:
    """A client's tier at a moment: which, since when, decided by which review (None: a new client's
    first tier), and whether a later decision already exists."""

    tier: str | None  # None: the client did not exist yet at that moment
    since: datetime | None
    review_id: str | None
    decided_later: bool
    previous_tier: str | None = None


def tiers_as_of(conn: Connection, as_of: datetime, client_ids: list[str] | None = None) -> dict[str, TierInForce]:
    """Per client, the tier in force at `as_of`."""
    query = select(TIER.c.client_id, TIER.c.tier, TIER.c.valid_from, TIER.c.review_id, TIER.c.previous_tier) \
        .order_by(TIER.c.client_id, TIER.c.valid_from)
    if client_ids is not None:
        query = query.where(TIER.c.client_id.in_(client_ids))
    return fold_tiers(conn.execute(query), as_of)


def fold_tiers(rows: Iterable, as_of: datetime) -> dict[str, TierInForce]:
    """Per client, the tier in force at `as_of`, from its tier-history rows in (client, valid_from) order."""
    result: dict[str, TierInForce] = {}
    for row in rows:
        known = result.get(row.client_id, TierInForce(None, None, None, False))
        if row.valid_from <= as_of:
            result[row.client_id] = TierInForce(row.tier, row.valid_from, row.review_id, False, row.previous_tier)
        else:
            result[row.client_id] = replace(known, decided_later=True)
    return result


def last_activity(conn: Connection, client_ids: list[str] | None = None) -> dict[str, datetime]:
    """The time of each client's latest applied event that was not reversed (from its monthly totals)."""
    query = select(MONTH.c.client_id, func.max(MONTH.c.last_event_at)).where(MONTH.c.last_event_at.is_not(None)) \
        .group_by(MONTH.c.client_id)
    if client_ids is not None:
        query = query.where(MONTH.c.client_id.in_(client_ids))
    return {client_id: as_utc(latest) for client_id, latest in conn.execute(query)}
