"""Review pages: the pages of a tier review, handed out through the database to the processes sharing it.

A new table only: each page is a range of client ids with who claimed it until when, and once written
its share of the report. Nothing existing changes, so the upgrade is quick on any database.

Revision ID: 0003_review_pages
Revises: 0002_bigint_ids
Create Date: 2026-12-20
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003_review_pages"
down_revision: Union[str, Sequence[str], None] = "0002_bigint_ids"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Create review_page."""
    op.create_table(
        "review_page",
        sa.Column("review_id", sa.String(length=64), nullable=False),
        sa.Column("page", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("after_client_id", sa.String(length=64), nullable=True),
        sa.Column("last_client_id", sa.String(length=64), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["review_id"], ["tier_review.id"]),
        sa.PrimaryKeyConstraint("review_id", "page"),
    )


def downgrade() -> None:
    """Drop review_page (an unfinished review then resumes from its recorded moves, as before)."""
    op.drop_table("review_page")
