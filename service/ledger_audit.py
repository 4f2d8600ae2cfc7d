"""The ledger as the CLI reads it whole: a client's entries, and the replay that checks the projections."""
from __future__ import annotations

from sqlalchemy import Engine

from storage import ledger, metric_totals
from storage.db import read_snapshot


def verify_ledger(engine: Engine) -> list[str]:
    """Replay the ledger and list every mismatch with balances, entitlements and points lots, and rebuild the
    clients' monthly metric totals from the events and list where they differ (none: consistent)."""
    with read_snapshot(engine) as conn:
        return ledger.verify(conn) + metric_totals.mismatches(conn)


def ledger_entries(engine: Engine, client_id: str, limit: int) -> list[dict]:
    """A client's ledger entries, newest first."""
    with read_snapshot(engine) as conn:
        return ledger.client_entries(conn, client_id, limit=limit)
