"""Webhook subscriptions, deliveries and their attempts: every statement the webhook service and the
dispatcher run. Callers own the transaction (`storage.db.write_transaction` / `read_snapshot`)."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from storage.models import OutboxEvent, WebhookAttempt, WebhookDelivery, WebhookSubscription

SUBSCRIPTION = WebhookSubscription.__table__
DELIVERY = WebhookDelivery.__table__
ATTEMPT = WebhookAttempt.__table__
OUTBOX = OutboxEvent.__table__
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
ALL_TYPES = "*"
# pg_try_advisory_xact_lock's key: "loyalty outbox routing". One router at a time (see `route`).
_ROUTING_LOCK = 0x10A1_0B0E
_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


# Subscriptions

def insert_subscription(conn: Connection, row: dict) -> None:
    """Add a subscription (`row` has every column)."""
    conn.execute(insert(SUBSCRIPTION).values(**row))


def subscriptions(conn: Connection, subscription_id: str | None = None) -> list[dict]:
    """Subscriptions (one, if `subscription_id` is given), oldest first, with their pending and failed counts."""
    counts = (select(DELIVERY.c.subscription_id,
                     func.count().filter(DELIVERY.c.status == PENDING).label("pending"),
                     func.count().filter(DELIVERY.c.status == FAILED).label("failed"))
              .group_by(DELIVERY.c.subscription_id).subquery())
    query = (select(SUBSCRIPTION, func.coalesce(counts.c.pending, 0).label("pending"),
                    func.coalesce(counts.c.failed, 0).label("failed"))
             .outerjoin(counts, counts.c.subscription_id == SUBSCRIPTION.c.id)
             .order_by(SUBSCRIPTION.c.created_at, SUBSCRIPTION.c.id))
    if subscription_id is not None:
        query = query.where(SUBSCRIPTION.c.id == subscription_id)
    return [dict(row._mapping) for row in conn.execute(query)]


def delete_subscription(conn: Connection, subscription_id: str) -> bool:
    """Delete a subscription with its deliveries and their attempts; False if there was none."""
    ids = select(DELIVERY.c.id).where(DELIVERY.c.subscription_id == subscription_id)
    conn.execute(delete(ATTEMPT).where(ATTEMPT.c.delivery_id.in_(ids)))
    conn.execute(delete(DELIVERY).where(DELIVERY.c.subscription_id == subscription_id))
    return conn.execute(delete(SUBSCRIPTION).where(SUBSCRIPTION.c.id == subscription_id)).rowcount > 0


def disable(conn: Connection, subscription_id: str, at: datetime, reason: str) -> bool:
    """Disable a subscription if it is enabled (False if it was not): its deliveries wait until it is enabled."""
    return conn.execute(update(SUBSCRIPTION).where(SUBSCRIPTION.c.id == subscription_id,
                                            SUBSCRIPTION.c.disabled_at.is_(None))
                 .values(disabled_at=at, disabled_reason=reason[:1000])).rowcount > 0


def enable(conn: Connection, subscription_id: str, now: datetime) -> bool:
    """Enable a subscription, its failure streak forgotten and its pending deliveries due at once; False if
    there is none."""
    done = conn.execute(update(SUBSCRIPTION).where(SUBSCRIPTION.c.id == subscription_id)
                        .values(disabled_at=None, disabled_reason=None, failing_since=None)).rowcount > 0
    conn.execute(update(DELIVERY).where(DELIVERY.c.subscription_id == subscription_id, DELIVERY.c.status == PENDING)
                 .values(next_attempt_at=now, first_attempt_at=None))
    return done


def note_success(conn: Connection, subscription_id: str) -> None:
    """An attempt to the subscription succeeded: its failure streak ends."""
    conn.execute(update(SUBSCRIPTION).where(SUBSCRIPTION.c.id == subscription_id,
                                            SUBSCRIPTION.c.failing_since.is_not(None)).values(failing_since=None))


def note_failure(conn: Connection, subscription_id: str, now: datetime) -> datetime:
    """An attempt to the subscription failed: since when it has been failing (now, if this starts a streak)."""
    conn.execute(update(SUBSCRIPTION).where(SUBSCRIPTION.c.id == subscription_id,
                                            SUBSCRIPTION.c.failing_since.is_(None)).values(failing_since=now))
    return conn.execute(select(SUBSCRIPTION.c.failing_since).where(SUBSCRIPTION.c.id == subscription_id)).scalar_one()


# Routing: outbox records to deliveries

def route(conn: Connection, now: datetime, limit: int) -> int | None:
    """Give up to `limit` unrouted outbox records, oldest first, a delivery to each subscription whose types
    match, and mark them routed, all in the caller's transaction: the number routed, or None when another
    dispatcher is routing right now (PostgreSQL).

    One router at a time, by design: with two, one could commit a client's later record while the other
    still holds its earlier one, and the later would be sent first. On SQLite the write transaction already
    serialises; on PostgreSQL a transaction-scoped advisory lock does, taken without waiting."""
    if conn.dialect.name == "postgresql" and not conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _ROUTING_LOCK}).scalar_one():
        return None
    records = conn.execute(select(OUTBOX.c.seq, OUTBOX.c.type, OUTBOX.c.client_id)
                           .where(OUTBOX.c.routed_at.is_(None)).order_by(OUTBOX.c.seq).limit(limit)).all()
    if not records:
        return 0
    subs = conn.execute(select(SUBSCRIPTION.c.id, SUBSCRIPTION.c.event_types)).all()
    wanted = [(sub.id, set(sub.event_types.split())) for sub in subs]
    rows = [{"subscription_id": sub_id, "outbox_seq": record.seq, "order_key": record.client_id or "",
             "type": record.type, "status": PENDING, "attempts": 0, "next_attempt_at": now, "created_at": now}
            for record in records for sub_id, types in wanted if ALL_TYPES in types or record.type in types]
    if rows:
        statement = _INSERT[conn.dialect.name](DELIVERY).on_conflict_do_nothing(
            index_elements=[DELIVERY.c.subscription_id, DELIVERY.c.outbox_seq])
        conn.execute(statement, rows)
    conn.execute(update(OUTBOX).where(OUTBOX.c.seq.in_([record.seq for record in records])).values(routed_at=now))
    return len(records)


def has_unrouted(conn: Connection) -> bool:
    """Whether any outbox record waits to be routed (a read on the partial index: no lock taken)."""
    return conn.execute(select(OUTBOX.c.seq).where(OUTBOX.c.routed_at.is_(None)).limit(1)).first() is not None


def has_due(conn: Connection, now: datetime) -> bool:
    """Whether any pending delivery's time has come (a read on the partial index: no lock taken)."""
    return conn.execute(select(DELIVERY.c.id).where(DELIVERY.c.status == PENDING, DELIVERY.c.next_attempt_at <= now)
                        .limit(1)).first() is not None


