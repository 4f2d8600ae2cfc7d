"""Churn flags for people and scripts: open ones (or all, with history), most valuable first."""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Engine

from engine.events import minor_unit_exponent
from service.answer import Answer, Moment
from service.profile import ChurnSignalAnswer
from storage import standing
from storage.db import read_snapshot


class FlaggedClient(Answer):
    """A client flagged at risk of leaving: its signals, when raised (and cleared) and by which review."""

    client_id: str
    name: str | None
    tier: str
    loan_volume: str
    signals: list[ChurnSignalAnswer]
    raised_at: Moment
    raised_by: str
    last_seen_at: Moment
    last_review_id: str
    cleared_at: Moment | None
    cleared_by: str | None


def churn_list(engine: Engine, currency: str, tier: str | None = None, history: bool = False,
               client_id: str | None = None) -> list[FlaggedClient]:
    """Churn flags with their signals; loan volume in `currency` units, timestamps as ISO text."""
    scale = Decimal(1).scaleb(-minor_unit_exponent(currency))
    with read_snapshot(engine) as conn:
        rows = standing.flags(conn, tier=tier, history=history, client_id=client_id)
    return [FlaggedClient.model_validate({
        "client_id": row["client_id"], "name": row["name"], "tier": row["tier"],
        "loan_volume": str(Decimal(row["value"]) * scale), "signals": row["signals"],
        "raised_at": row["raised_at"].isoformat(), "raised_by": row["raised_by"],
        "last_seen_at": row["last_seen_at"].isoformat(), "last_review_id": row["last_review_id"],
        "cleared_at": row["cleared_at"].isoformat() if row["cleared_at"] else None,
        "cleared_by": row["cleared_by"]}) for row in rows]
