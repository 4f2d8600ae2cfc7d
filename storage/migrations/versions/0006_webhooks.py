"""Webhooks: subscriptions, one delivery per subscription and outbox record, and each HTTP attempt (the
delivery log).

New tables only, empty at the upgrade: a subscription added afterwards receives the outbox records routed
from then on.

Revision ID: 0006_webhooks
Revises: 0005_outbox
Create Date: 2026-12-06
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006_webhooks"
down_revision: Union[str, Sequence[str], None] = "0005_outbox"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_MOMENT = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    """Create webhook_subscription, webhook_delivery and webhook_attempt."""
    op.create_table(
        "webhook_subscription",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("event_types", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("created_at", _MOMENT, nullable=False),
        sa.Column("disabled_at", _MOMENT, nullable=True),
        sa.Column("disabled_reason", sa.String(length=1000), nullable=True),
        sa.Column("failing_since", _MOMENT, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("outbox_seq", sa.BigInteger(), nullable=False),
        sa.Column("order_key", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _MOMENT, nullable=False),
        sa.Column("first_attempt_at", _MOMENT, nullable=True),
        sa.Column("leased_by", sa.String(length=128), nullable=True),
        sa.Column("leased_until", _MOMENT, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("created_at", _MOMENT, nullable=False),
        sa.Column("delivered_at", _MOMENT, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_delivery_status"),
        sa.ForeignKeyConstraint(["outbox_seq"], ["outbox_event.seq"]),
        sa.ForeignKeyConstraint(["subscription_id"], ["webhook_subscription.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ux_webhook_delivery_record", "webhook_delivery", ["subscription_id", "outbox_seq"], unique=True)
    op.create_index("ix_webhook_delivery_pending", "webhook_delivery", ["subscription_id", "order_key", "outbox_seq"],
                    sqlite_where=_PENDING, postgresql_where=_PENDING)
    op.create_index("ix_webhook_delivery_due", "webhook_delivery", ["next_attempt_at"],
                    sqlite_where=_PENDING, postgresql_where=_PENDING)
    op.create_table(
        "webhook_attempt",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("attempted_at", _MOMENT, nullable=False),
        sa.Column("dispatcher", sa.String(length=128), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_delivery.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_attempt_delivery", "webhook_attempt", ["delivery_id", "id"])


def downgrade() -> None:
    """Drop the webhook tables (subscriptions, pending deliveries and the delivery log are lost with them)."""
    op.drop_index("ix_webhook_attempt_delivery", table_name="webhook_attempt")
    op.drop_table("webhook_attempt")
    for index in ("ix_webhook_delivery_due", "ix_webhook_delivery_pending", "ux_webhook_delivery_record"):
        op.drop_index(index, table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    op.drop_table("webhook_subscription")
