"""storage.bulk.insert_rows stores exactly what SQLAlchemy's own INSERT stores (dates in the same text form on
SQLite, where the comparisons of stored moments depend on it), defaults included."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, text

from storage.bulk import insert_rows
from storage.db import write_transaction
from storage.models import PointsLot

LOT = PointsLot.__table__


def test_rows_are_stored_as_sqlalchemy_stores_them(engine):
    moment = datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))  # 00:00 UTC, no microseconds
    row = {"client_id": "C-1", "rule_id": "r", "earned_at": moment, "points": 5, "remaining": 5}
    with write_transaction(engine) as conn:
        conn.execute(insert(LOT), [{**row, "event_id": "by-sqlalchemy"}])
        insert_rows(conn, LOT, [{**row, "event_id": "by-insert-rows"}])
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT event_id, CAST(earned_at AS TEXT), points, remaining, expired "
                                   "FROM points_lot ORDER BY id")).all()
    assert tuple(stored[0][1:]) == tuple(stored[1][1:])
    assert stored[0][4] == 0  # the column's default, filled in for the rows that leave it out
