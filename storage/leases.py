"""Leases: a row per job naming who runs it until when, so replicas sharing a database take turns.

A holder renews its lease while it works; a lease not renewed in time (its holder died) can be taken
over. Works the same on SQLite and PostgreSQL: a conditional UPDATE, or an INSERT that the primary
key lets only one replica win.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import write_transaction
from storage.models import JobLease

LEASE = JobLease.__table__


def acquire(engine: Engine, name: str, holder: str, ttl: timedelta, now: datetime) -> bool:
    """Take or renew the lease `name` for `holder` until now + ttl; False if another holder's lease is live."""
    with write_transaction(engine) as conn:
        taken = conn.execute(update(LEASE).where(
            LEASE.c.name == name, (LEASE.c.holder == holder) | (LEASE.c.expires_at <= now))
            .values(holder=holder, expires_at=now + ttl)).rowcount
        if taken:
            return True
        if conn.execute(select(LEASE.c.name).where(LEASE.c.name == name)).first():
            return False
    try:
        with write_transaction(engine) as conn:
            conn.execute(insert(LEASE).values(name=name, holder=holder, expires_at=now + ttl))
        return True
    except IntegrityError:
        return False  # another replica inserted it first


def release(engine: Engine, name: str, holder: str) -> None:
    """Give the lease up, if `holder` still has it."""
    with write_transaction(engine) as conn:
        conn.execute(delete(LEASE).where(LEASE.c.name == name, LEASE.c.holder == holder))


def current(engine: Engine, name: str) -> tuple[str, datetime] | None:
    """(holder, expires_at) of the lease `name`, if any."""
    with engine.connect() as conn:
        row = conn.execute(select(LEASE.c.holder, LEASE.c.expires_at).where(LEASE.c.name == name)).first()
    return (row.holder, row.expires_at) if row else None
