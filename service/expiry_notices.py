"""Warnings ahead of expiry: a points.expiring notice per lot for each window the programme names."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import Engine

from engine.programme import ProgrammeSet
from rewards.notices import Notice, notice
from service.clock import Clock, utc_now
from service.expiry import ExpiringLot, expiring
from service.retry import with_retry
from storage import clients as client_store
from storage import outbox
from storage.db import write_transaction

CHUNK = 1000  # clients a transaction


def announce_expiring(engine: Engine, programmes: ProgrammeSet, clock: Clock = utc_now) -> int:
    """Give each lot that will expire within one of the programme's `expiry_notice_days` windows its
    notice for the narrowest such window, once (a second run gives nothing new); the number of lots
    under a warning now."""
    now = clock()
    windows = sorted(programmes.for_moment(now).model.points.expiry_notice_days)
    if not windows:
        return 0
    narrowest: dict[tuple[str, str], tuple[int, ExpiringLot]] = {}
    for days in reversed(windows):  # widest first, so a narrower window overrides
        for lot in expiring(engine, programmes, now, timedelta(days=days)):
            narrowest[(lot.event_id, lot.rule_id)] = (days, lot)
    given = [_warning(days, lot, now) for days, lot in narrowest.values()]
    clients = sorted({item.client_id for item in given})
    for start in range(0, len(clients), CHUNK):
        chunk = set(clients[start:start + CHUNK])
        with_retry(lambda c=chunk: _record(engine, [item for item in given if item.client_id in c], now))
    return len(given)


def _record(engine: Engine, items: list[Notice], now: datetime) -> None:
    with write_transaction(engine) as conn:
        # The clients' locks keep each client's notices in the order of their commits.
        client_store.lock_clients(conn, sorted({item.client_id for item in items}))
        outbox.record(conn, items, now)


def _warning(days: int, lot: ExpiringLot, now: datetime) -> Notice:
    lot_key = hashlib.sha256(f"{lot.event_id}\0{lot.rule_id}".encode()).hexdigest()
    return notice("points.expiring", now, dedupe_key=f"points.expiring:{days}:{lot_key}",
                  client_id=lot.client_id, event_id=lot.event_id, rule_id=lot.rule_id, points=lot.points,
                  earned_at=datetime.fromisoformat(lot.earned_at), expires_at=datetime.fromisoformat(lot.expires_at),
                  within_days=days)