# Claiming and finishing deliveries

def claim(conn: Connection, holder: str, now: datetime, lease_until: datetime, limit: int) -> list[dict]:
    """Lease up to `limit` due deliveries to `holder` until `lease_until`, each with its record and its
    subscription's URL and secret. Due: pending, its time come, not leased by a live holder, its subscription
    enabled, and no earlier pending delivery of the same subscription and client (order per client).
    Rows another dispatcher is claiming are skipped (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite's write
    transaction lets one claim at a time)."""
    earlier = aliased(DELIVERY)
    blocked = exists().where(earlier.c.subscription_id == DELIVERY.c.subscription_id,
                             earlier.c.order_key == DELIVERY.c.order_key, earlier.c.status == PENDING,
                             earlier.c.outbox_seq < DELIVERY.c.outbox_seq)
    query = (select(DELIVERY.c.id, DELIVERY.c.subscription_id, DELIVERY.c.attempts, DELIVERY.c.first_attempt_at,
                    SUBSCRIPTION.c.url, SUBSCRIPTION.c.secret, OUTBOX.c.id.label("message_id"), OUTBOX.c.type,
                    OUTBOX.c.version, OUTBOX.c.client_id, OUTBOX.c.occurred_at, OUTBOX.c.data,
                    OUTBOX.c.created_at.label("recorded_at"))
             .join(SUBSCRIPTION, SUBSCRIPTION.c.id == DELIVERY.c.subscription_id)
             .join(OUTBOX, OUTBOX.c.seq == DELIVERY.c.outbox_seq)
             .where(DELIVERY.c.status == PENDING, DELIVERY.c.next_attempt_at <= now,
                    or_(DELIVERY.c.leased_until.is_(None), DELIVERY.c.leased_until <= now),
                    SUBSCRIPTION.c.disabled_at.is_(None), ~blocked)
             .order_by(DELIVERY.c.next_attempt_at, DELIVERY.c.outbox_seq).limit(limit)
             .with_for_update(skip_locked=True, of=DELIVERY))
    rows = [dict(row._mapping) for row in conn.execute(query)]
    if rows:
        conn.execute(update(DELIVERY).where(DELIVERY.c.id.in_([row["id"] for row in rows]))
                     .values(leased_by=holder, leased_until=lease_until,
                             first_attempt_at=func.coalesce(DELIVERY.c.first_attempt_at, now)))
    for row in rows:
        row["first_attempt_at"] = row["first_attempt_at"] or now
    return rows


