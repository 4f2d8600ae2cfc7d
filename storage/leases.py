"""Leases: a row per job naming who runs it until when, so replicas sharing a database take turns.

A holder renews its lease while it works; a lease not renewed in time (its holder died) can be taken
over. Works the same on SQLite and PostgreSQL: an INSERT that the primary key lets only one replica
win, or else an UPDATE on the condition that the lease is the holder's own or has lapsed.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.db import write_transaction
from storage.models import JobLease

LEASE = JobLease.__table__
_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def acquire(engine: Engine, name: str, holder: str, ttl: timedelta, now: datetime) -> bool:
    """Take or renew the lease `name` for `holder` until now + ttl; False if another holder's lease is live."""
    with write_transaction(engine) as conn:
        return take(conn, name, holder, ttl, now)


def take(conn: Connection, name: str, holder: str, ttl: timedelta, now: datetime) -> bool:
    """`acquire` in the caller's transaction (on PostgreSQL the lease's row stays locked until it ends)."""
    insert = _INSERT[conn.dialect.name](LEASE).values(name=name, holder=holder, expires_at=now + ttl)
    # One statement: a lease row that another transaction inserts meanwhile is then renewed if it is
    # this holder's, never reported as someone else's.
    upsert = insert.on_conflict_do_update(
        index_elements=[LEASE.c.name], set_={"holder": insert.excluded.holder, "expires_at": insert.excluded.expires_at},
        where=(LEASE.c.holder == holder) | (LEASE.c.expires_at <= now))
    return conn.execute(upsert.returning(LEASE.c.name)).first() is not None  # a row: inserted or renewed


def release(engine: Engine, name: str, holder: str) -> None:
    """Give the lease up, if `holder` still has it."""
    with write_transaction(engine) as conn:
        conn.execute(delete(LEASE).where(LEASE.c.name == name, LEASE.c.holder == holder))


def current(engine: Engine, name: str) -> tuple[str, datetime] | None:
    """(holder, expires_at) of the lease `name`, if any."""
    with engine.connect() as conn:
        row = conn.execute(select(LEASE.c.holder, LEASE.c.expires_at).where(LEASE.c.name == name)).first()
    return (row.holder, row.expires_at) if row else None
