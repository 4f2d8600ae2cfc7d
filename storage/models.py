"""The tables. `ledger_entry`, `processed_event` and `event_reversal` are append-only (database
triggers refuse UPDATE and DELETE); `client` and `entitlement` are projections of the ledger kept in
the same transaction as the entries, for fast reads, and `ledger verify` recomputes them from the entries.
Points, ids and the references to them are 64-bit integers on every database. The schema itself is
made by the migrations (storage/migrations); a test checks that they and these models agree.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Column, Index, Integer, Text, text
from sqlmodel import Field, SQLModel

from storage.types import UTCDateTime


# A 64-bit id or count that grows without bound: BIGINT on PostgreSQL (INTEGER overflows at 2^31); on
# SQLite every integer is 64-bit and only a column declared INTEGER is the auto-numbered rowid.
BigId = BigInteger().with_variant(Integer, "sqlite")


def _ts(**kwargs) -> Field:  # type: ignore[valid-type]
    return Field(sa_type=UTCDateTime, **kwargs)


def _partial_index(name: str, column: str, where: str, unique: bool = True) -> Index:
    """An index over the rows where `where` holds, on both databases."""
    return Index(name, column, unique=unique, sqlite_where=text(where), postgresql_where=text(where))


class Client(SQLModel, table=True):
    """An enterprise client: profile from `client.onboarded`, and its points balance (a projection).

    The database refuses a negative balance, whatever the code does.
    """

    __table_args__ = (CheckConstraint("points_balance >= 0", name="ck_client_balance_not_negative"),)

    client_id: str = Field(primary_key=True, max_length=64)
    name: str | None = None
    segment: str | None = Field(default=None, max_length=64)
    industry: str | None = None
    onboarded_at: datetime | None = _ts(default=None)
    first_seen_at: datetime = _ts()
    points_balance: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = _ts()


class TierAssignment(SQLModel, table=True):
    """Tier history: the client is in `tier` from `valid_from` until the next assignment.

    One assignment per client and moment (a unique key), so a review re-run at the same moment
    cannot assign twice. `details` holds the decision's reasons as JSON (each metric against its
    threshold); `review_id` names the review that decided it (none for a new client's first tier).
    """

    __tablename__ = "tier_assignment"
    __table_args__ = (Index("ux_tier_assignment_client_from", "client_id", "valid_from", unique=True),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    client_id: str = Field(foreign_key="client.client_id", max_length=64)
    tier: str = Field(max_length=64)
    previous_tier: str | None = Field(default=None, max_length=64)
    valid_from: datetime = _ts()
    reason: str
    details: str | None = Field(default=None, sa_column=Column(Text))
    review_id: str | None = Field(default=None, max_length=64, index=True)
    programme_id: str
    programme_version: str
    created_at: datetime = _ts()


class TierReview(SQLModel, table=True):
    """One run of the tier review (dry runs are not recorded). A scheduled review's id comes from its
    scheduled moment, so every replica that fires it names the same review and it runs once."""

    __tablename__ = "tier_review"

    id: str = Field(primary_key=True, max_length=64)
    trigger: str = Field(default="manual", max_length=16)  # manual or scheduled
    as_of: datetime = _ts()  # a run with no change is recorded too: the audit shows every review
    programme_id: str
    programme_version: str
    started_at: datetime = _ts()
    finished_at: datetime | None = _ts(default=None)
    clients: int = 0
    upgrades: int = 0
    downgrades: int = 0
    points_expired: int = Field(default=0, sa_type=BigInteger)
    churn_flagged: int = 0


class TierPin(SQLModel, table=True):
    """A manual override: the client stays in `tier` from `valid_from` until `until`, whatever reviews find.

    Pins are never edited; a later pin of the same client replaces an earlier one from its own start.
    """

    __tablename__ = "tier_pin"
    __table_args__ = (Index("ix_tier_pin_client", "client_id", "valid_from"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    client_id: str = Field(foreign_key="client.client_id", max_length=64)
    tier: str = Field(max_length=64)
    valid_from: datetime = _ts()
    until: datetime = _ts()
    reason: str
    author: str = Field(max_length=200)
    created_at: datetime = _ts()


class TierGrace(SQLModel, table=True):
    """A grace period: a review found the client no longer qualifies for `tier` and lets it keep the tier
    until `until`. It ends when the client qualifies again, is moved down, or is pinned."""

    __tablename__ = "tier_grace"
    __table_args__ = (_partial_index("ux_tier_grace_open", "client_id", "ended_at IS NULL"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    client_id: str = Field(foreign_key="client.client_id", max_length=64)
    tier: str = Field(max_length=64)
    started_at: datetime = _ts()
    until: datetime = _ts()
    review_id: str = Field(max_length=64)
    ended_at: datetime | None = _ts(default=None)
    ended_by: str | None = Field(default=None, max_length=64)  # the review that ended it
    outcome: str | None = Field(default=None, max_length=16)  # recovered, downgraded, moved, pinned


class ChurnFlag(SQLModel, table=True):
    """An early warning: from the review that raised it until the review that found the client recovered.

    `signals` holds the signals that fired with their values, as last seen; cleared flags stay as history.
    """

    __tablename__ = "churn_flag"
    __table_args__ = (_partial_index("ux_churn_flag_open", "client_id", "cleared_at IS NULL"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    client_id: str = Field(foreign_key="client.client_id", max_length=64)
    tier: str = Field(max_length=64)
    raised_at: datetime = _ts()
    raised_by: str = Field(max_length=64)
    signals: str = Field(sa_column=Column(Text, nullable=False))
    value: int = Field(default=0, sa_type=BigInteger)  # loan volume in the window, minor units: the sort key
    last_seen_at: datetime = _ts()
    last_review_id: str = Field(max_length=64)
    cleared_at: datetime | None = _ts(default=None)
    cleared_by: str | None = Field(default=None, max_length=64)


class PointsLot(SQLModel, table=True):
    """Points earned by one rule for one event (a projection of its `earn` entry): how many are left, and
    how many expired. Debits take the oldest lots first, a reversal its own lot first (rewards/lots.py);
    expiry takes what is left of a lot. `ledger verify` replays the entries and compares.
    """

    __tablename__ = "points_lot"
    __table_args__ = (Index("ux_points_lot_source", "event_id", "rule_id", unique=True),
                      Index("ix_points_lot_client", "client_id", "earned_at"),
                      _partial_index("ix_points_lot_open", "earned_at", "remaining > 0", unique=False),
                      CheckConstraint("remaining >= 0 AND expired >= 0 AND remaining + expired <= points",
                                      name="ck_points_lot_remaining"))

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    client_id: str = Field(max_length=64)
    event_id: str = Field(max_length=128)
    rule_id: str = Field(max_length=96)
    earned_at: datetime = _ts()
    points: int = Field(sa_type=BigInteger)
    remaining: int = Field(sa_type=BigInteger)
    expired: int = Field(default=0, sa_type=BigInteger)


class JobLease(SQLModel, table=True):
    """Who is running a job (the review, expiry) until when: replicas take turns through this row."""

    __tablename__ = "job_lease"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime = _ts()


class ProcessedEvent(SQLModel, table=True):
    """Every event applied, with the hash of its content (for duplicate and conflict detection)."""

    __tablename__ = "processed_event"
    __table_args__ = (Index("ix_processed_event_occurred", "occurred_at"),
                      Index("ix_processed_event_client_type", "client_id", "type", "occurred_at"),
                      # A client's events of a span (the partial months at a metric window's edges).
                      Index("ix_processed_event_client_time", "client_id", "occurred_at"))

    event_id: str = Field(primary_key=True, max_length=128)
    client_id: str = Field(max_length=64)
    type: str = Field(max_length=64)
    occurred_at: datetime = _ts()
    content_hash: str = Field(max_length=64)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    # Typed copies of the attributes tier metrics read, so reviews aggregate in SQL, exactly.
    amount_minor: int | None = Field(default=None, sa_type=BigInteger)
    number: int | None = Field(default=None, sa_type=BigId)  # an integer attribute: up to ±(2^53 - 1)
    label: str | None = Field(default=None, max_length=64)
    programme_id: str
    programme_version: str
    processed_at: datetime = _ts()


class EventReversal(SQLModel, table=True):
    """An event whose effects were reversed; the primary key makes reversal happen at most once."""

    __tablename__ = "event_reversal"

    event_id: str = Field(primary_key=True, foreign_key="processed_event.event_id", max_length=128)
    reversed_at: datetime = _ts()
    reason: str = ""


class LedgerEntry(SQLModel, table=True):
    """One immutable change to an entitlement.

    Points entries carry a signed `points`; grant entries create an entitlement whose id is the
    grant entry's id, and later entries about it (consume, revoke, reverse) name it in
    `entitlement_id`. `reverses_entry_id` points from a compensating entry to what it fixes.
    """

    __tablename__ = "ledger_entry"
    __table_args__ = (
        Index("ix_ledger_client_id", "client_id", "id"),
        Index("ix_ledger_cap_usage", "client_id", "rule_id", "valid_from"),
        # The database itself refuses a second consumption of an entitlement, whatever the code does.
        _partial_index("ux_ledger_one_consumption", "entitlement_id", "reason = 'consume'"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    client_id: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    reason: str = Field(max_length=16)
    points: int = Field(default=0, sa_type=BigInteger)
    bps: int = 0
    products: str | None = None  # comma-separated loan products, for rate discounts
    detail: str | None = None  # JSON: lane, sla_hours, fee_waiver_pct, cap notes
    use: str | None = Field(default=None, max_length=16)
    rule_id: str | None = Field(default=None, max_length=96)
    programme_id: str | None = None
    programme_version: str | None = None
    event_id: str | None = Field(default=None, index=True, max_length=128)
    entitlement_id: int | None = Field(default=None, index=True, sa_type=BigId)
    reverses_entry_id: int | None = Field(default=None, unique=True, sa_type=BigId)
    valid_from: datetime = _ts()
    valid_to: datetime | None = _ts(default=None)
    created_at: datetime = _ts()


class Entitlement(SQLModel, table=True):
    """A granted rate discount or service benefit (projection of its grant entry and what followed)."""

    __table_args__ = (Index("ix_entitlement_client_status", "client_id", "status"),)

    id: int = Field(primary_key=True, sa_type=BigId)  # the id of the grant ledger entry
    client_id: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    use: str = Field(max_length=16)
    bps: int = 0
    products: str | None = None
    detail: str | None = None
    valid_from: datetime = _ts()
    valid_to: datetime | None = _ts(default=None)
    status: str = Field(max_length=16)
    rule_id: str = Field(max_length=96)
    programme_id: str
    programme_version: str
    event_id: str | None = Field(default=None, max_length=128)


class Quote(SQLModel, table=True):
    """Pricing adjustments for one loan application, holding the single-use entitlements they use.

    `status` is held until the quote is committed (the loan was booked: its holds are consumed) or
    voided; a held quote past `expires_at` is expired and its holds are free again (no job needed).
    """

    __table_args__ = (Index("ix_quote_client", "client_id", "expires_at"),)

    id: str = Field(primary_key=True, max_length=40)
    client_id: str = Field(foreign_key="client.client_id", max_length=64)
    product: str = Field(max_length=64)
    amount_minor: int = Field(sa_type=BigInteger)
    currency: str = Field(max_length=3)
    pricing: str = Field(sa_column=Column(Text, nullable=False))  # the quote's answer, as JSON
    programme_id: str
    programme_version: str
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    status: str = Field(max_length=16)
    resolved_at: datetime | None = _ts(default=None)
    loan_id: str | None = Field(default=None, max_length=128)


class QuoteHold(SQLModel, table=True):
    """A single-use entitlement reserved by a quote."""

    __tablename__ = "quote_hold"

    quote_id: str = Field(primary_key=True, foreign_key="quote.id", max_length=40)
    entitlement_id: int = Field(primary_key=True, index=True, sa_type=BigId)


class ApiKey(SQLModel, table=True):
    """A caller of the HTTP API: only a hash of the secret is stored."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=32)  # public part of the key, shown in listings
    name: str = Field(max_length=200)
    secret_hash: str = Field(max_length=64)
    scopes: str  # space-separated
    created_at: datetime = _ts()
    revoked_at: datetime | None = _ts(default=None)


class IdempotencyRecord(SQLModel, table=True):
    """The first response to a POST sent with an Idempotency-Key, replayed for retries of it."""

    __tablename__ = "idempotency_record"

    caller: str = Field(primary_key=True, max_length=32)  # the API key's id: callers never share records
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    status_code: int | None = None  # None while the first request is still running
    content_type: str | None = Field(default=None, max_length=100)
    response: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _ts()


class ClientMonth(SQLModel, table=True):
    """One client's events of one calendar month folded for the metrics (engine/metric_totals.py): kept in
    the transaction that applies the events, rebuilt for the client when one is reversed; `ledger
    verify` rebuilds them all from the events and compares. Not append-only: a projection."""

    __tablename__ = "client_month"

    client_id: str = Field(primary_key=True, max_length=64)
    month: str = Field(primary_key=True, max_length=7)  # YYYY-MM: events in (its first instant, the next month's]
    events: int = 0
    loan_minor: int = Field(default=0, sa_type=BigInteger)
    drawdowns: int = 0
    repayments: int = 0
    on_time: int = 0
    late: int = 0
    referrals: int = 0
    attended: int = 0
    first_event_at: datetime | None = _ts(default=None)
    last_event_at: datetime | None = _ts(default=None)
    onboarded_at: datetime | None = _ts(default=None)
    last_loan_activity: datetime | None = _ts(default=None)
    nps_at: datetime | None = _ts(default=None)
    nps_event_id: str | None = Field(default=None, max_length=128)
    nps: int | None = Field(default=None, sa_type=BigInteger)
    deposit_at: datetime | None = _ts(default=None)  # the latest report OF this month, whenever it arrived
    deposit_event_id: str | None = Field(default=None, max_length=128)
    deposit_minor: int | None = Field(default=None, sa_type=BigInteger)


class ClientProduct(SQLModel, table=True):
    """A non-loan product a client took up, with its first purchase not reversed (the products_held metric)."""

    __tablename__ = "client_product"

    client_id: str = Field(primary_key=True, max_length=64)
    product: str = Field(primary_key=True, max_length=64)
    first_at: datetime = _ts()


class SchemaInfo(SQLModel, table=True):
    """Facts about the database itself (benchmarks record their seeds here). Databases created before
    migrations also hold `schema_version` 3 here: the baseline revision (see storage/migrations)."""

    __tablename__ = "loyalty_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str


class ReviewPage(SQLModel, table=True):
    """One page of a tier review: a range of client ids, the process that claimed it and until when, and
    once written, what it found (its share of the report, JSON), committed with the page's writes.
    Processes sharing a review take its pages from here, so whoever finished a page, the report is whole."""

    __tablename__ = "review_page"

    review_id: str = Field(primary_key=True, foreign_key="tier_review.id", max_length=64)
    page: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    after_client_id: str | None = Field(default=None, max_length=64)  # clients after this one (None: from the first)
    last_client_id: str | None = Field(default=None, max_length=64)  # up to this one (None: to the last)
    claimed_by: str | None = Field(default=None, max_length=128)
    claimed_until: datetime | None = _ts(default=None)  # past it, another process may take the page over
    finished_at: datetime | None = _ts(default=None)
    outcome: str | None = Field(default=None, sa_column=Column(Text))


class OutboxEvent(SQLModel, table=True):
    """A decision worth acting on (rewards/notices.py), written in the same transaction as the change
    that caused it: the transactional outbox the webhook dispatcher and the broker publisher read.

    Rows are never deleted or rewritten; only `routed_at` is set once, when a dispatcher has handed the
    record to every subscription. `seq` orders the records: per client, in the order of their commits
    (a client's writers hold its row lock)."""

    __tablename__ = "outbox_event"
    __table_args__ = (Index("ix_outbox_event_client", "client_id", "seq"),
                      _partial_index("ix_outbox_event_unrouted", "seq", "routed_at IS NULL", unique=False))

    seq: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    id: str = Field(max_length=40, unique=True)  # msg_<32 hex>: the webhook-id receivers deduplicate by
    type: str = Field(max_length=64)
    version: int = 1  # of the type's schema
    client_id: str | None = Field(default=None, max_length=64)
    occurred_at: datetime = _ts()  # when the decision took effect
    data: str = Field(sa_column=Column(Text, nullable=False))  # JSON, as the type's schema says
    dedupe_key: str | None = Field(default=None, max_length=200, unique=True)  # a notice given once per key
    created_at: datetime = _ts()
    routed_at: datetime | None = _ts(default=None)



class WebhookSubscription(SQLModel, table=True):
    """A receiver of notices: its URL, the notice types it wants (space-separated, or `*`), the Standard
    Webhooks secret its deliveries are signed with, and whether it is disabled (by whom or what, and why).
    `failing_since`: since when no attempt to it succeeded (None while the last one did)."""

    __tablename__ = "webhook_subscription"

    id: str = Field(primary_key=True, max_length=40)  # whk_<hex>
    url: str = Field(max_length=2000)
    event_types: str = Field(max_length=2000)  # "*" or type names separated by spaces
    secret: str = Field(max_length=200)  # whsec_<base64>
    description: str | None = Field(default=None, max_length=500)
    created_at: datetime = _ts()
    disabled_at: datetime | None = _ts(default=None)
    disabled_reason: str | None = Field(default=None, max_length=1000)
    failing_since: datetime | None = _ts(default=None)


class WebhookDelivery(SQLModel, table=True):
    """One outbox record to one subscription: pending until delivered (2xx) or failed (retries exhausted).

    `order_key` is the record's client id ('' for none): a delivery is sent only when no earlier pending
    delivery of the same subscription and key exists, so each client's notices arrive in order. A dispatcher
    that claims a delivery leases it (`leased_by` until `leased_until`); a lapsed lease lets another take it."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ux_webhook_delivery_record", "subscription_id", "outbox_seq", unique=True),
        Index("ix_webhook_delivery_pending", "subscription_id", "order_key", "outbox_seq",
              sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_delivery_due", "next_attempt_at", sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_delivery_status"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    subscription_id: str = Field(foreign_key="webhook_subscription.id", max_length=40)
    outbox_seq: int = Field(foreign_key="outbox_event.seq", sa_type=BigInteger)
    order_key: str = Field(max_length=64)
    type: str = Field(max_length=64)
    status: str = Field(max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _ts()
    first_attempt_at: datetime | None = _ts(default=None)  # of the current round (a replay starts a new one)
    leased_by: str | None = Field(default=None, max_length=128)
    leased_until: datetime | None = _ts(default=None)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = _ts()
    delivered_at: datetime | None = _ts(default=None)


class WebhookAttempt(SQLModel, table=True):
    """One HTTP attempt of a delivery (the delivery log): when, by which dispatcher, the answer or the error."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (Index("ix_webhook_attempt_delivery", "delivery_id", "id"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    delivery_id: int = Field(foreign_key="webhook_delivery.id", sa_type=BigInteger)
    attempted_at: datetime = _ts()
    dispatcher: str = Field(max_length=128)
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=1000)
    duration_ms: int

# The migration revisions (storage/migrations/versions), oldest first: the last is the schema these
# models describe. Kept here so checking a database's revision needs no Alembic (a test compares them).
SCHEMA_REVISIONS = ("0001_baseline", "0002_bigint_ids", "0003_review_pages", "0004_client_totals",
                    "0005_outbox", "0006_webhooks")
SCHEMA_VERSION = SCHEMA_REVISIONS[-1]