def log_attempt(conn: Connection, row: dict) -> None:
    """Keep one attempt in the delivery log."""
    conn.execute(insert(ATTEMPT).values(**row))


def finish(conn: Connection, delivery_id: int, holder: str, values: dict) -> bool:
    """Count an attempt and write its outcome on the delivery and release the lease, if `holder` still holds it and it is
    still pending; False otherwise (its lease lapsed and another dispatcher took it, or it was replayed)."""
    done = conn.execute(update(DELIVERY).where(DELIVERY.c.id == delivery_id, DELIVERY.c.leased_by == holder,
                                               DELIVERY.c.status == PENDING)
                        .values(**values, attempts=DELIVERY.c.attempts + 1, leased_by=None, leased_until=None))
    return done.rowcount > 0


def release(conn: Connection, delivery_ids: Sequence[int], holder: str) -> None:
    """Give back leases not used (a dispatcher stopping before it sent them)."""
    if delivery_ids:
        conn.execute(update(DELIVERY).where(DELIVERY.c.id.in_(list(delivery_ids)), DELIVERY.c.leased_by == holder)
                     .values(leased_by=None, leased_until=None))


# The delivery log and replay

def deliveries(conn: Connection, subscription_id: str | None = None, status: str | None = None,
               since: datetime | None = None, until: datetime | None = None, delivery_id: int | None = None,
               limit: int = 100) -> list[dict]:
    """Deliveries, newest record first, with their record's id and moment (filters: subscription, status,
    record written in [since, until), one delivery)."""
    query = (select(DELIVERY, OUTBOX.c.id.label("message_id"), OUTBOX.c.client_id,
                    OUTBOX.c.created_at.label("recorded_at"))
             .join(OUTBOX, OUTBOX.c.seq == DELIVERY.c.outbox_seq)
             .where(*_filters(subscription_id, status, since, until, delivery_id))
             .order_by(DELIVERY.c.outbox_seq.desc(), DELIVERY.c.id.desc()).limit(limit))
    return [dict(row._mapping) for row in conn.execute(query)]


def attempts(conn: Connection, delivery_ids: Sequence[int], per_delivery: int) -> dict[int, list[dict]]:
    """The latest `per_delivery` attempts of each delivery, oldest first."""
    if not delivery_ids:
        return {}
    ranked = select(ATTEMPT, func.row_number().over(partition_by=ATTEMPT.c.delivery_id,
                                                    order_by=ATTEMPT.c.id.desc()).label("recent")) \
        .where(ATTEMPT.c.delivery_id.in_(list(delivery_ids))).subquery()
    rows = conn.execute(select(ranked).where(ranked.c.recent <= per_delivery).order_by(ranked.c.id)).all()
    found: dict[int, list[dict]] = {}
    for row in rows:
        found.setdefault(row.delivery_id, []).append(dict(row._mapping))
    return found


def requeue(conn: Connection, now: datetime, subscription_id: str | None = None, since: datetime | None = None,
            until: datetime | None = None, delivery_id: int | None = None) -> list[int]:
    """Make deliveries pending again, due now, a new round of retries (a replay): their ids, oldest first.
    A delivery leased right now keeps its lease (it is being sent)."""
    ids = [row.id for row in conn.execute(
        select(DELIVERY.c.id).join(OUTBOX, OUTBOX.c.seq == DELIVERY.c.outbox_seq)
        .where(*_filters(subscription_id, None, since, until, delivery_id)).order_by(DELIVERY.c.outbox_seq))]
    for chunk in range(0, len(ids), 1000):
        conn.execute(update(DELIVERY).where(DELIVERY.c.id.in_(ids[chunk:chunk + 1000]))
                     .values(status=PENDING, next_attempt_at=now, first_attempt_at=None, delivered_at=None))
    return ids


def _filters(subscription_id: str | None, status: str | None, since: datetime | None, until: datetime | None,
             delivery_id: int | None) -> list:
    conditions = []
    if subscription_id is not None:
        conditions.append(DELIVERY.c.subscription_id == subscription_id)
    if status is not None:
        conditions.append(DELIVERY.c.status == status)
    if since is not None:
        conditions.append(OUTBOX.c.created_at >= since)
    if until is not None:
        conditions.append(OUTBOX.c.created_at < until)
    if delivery_id is not None:
        conditions.append(DELIVERY.c.id == delivery_id)
    return [and_(*conditions)] if conditions else []
