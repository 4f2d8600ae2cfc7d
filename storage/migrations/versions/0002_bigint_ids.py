"""64-bit ids on PostgreSQL: ledger entries, entitlements, points lots, tier rows, event numbers.

PostgreSQL's INTEGER (and the sequences behind SERIAL ids) stop at 2,147,483,647: a lender's ledger
gets there. SQLite's integers are 64-bit whatever the declared type (and only a column declared
INTEGER is the auto-numbered rowid), so there nothing changes: copying its tables in batch mode
would rewrite the ledger, and drop its append-only triggers, for no change at all. On PostgreSQL
each table is rewritten once, under an exclusive lock, in time proportional to its size: stop the
services first.

Revision ID: 0002_bigint_ids
Revises: 0001_baseline
Create Date: 2026-12-06
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0002_bigint_ids"
down_revision: Union[str, Sequence[str], None] = "0001_baseline"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# table: (the columns widened, whether its `id` is numbered by a sequence)
WIDENED = {
    "ledger_entry": (("id", "entitlement_id", "reverses_entry_id"), True),
    "entitlement": (("id",), True),
    "quote_hold": (("entitlement_id",), False),
    "points_lot": (("id",), True),
    "processed_event": (("number",), False),
    "tier_assignment": (("id",), True),
    "tier_pin": (("id",), True),
    "tier_grace": (("id",), True),
    "churn_flag": (("id",), True),
}


def upgrade() -> None:
    """Widen the columns (and the id sequences) to 64 bits on PostgreSQL."""
    _retype("bigint")


def downgrade() -> None:
    """Back to 32 bits (fails if an id already went past 2^31 - 1)."""
    _retype("integer")


def _retype(type_: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # 64-bit already (see the module's docstring)
    for table, (columns, numbered) in WIDENED.items():
        # One statement per table: PostgreSQL rewrites the table and its indexes once, not once a column.
        op.execute(f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {column} TYPE {type_}" for column in columns))
        if numbered:
            # The SERIAL's sequence has its own type, which caps the ids whatever the column holds.
            op.execute(f"ALTER SEQUENCE {table}_id_seq AS {type_}")
