"""Per-client monthly totals for the metrics, filled from the events already applied, and an index of
each client's events by time (for the partial months at a window's edges).

Until this revision every measurement of a client (instant upgrades at each ingest batch, reviews,
explain) summed its whole event history; from it, the metrics read the months wholly inside a window
from `client_month` and only the partial edge months from the events (engine/metric_totals.py). The
totals are filled here from `processed_event`, one client at a time, with the same fold ingest uses
from now on, so a database upgraded here and one built by ingest hold the same rows (`ledger verify`
checks). On a large ledger this reads every event once: minutes for tens of millions of events.

Revision ID: 0004_client_totals
Revises: 0003_review_pages
Create Date: 2026-12-06
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004_client_totals"
down_revision: Union[str, Sequence[str], None] = "0003_review_pages"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create client_month and client_product and fill them from the live events."""
    op.create_table(
        "client_month",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("loan_minor", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False)
          for name in ("drawdowns", "repayments", "on_time", "late", "referrals", "attended")),
        *(sa.Column(name, _MOMENT, nullable=True)
          for name in ("first_event_at", "last_event_at", "onboarded_at", "last_loan_activity", "nps_at")),
        sa.Column("nps_event_id", sa.String(length=128), nullable=True),
        sa.Column("nps", sa.BigInteger(), nullable=True),
        sa.Column("deposit_at", _MOMENT, nullable=True),
        sa.Column("deposit_event_id", sa.String(length=128), nullable=True),
        sa.Column("deposit_minor", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("client_id", "month"),
    )
    op.create_table(
        "client_product",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("product", sa.String(length=64), nullable=False),
        sa.Column("first_at", _MOMENT, nullable=False),
        sa.PrimaryKeyConstraint("client_id", "product"),
    )
    op.create_index("ix_processed_event_client_time", "processed_event", ["client_id", "occurred_at"])
    # The fold is the product's own (the same code ingest runs), so the rows match what ingest would write.
    from storage.metric_totals import rebuild
    rebuild(op.get_bind())


def downgrade() -> None:
    """Drop the totals (the metrics can no longer be read without them: downgrade the code too)."""
    op.drop_index("ix_processed_event_client_time", "processed_event")
    op.drop_table("client_product")
    op.drop_table("client_month")
