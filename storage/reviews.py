"""Tier-review runs: the audit row of each review (its moment, programme, counts), the clients to review, and
the moves a review wrote."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update

from engine.metric_totals import month_of
from storage.clients import TierInForce, fold_tiers
from storage.models import Client, ClientMonth, PointsLot, TierAssignment, TierReview
from storage.review_pages import Page, within
from storage.types import as_utc

REVIEWS = TierReview.__table__
CLIENTS = Client.__table__
TIERS = TierAssignment.__table__
MONTH = ClientMonth.__table__
LOT = PointsLot.__table__


@dataclass(frozen=True)
class ReviewRun:
    """A recorded review: the moment it reviews as of, and when it finished (None: unfinished)."""

    review_id: str
    as_of: datetime
    finished_at: datetime | None


def find(conn: Connection, review_id: str) -> ReviewRun | None:
    """The recorded review `review_id`, or None."""
    row = conn.execute(select(REVIEWS.c.id, REVIEWS.c.as_of, REVIEWS.c.finished_at)
                       .where(REVIEWS.c.id == review_id)).first()
    return ReviewRun(row.id, row.as_of, row.finished_at) if row else None


def record_start(conn: Connection, review_id: str, trigger: str, as_of: datetime, programme_id: str,
                 programme_version: str, now: datetime) -> None:
    """Record a review as started (unfinished)."""
    conn.execute(insert(REVIEWS).values(id=review_id, trigger=trigger, as_of=as_of, programme_id=programme_id,
                                        programme_version=programme_version, started_at=now))


def unfinished(conn: Connection, other_than: str) -> list[str]:
    """Ids of unfinished reviews other than `other_than`, oldest first."""
    return list(conn.execute(select(REVIEWS.c.id).where(REVIEWS.c.finished_at.is_(None), REVIEWS.c.id != other_than)
                             .order_by(REVIEWS.c.started_at)).scalars())


def record_finish(conn: Connection, review_id: str, now: datetime, clients: int, upgrades: int, downgrades: int,
                  points_expired: int, churn_flagged: int) -> bool:
    """Mark an unfinished review finished, with its counts; False if it was already (by another process)."""
    return bool(conn.execute(update(REVIEWS).where(REVIEWS.c.id == review_id, REVIEWS.c.finished_at.is_(None)).values(
        finished_at=now, clients=clients, upgrades=upgrades, downgrades=downgrades,
        points_expired=points_expired, churn_flagged=churn_flagged)).rowcount)


def all_client_ids(conn: Connection) -> list[str]:
    """Every client id, in order (the pages of a review)."""
    return list(conn.execute(select(CLIENTS.c.client_id).order_by(CLIENTS.c.client_id)).scalars())


def move_reasons(conn: Connection, review_id: str) -> dict[str, list[dict]]:
    """Per client moved by the review, the checks that decided its move (as its tier row records them)."""
    query = select(TIERS.c.client_id, TIERS.c.details).where(TIERS.c.review_id == review_id)
    return {client_id: json.loads(details) if details else [] for client_id, details in conn.execute(query)}


def insert_in_small_batches(conn: Connection) -> None:
    """From now on in this transaction, insert rows that return their ids (ledger grants) 50 to a statement:
    psycopg converts a statement's placeholders in a time that grows faster than their number (measured:
    23 us a ledger row in statements of 50 rows, 68 us in SQLAlchemy's default of 1,000)."""
    conn.execution_options(insertmanyvalues_page_size=50)


def activity_from(conn: Connection, client_ids: list[str], moment: datetime) -> dict[str, datetime]:
    """Per client, its latest applied event that was not reversed, if it is at or after `moment` (else it may
    be missing): all a move's effective moment needs. Reads only the monthly totals from `moment`'s month
    on, not every month of each client's history."""
    if not client_ids:
        return {}
    query = select(MONTH.c.client_id, func.max(MONTH.c.last_event_at)).where(
        MONTH.c.client_id.in_(client_ids), MONTH.c.month >= month_of(moment), MONTH.c.last_event_at.is_not(None)) \
        .group_by(MONTH.c.client_id)
    return {client_id: as_utc(latest) for client_id, latest in conn.execute(query)}


def clients_with_lots_by(conn: Connection, latest: datetime, page: Page) -> set[str]:
    """Clients of the page holding points earned at or before `latest` (those whose points may be due to expire)."""
    query = select(LOT.c.client_id).where(within(page, LOT.c.client_id), LOT.c.remaining > 0, LOT.c.earned_at <= latest)
    return set(conn.execute(query.distinct()).scalars())


def tiers_in_force(conn: Connection, as_of: datetime, page: Page) -> dict[str, TierInForce]:
    """Per client of the page, the tier in force at `as_of` (as storage.clients.tiers_as_of finds it), read
    by the page's id range: on PostgreSQL a list of its thousands of ids costs more to bind than to read."""
    query = select(TIERS.c.client_id, TIERS.c.tier, TIERS.c.valid_from, TIERS.c.review_id, TIERS.c.previous_tier) \
        .where(within(page, TIERS.c.client_id)).order_by(TIERS.c.client_id, TIERS.c.valid_from)
    return fold_tiers(conn.execute(query), as_of)
