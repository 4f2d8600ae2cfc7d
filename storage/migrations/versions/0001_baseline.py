"""Baseline: release 0.1's tables, indexes, constraints and append-only triggers.

The schema `init_schema` created before migrations (schema version 3), on SQLite and PostgreSQL.

A database created by that release (loyalty_meta.schema_version = 3, no alembic_version) is this
revision: `loyalty db upgrade` stamps it instead of creating it again. Written out in full, not
from the models, so later model changes never change what this revision creates.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-06
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

APPEND_ONLY_TABLES = ("ledger_entry", "processed_event", "event_reversal")


def upgrade() -> None:
    """Create the release-0.1 schema."""
    op.create_table('api_key',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('client',
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(), nullable=True),
    sa.Column('segment', sa.String(length=64), nullable=True),
    sa.Column('industry', sa.String(), nullable=True),
    sa.Column('onboarded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('points_balance', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('points_balance >= 0', name='ck_client_balance_not_negative'),
    sa.PrimaryKeyConstraint('client_id')
    )
    op.create_table('entitlement',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('use', sa.String(length=16), nullable=False),
    sa.Column('bps', sa.Integer(), nullable=False),
    sa.Column('products', sa.String(), nullable=True),
    sa.Column('detail', sa.String(), nullable=True),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('valid_to', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('rule_id', sa.String(length=96), nullable=False),
    sa.Column('programme_id', sa.String(), nullable=False),
    sa.Column('programme_version', sa.String(), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('entitlement', schema=None) as batch_op:
        batch_op.create_index('ix_entitlement_client_status', ['client_id', 'status'], unique=False)

    op.create_table('idempotency_record',
    sa.Column('caller', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('content_type', sa.String(length=100), nullable=True),
    sa.Column('response', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('caller', 'key')
    )
    op.create_table('job_lease',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('ledger_entry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('bps', sa.Integer(), nullable=False),
    sa.Column('products', sa.String(), nullable=True),
    sa.Column('detail', sa.String(), nullable=True),
    sa.Column('use', sa.String(length=16), nullable=True),
    sa.Column('rule_id', sa.String(length=96), nullable=True),
    sa.Column('programme_id', sa.String(), nullable=True),
    sa.Column('programme_version', sa.String(), nullable=True),
    sa.Column('event_id', sa.String(length=128), nullable=True),
    sa.Column('entitlement_id', sa.Integer(), nullable=True),
    sa.Column('reverses_entry_id', sa.Integer(), nullable=True),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('valid_to', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('reverses_entry_id')
    )
    with op.batch_alter_table('ledger_entry', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_cap_usage', ['client_id', 'rule_id', 'valid_from'], unique=False)
        batch_op.create_index('ix_ledger_client_id', ['client_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_entry_entitlement_id'), ['entitlement_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_entry_event_id'), ['event_id'], unique=False)
        batch_op.create_index('ux_ledger_one_consumption', ['entitlement_id'], unique=True, sqlite_where=sa.text("reason = 'consume'"), postgresql_where=sa.text("reason = 'consume'"))

    op.create_table('loyalty_meta',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('points_lot',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('rule_id', sa.String(length=96), nullable=False),
    sa.Column('earned_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('remaining', sa.BigInteger(), nullable=False),
    sa.Column('expired', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('remaining >= 0 AND expired >= 0 AND remaining + expired <= points', name='ck_points_lot_remaining'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('points_lot', schema=None) as batch_op:
        batch_op.create_index('ix_points_lot_client', ['client_id', 'earned_at'], unique=False)
        batch_op.create_index('ix_points_lot_open', ['earned_at'], unique=False, sqlite_where=sa.text('remaining > 0'), postgresql_where=sa.text('remaining > 0'))
        batch_op.create_index('ux_points_lot_source', ['event_id', 'rule_id'], unique=True)

    op.create_table('processed_event',
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=True),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('label', sa.String(length=64), nullable=True),
    sa.Column('programme_id', sa.String(), nullable=False),
    sa.Column('programme_version', sa.String(), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    with op.batch_alter_table('processed_event', schema=None) as batch_op:
        batch_op.create_index('ix_processed_event_client_type', ['client_id', 'type', 'occurred_at'], unique=False)
        batch_op.create_index('ix_processed_event_occurred', ['occurred_at'], unique=False)

    op.create_table('tier_review',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('as_of', sa.DateTime(timezone=True), nullable=False),
    sa.Column('programme_id', sa.String(), nullable=False),
    sa.Column('programme_version', sa.String(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('clients', sa.Integer(), nullable=False),
    sa.Column('upgrades', sa.Integer(), nullable=False),
    sa.Column('downgrades', sa.Integer(), nullable=False),
    sa.Column('points_expired', sa.BigInteger(), nullable=False),
    sa.Column('churn_flagged', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('churn_flag',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('tier', sa.String(length=64), nullable=False),
    sa.Column('raised_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('raised_by', sa.String(length=64), nullable=False),
    sa.Column('signals', sa.Text(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_review_id', sa.String(length=64), nullable=False),
    sa.Column('cleared_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cleared_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['client.client_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('churn_flag', schema=None) as batch_op:
        batch_op.create_index('ux_churn_flag_open', ['client_id'], unique=True, sqlite_where=sa.text('cleared_at IS NULL'), postgresql_where=sa.text('cleared_at IS NULL'))

    op.create_table('event_reversal',
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('reversed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['processed_event.event_id'], ),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('quote',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('product', sa.String(length=64), nullable=False),
    sa.Column('amount_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('pricing', sa.Text(), nullable=False),
    sa.Column('programme_id', sa.String(), nullable=False),
    sa.Column('programme_version', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('loan_id', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['client.client_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('quote', schema=None) as batch_op:
        batch_op.create_index('ix_quote_client', ['client_id', 'expires_at'], unique=False)

    op.create_table('tier_assignment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('tier', sa.String(length=64), nullable=False),
    sa.Column('previous_tier', sa.String(length=64), nullable=True),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(), nullable=False),
    sa.Column('details', sa.Text(), nullable=True),
    sa.Column('review_id', sa.String(length=64), nullable=True),
    sa.Column('programme_id', sa.String(), nullable=False),
    sa.Column('programme_version', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['client.client_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tier_assignment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tier_assignment_review_id'), ['review_id'], unique=False)
        batch_op.create_index('ux_tier_assignment_client_from', ['client_id', 'valid_from'], unique=True)

    op.create_table('tier_grace',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('tier', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('review_id', sa.String(length=64), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_by', sa.String(length=64), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['client.client_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tier_grace', schema=None) as batch_op:
        batch_op.create_index('ux_tier_grace_open', ['client_id'], unique=True, sqlite_where=sa.text('ended_at IS NULL'), postgresql_where=sa.text('ended_at IS NULL'))

    op.create_table('tier_pin',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('tier', sa.String(length=64), nullable=False),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(), nullable=False),
    sa.Column('author', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['client.client_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tier_pin', schema=None) as batch_op:
        batch_op.create_index('ix_tier_pin_client', ['client_id', 'valid_from'], unique=False)

    op.create_table('quote_hold',
    sa.Column('quote_id', sa.String(length=40), nullable=False),
    sa.Column('entitlement_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['quote_id'], ['quote.id'], ),
    sa.PrimaryKeyConstraint('quote_id', 'entitlement_id')
    )
    with op.batch_alter_table('quote_hold', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quote_hold_entitlement_id'), ['entitlement_id'], unique=False)
    _append_only_triggers()


def _append_only_triggers() -> None:
    """The database refuses UPDATE and DELETE on the ledger's tables, whatever the code does."""
    if op.get_bind().dialect.name == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: write a compensating entry'); END")
        return
    op.execute(
        "CREATE OR REPLACE FUNCTION loyalty_append_only() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION '% is append-only: write a compensating entry', TG_TABLE_NAME; END $$ "
        "LANGUAGE plpgsql")
    for table in APPEND_ONLY_TABLES:
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION loyalty_append_only()")


def downgrade() -> None:
    """No way back from the baseline: it would drop the ledger."""
    raise NotImplementedError("the baseline cannot be downgraded: it would drop the ledger")
