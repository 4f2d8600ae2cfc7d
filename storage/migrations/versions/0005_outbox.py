"""The transactional outbox: decisions worth acting on (tier changes, grace periods, churn flags,
entitlements, points expired, redemptions, quotes committed), written with the changes that cause them.

A new table only, empty at the upgrade: records start with the first change after it (nothing is
back-filled: past decisions were never announced, and announcing them now would be news to no one).

Revision ID: 0005_outbox
Revises: 0004_client_totals
Create Date: 2026-12-06
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005_outbox"
down_revision: Union[str, Sequence[str], None] = "0004_client_totals"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create outbox_event."""
    op.create_table(
        "outbox_event",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", _MOMENT, nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", _MOMENT, nullable=False),
        sa.Column("routed_at", _MOMENT, nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
    )
    op.create_index("ix_outbox_event_client", "outbox_event", ["client_id", "seq"])
    op.create_index("ix_outbox_event_unrouted", "outbox_event", ["seq"], unique=False,
                    sqlite_where=sa.text("routed_at IS NULL"), postgresql_where=sa.text("routed_at IS NULL"))


def downgrade() -> None:
    """Drop outbox_event (records not yet delivered are lost with it)."""
    op.drop_index("ix_outbox_event_unrouted", table_name="outbox_event")
    op.drop_index("ix_outbox_event_client", table_name="outbox_event")
    op.drop_table("outbox_event")
