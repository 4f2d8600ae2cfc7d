"""The read behind a benefits answer: one statement, so one snapshot and one round trip on PostgreSQL.

The benefits query is the hot path of loan systems pricing an application. It reads the client's
balance, its tier at the moment, and its entitlements with any live quote holding them, in a single
statement built once at import (building one costs more than running it).

The statement runs on the pooled driver connection, compiled once per dialect, with the conversions
SQLAlchemy would apply to its moments: SQLAlchemy's own execution of it (a Connection, its transaction,
the execution context, result rows) cost three times the statement on SQLite. Driver errors are
raised as SQLAlchemy's, as `Connection.execute` raises them, and a connection found broken is dropped.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Dialect, Engine, and_, bindparam, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

from rewards.stacking import Entitlement
from storage.ledger import CLIENT, ENTITLEMENT, HELD_STATUSES, to_entitlement
from storage.models import TierAssignment
from storage.quotes import HOLD, QUOTE
from storage.types import UTCDateTime

TIER = TierAssignment.__table__
_CLIENT_ID = bindparam("client_id")
_AT = bindparam("at", type_=UTCDateTime())
# Fixed parameters, not an expanding IN: the statement's SQL is then rendered once, not per execution.
_HELD = [bindparam(f"held_{status}", str(status)) for status in HELD_STATUSES]

_TIER_AT = select(TIER.c.tier).where(TIER.c.client_id == _CLIENT_ID, TIER.c.valid_from <= _AT) \
    .order_by(TIER.c.valid_from.desc(), TIER.c.id.desc()).limit(1).scalar_subquery()

_LIVE_HOLDS = select(HOLD.c.entitlement_id, QUOTE.c.id.label("quote_id")) \
    .join(QUOTE, QUOTE.c.id == HOLD.c.quote_id) \
    .where(QUOTE.c.client_id == _CLIENT_ID, QUOTE.c.expires_at > _AT,
           or_(QUOTE.c.resolved_at.is_(None), QUOTE.c.resolved_at > _AT)).subquery()

_HOLDINGS = select(CLIENT.c.points_balance, _TIER_AT.label("tier_at"), ENTITLEMENT, _LIVE_HOLDS.c.quote_id) \
    .select_from(CLIENT.outerjoin(ENTITLEMENT, and_(ENTITLEMENT.c.client_id == CLIENT.c.client_id,
                                                    ENTITLEMENT.c.status.in_(_HELD)))
                 .outerjoin(_LIVE_HOLDS, _LIVE_HOLDS.c.entitlement_id == ENTITLEMENT.c.id)) \
    .where(CLIENT.c.client_id == _CLIENT_ID).order_by(ENTITLEMENT.c.id)
_COLUMNS = tuple(column.key for column in _HOLDINGS.selected_columns)  # points_balance, tier_at, then per entitlement
_MOMENTS = ("valid_from", "valid_to")  # the UTCDateTime columns among them


@dataclass(frozen=True)
class Holdings:
    """A client's balance, tier and held entitlements at a moment, with the quotes holding some of them."""

    points_balance: int
    tier: str | None  # None before the client's first tier assignment
    held: list[Entitlement]  # active and revoked; the caller applies validity windows
    reserved: dict[int, str]  # entitlement id → the live quote holding it


@dataclass(frozen=True)
class _Compiled:
    """The statement as one dialect's driver takes it, and SQLAlchemy's conversions of its moments there."""

    sql: str
    names: tuple[str, ...] | None  # the parameters in order, for a driver taking them by position
    fixed: dict[str, object]
    moment_in: Callable[[datetime], object]
    moment_out: Callable[[object], datetime | None]

    def parameters(self, client_id: str, at: datetime) -> dict | list:
        """The statement's parameters for `client_id` at `at`, as the driver takes them."""
        values = {**self.fixed, "client_id": client_id, "at": self.moment_in(at)}
        return values if self.names is None else [values[name] for name in self.names]


_COMPILED: dict[tuple[str, str], _Compiled] = {}


def _compiled(dialect: Dialect) -> _Compiled:
    key = (dialect.name, dialect.driver)
    if key not in _COMPILED:
        compiled = _HOLDINGS.compile(dialect=dialect)
        moment = UTCDateTime().dialect_impl(dialect)
        _COMPILED[key] = _Compiled(compiled.string, tuple(compiled.positiontup) if compiled.positiontup else None,
                                   {name: value for name, value in compiled.params.items()
                                    if name not in ("client_id", "at")},
                                   moment.bind_processor(dialect) or (lambda value: value),
                                   moment.result_processor(dialect, None) or (lambda value: value))
    return _COMPILED[key]


def client_holdings(conn: Connection, client_id: str, at: datetime) -> Holdings | None:
    """What a client holds at `at`, or None if there is no such client; read in the transaction `conn` has begun
    (as `write_transaction` and `read_snapshot` begin theirs: the statement bypasses SQLAlchemy's autobegin).

    A hold lives until its quote is committed, voided or expires; quotes made after `at` count too:
    holds are about now, and a host whose clock is behind another's must still see the other's holds.
    """
    return _read(conn.connection, conn.dialect, client_id, at)


def read_holdings(engine: Engine, client_id: str, at: datetime) -> Holdings | None:
    """`client_holdings` read alone, outside any transaction: the one statement sees one snapshot by itself
    (on PostgreSQL in autocommit, without BEGIN and ROLLBACK round trips)."""
    raw = engine.raw_connection()
    try:
        with _autocommit(raw, engine.dialect):
            return _read(raw, engine.dialect, client_id, at)
    finally:
        raw.close()


@contextmanager
def _autocommit(raw: PoolProxiedConnection, dialect: Dialect) -> Iterator[None]:
    if dialect.name != "postgresql":  # SQLite's driver is left in autocommit (storage.db): nothing to do
        yield
        return
    dialect.set_isolation_level(raw.dbapi_connection, "AUTOCOMMIT")
    try:
        yield
    finally:
        if raw.is_valid:
            dialect.reset_isolation_level(raw.dbapi_connection)


def _read(raw: PoolProxiedConnection, dialect: Dialect, client_id: str, at: datetime) -> Holdings | None:
    compiled = _compiled(dialect)
    parameters = compiled.parameters(client_id, at)
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(compiled.sql, parameters)
            rows = cursor.fetchall()
        finally:
            cursor.close()
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, raw, None)
        if lost:
            raw.invalidate(exc)
        raise DBAPIError.instance(compiled.sql, parameters, exc, dialect.loaded_dbapi.Error,
                                  connection_invalidated=lost, dialect=dialect) from exc
    if not rows:
        return None
    held: dict[int, Entitlement] = {}
    reserved: dict[int, str] = {}
    for row in rows:
        record = dict(zip(_COLUMNS, row))
        if record["id"] is None:  # the client holds nothing: one row, from the outer join
            continue
        if record["id"] not in held:
            for name in _MOMENTS:
                record[name] = compiled.moment_out(record[name])
            held[record["id"]] = to_entitlement(record)
        if record["quote_id"] is not None:
            reserved.setdefault(record["id"], record["quote_id"])
    points_balance, tier = rows[0][:2]
    return Holdings(points_balance, tier, list(held.values()), reserved)
