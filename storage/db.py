"""Database set-up: engine from a URL (SQLite file by default, PostgreSQL in production) and schema creation."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

# A leaf module of exception classes only: the caller (CLI, API) turns this one into a message.
from service.errors import SettingError

from storage import models  # noqa: F401  (registers the tables)
from storage.models import APPEND_ONLY_TABLES, SCHEMA_VERSION, SchemaInfo

META = SchemaInfo.__table__

DEFAULT_URL = "sqlite:///loyalty.db"
_WRITE_OPTION = "loyalty_write"
URL_ENV = "LOYALTY_DATABASE_URL"


class SchemaMissingError(RuntimeError):
    """The database has no loyalty schema yet."""


# Every wait on the database is bounded. Two roles: the API answers callers who wait on it (short
# statements, short lock waits: a frozen database becomes a 503 within seconds) and batch work
# (commands, ingest, reviews, the scheduler, simulations) whose statements may aggregate a whole
# portfolio. Values in seconds; (environment variable, API default, batch default, upper bound).
API, BATCH = "api", "batch"
_SETTINGS = {
    "connect": ("LOYALTY_DB_CONNECT_TIMEOUT", 5.0, 5.0, 300.0),
    "statement": ("LOYALTY_{role}_STATEMENT_TIMEOUT", 5.0, 600.0, 86_400.0),
    "lock": ("LOYALTY_{role}_LOCK_TIMEOUT", 3.0, 15.0, 3_600.0),
    "pool": ("LOYALTY_{role}_POOL_TIMEOUT", 3.0, 30.0, 3_600.0),
}


@dataclass(frozen=True)
class Timeouts:
    """How long one role waits for the database: to connect, per statement, for a lock, for a pooled connection."""

    connect: float
    statement: float
    lock: float
    pool: float


def timeouts(role: str = BATCH) -> Timeouts:
    """The bounds of `role` (API or BATCH), from LOYALTY_* variables or the defaults (see README, The database)."""
    values = {}
    for name, (variable, api_default, batch_default, upper) in _SETTINGS.items():
        variable = variable.format(role=role.upper())
        raw = os.environ.get(variable)
        value = api_default if role == API else batch_default
        if raw is not None and raw.strip():
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not 0 < value <= upper:
                raise SettingError(f"{variable}={raw!r} is not a number of seconds between 0 and {upper:g}")
        values[name] = value
    return Timeouts(**values)


def database_url(explicit: str | None = None) -> str:
    """The database URL: the explicit one, else $LOYALTY_DATABASE_URL, else loyalty.db in the working directory."""
    url = explicit or os.environ.get(URL_ENV) or DEFAULT_URL
    # psycopg 3 is the driver we ship; accept the URL forms people copy from elsewhere.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str | None = None, role: str = BATCH) -> Engine:
    """An engine for `url`, configured for safe concurrent writers on SQLite and PostgreSQL, with the
    bounded waits of `role` (API or BATCH)."""
    url = database_url(url)
    bounds = timeouts(role)
    if url.startswith("sqlite"):
        # SQLite has no statement timeout; the busy timeout bounds the wait for the write lock.
        # An in-memory database has one connection per thread and no pool to wait for.
        pooled = {} if make_url(url).database in (None, "", ":memory:") else {"pool_timeout": bounds.pool}
        engine = create_engine(url, **pooled, connect_args={"timeout": bounds.lock, "check_same_thread": False})
        _configure_sqlite(engine, bounds.lock)
        return engine
    # Server-side bounds ride on the connection's start-up options, so they cost no round trip; they
    # are added to any options the URL already carries (e.g. a search_path).
    options = " ".join(filter(None, [
        make_url(url).query.get("options") or None,
        f"-c statement_timeout={int(bounds.statement * 1000)}",
        f"-c lock_timeout={int(bounds.lock * 1000)}"]))
    connect_args = {"connect_timeout": max(2, round(bounds.connect)),  # libpq's minimum is 2 s
                    # a network that drops everything (no ACKs) breaks the connection instead of hanging
                    "tcp_user_timeout": int((bounds.connect + bounds.statement) * 1000),
                    "options": options}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=bounds.pool,
                         connect_args=connect_args)


def _configure_sqlite(engine: Engine, busy_seconds: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the write lock at the start, so two writers never deadlock upgrading a read
        # lock; readers begin deferred and, under WAL, never wait for a writer.
        writes = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def init_schema(engine: Engine) -> None:
    """Create the tables and the append-only triggers (safe to run again on a database of this version)."""
    if inspect(engine).has_table("ledger_entry"):
        require_schema(engine)  # never paper over a database of another schema version
    SQLModel.metadata.create_all(engine)
    with write_transaction(engine) as conn:
        if conn.execute(select(META.c.value).where(META.c.key == "schema_version")).first() is None:
            conn.execute(insert(META).values(key="schema_version", value=SCHEMA_VERSION))
        if engine.dialect.name == "sqlite":
            for table in APPEND_ONLY_TABLES:
                for action in ("UPDATE", "DELETE"):
                    conn.exec_driver_sql(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{action.lower()} BEFORE {action} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: write a compensating entry'); END")
        else:
            conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION loyalty_append_only() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION '%% is append-only: write a compensating entry', TG_TABLE_NAME; END $$ "
                "LANGUAGE plpgsql")
            for table in APPEND_ONLY_TABLES:
                conn.exec_driver_sql(
                    f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION loyalty_append_only()")


def require_schema(engine: Engine) -> None:
    """Raise SchemaMissingError, saying what to do, unless the database has this version's schema."""
    where = engine.url.render_as_string(hide_password=True)
    if not inspect(engine).has_table("ledger_entry"):
        raise SchemaMissingError(f"no loyalty schema in {where}; run `loyalty init` first")
    version = None
    if inspect(engine).has_table(META.name):
        with engine.connect() as conn:
            version = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
    if version != SCHEMA_VERSION:
        raise SchemaMissingError(
            f"{where} has loyalty schema version {version or 'from before versioning'}, this program needs "
            f"version {SCHEMA_VERSION}; use a new database (run `loyalty init` on it): there is no "
            "migration between pre-release schemas")


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction whose statements all see one moment (PostgreSQL: REPEATABLE READ)."""
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        yield conn


@contextmanager
def autocommit_reads(engine: Engine) -> Iterator[Connection]:
    """A connection for reads of one statement each (a statement sees one snapshot by itself): on
    PostgreSQL no BEGIN and COMMIT, two round trips fewer."""
    options = {"isolation_level": "AUTOCOMMIT"} if engine.dialect.name == "postgresql" else {}
    with engine.connect().execution_options(**options) as conn:
        yield conn


# The write transaction of the request being served, if it has one (see `RequestTransaction`).
# Context variables follow the request into the worker threads that run its routes.
_AMBIENT: ContextVar[Connection | None] = ContextVar("loyalty_ambient_write", default=None)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction that commits on success and rolls back on any error. Inside a request
    transaction on the same engine it is a savepoint of that transaction instead: its work commits
    or rolls back with the request's, and an error undoes only its own part."""
    ambient = _AMBIENT.get()
    if ambient is not None and ambient.engine is engine:
        with ambient.begin_nested():
            yield ambient
        return
    with engine.connect().execution_options(**{_WRITE_OPTION: True}) as conn, conn.begin():
        yield conn


class RequestTransaction:
    """One write transaction spanning a whole request: opened, then made ambient while the request
    runs (every `write_transaction` on the engine nests in it), then committed or rolled back whole.
    Used by the API so an idempotency record commits if and only if the work it records does."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.conn = engine.connect().execution_options(**{_WRITE_OPTION: True})
        try:
            self.conn.begin()
        except BaseException:
            self.conn.close()
            raise

    @contextmanager
    def ambient(self) -> Iterator[Connection]:
        """Make this transaction the one `write_transaction` joins, for the code run inside the block."""
        token = _AMBIENT.set(self.conn)
        try:
            yield self.conn
        finally:
            _AMBIENT.reset(token)

    def commit(self) -> None:
        """Commit everything the request wrote, and give the connection back."""
        try:
            self.conn.commit()
        finally:
            self.conn.close()

    def rollback(self) -> None:
        """Undo everything the request wrote, and give the connection back (never raises: it is cleanup)."""
        try:
            self.conn.rollback()
        except Exception:  # noqa: BLE001 - a broken connection rolls back by closing
            pass
        finally:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
