"""Database set-up: engine from a URL (SQLite file by default, PostgreSQL in production), the schema's
revision check, and upgrades to head (the migrations in storage/migrations) under a lock."""
from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, delete, event, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

# A leaf module of exception classes only: the caller (CLI, API) turns this one into a message.
from service.errors import SettingError

from storage import models  # noqa: F401  (registers the tables)
from storage.models import SCHEMA_REVISIONS, SCHEMA_VERSION, SchemaInfo

META = SchemaInfo.__table__

DEFAULT_URL = "sqlite:///loyalty.db"
_WRITE_OPTION = "loyalty_write"
URL_ENV = "LOYALTY_DATABASE_URL"
SUPPORTED_URLS = ("sqlite:///path/to/loyalty.db or postgresql://user@host:5432/dbname "
                  "(also written postgresql+psycopg://: the psycopg 3 driver)")
_DRIVERS = ("sqlite", "postgresql+psycopg")

VERSION_TABLE = "alembic_version"  # Alembic's record of the revision a database is at
BASELINE = SCHEMA_REVISIONS[0]
# What `init_schema` recorded in loyalty_meta before there were migrations: that schema is the baseline.
_BEFORE_MIGRATIONS_VERSION = "3"
# pg_advisory_lock's first key: "loyalty schema" (the second is the schema's name, hashed).
_MIGRATION_LOCK = 0x10A1_7E5C


class SchemaMissingError(RuntimeError):
    """The database has no loyalty schema at the revision this program needs (the message says what to do)."""


class SchemaBusyError(RuntimeError):
    """Another upgrade held the migration lock for longer than this one may wait."""


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
    """The database URL: the explicit one, else $LOYALTY_DATABASE_URL, else loyalty.db in the working
    directory. Raises SettingError, naming the supported forms, for any other kind of URL."""
    url = explicit or os.environ.get(URL_ENV) or DEFAULT_URL
    # psycopg 3 is the driver we ship; accept the URL forms people copy from elsewhere.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingError(f"--db (or {URL_ENV}) is not a database URL; use {SUPPORTED_URLS}") from None
    if parsed.drivername not in _DRIVERS:
        shown = parsed.render_as_string(hide_password=True)[:80]
        raise SettingError(f"--db (or {URL_ENV}) {shown!r} is not a supported database URL; use {SUPPORTED_URLS}")
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
        _configure_sqlite(engine, bounds.lock, SQLITE_CACHE_KIB[role])
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


# SQLite's page cache per connection, KiB: its 2 MiB default makes a batch writer read the same index
# pages from the file again and again once the database outgrows it. A batch process has a connection or
# two; a server has a pool of them, so it keeps a smaller one.
SQLITE_CACHE_KIB = {BATCH: 64 * 1024, API: 8 * 1024}


def _configure_sqlite(engine: Engine, busy_seconds: float, cache_kib: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        _enter_wal(cursor, busy_seconds)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA cache_size=-{cache_kib}")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the write lock at the start, so two writers never deadlock upgrading a read
        # lock; readers begin deferred and, under WAL, never wait for a writer.
        writes = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _enter_wal(cursor: sqlite3.Cursor, busy_seconds: float) -> None:
    """Put the database in WAL mode, retrying within the busy timeout while another connection holds it."""
    # A new database file enters WAL mode on its first write; a second connection switching it at the
    # same moment gets "database is locked" at once (SQLite skips the busy handler where waiting could
    # deadlock), so the switch is retried here rather than failing that connection.
    deadline = time.monotonic() + busy_seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands: its revision (None: no loyalty schema), and whether it was
    created before migrations (the baseline without Alembic's record, stamped by the next upgrade)."""

    revision: str | None
    before_migrations: bool = False


@dataclass(frozen=True)
class SchemaUpgrade:
    """What an upgrade did: the revisions before and after, and how long it took."""

    database: str
    from_revision: str | None
    to_revision: str
    seconds: float


def where(engine: Engine) -> str:
    """The database's URL as messages show it (no password)."""
    return engine.url.render_as_string(hide_password=True)


def schema_state(conn: Connection) -> SchemaState:
    """The revision the database is at, read without Alembic (so every command checks it cheaply)."""
    inspector = inspect(conn)
    if inspector.has_table(VERSION_TABLE):
        revisions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        return SchemaState(",".join(sorted(revisions)) or None)
    if not inspector.has_table("ledger_entry"):
        return SchemaState(None)
    version = None
    if inspector.has_table(META.name):
        version = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
    if version == _BEFORE_MIGRATIONS_VERSION:
        return SchemaState(BASELINE, before_migrations=True)
    raise SchemaMissingError(
        f"{where(conn.engine)} has a pre-release loyalty schema (version {version or 'from before versioning'}) "
        "that no migration upgrades; use a new database (run `loyalty init` on it)")


def database_revision(engine: Engine) -> SchemaState:
    """Where the database's schema stands; a SQLite file that does not exist is empty (and is not created)."""
    if _sqlite_file_missing(engine):  # connecting would leave an empty database file behind
        return SchemaState(None)
    with autocommit_reads(engine) as conn:
        return schema_state(conn)


def require_schema(engine: Engine) -> None:
    """Raise SchemaMissingError, saying what to do, unless the database is at the revision this program needs."""
    state = database_revision(engine)
    if state.revision is None:
        raise SchemaMissingError(f"no loyalty schema in {where(engine)}; run `loyalty init` first")
    _refuse_unknown(engine, state)
    if state.revision != SCHEMA_VERSION:
        created = " (created before migrations)" if state.before_migrations else ""
        raise SchemaMissingError(
            f"{where(engine)} is at schema revision {state.revision}{created}, this program needs {SCHEMA_VERSION}: "
            "run `loyalty db upgrade`")


def _refuse_unknown(engine: Engine, state: SchemaState) -> None:
    if state.revision is not None and state.revision not in SCHEMA_REVISIONS:
        raise SchemaMissingError(
            f"{where(engine)} is at schema revision {state.revision}, newer than this program's {SCHEMA_VERSION}: "
            "a newer release upgraded it; run that release (this one would misread the data)")


def _sqlite_file_missing(engine: Engine) -> bool:
    database = engine.url.database
    return (engine.dialect.name == "sqlite" and database not in (None, "", ":memory:")
            and not Path(database).exists())


def init_schema(engine: Engine) -> SchemaUpgrade:
    """Upgrade the schema to head, creating it on an empty database, under the migration lock: a second
    upgrader waits, then finds the database at head. Safe to run again; refuses a newer database."""
    began = time.perf_counter()
    with _migration_lock(engine) as conn:
        state = schema_state(conn)
        _refuse_unknown(engine, state)
        if state.revision != SCHEMA_VERSION:
            # Imported here: Alembic and the revisions load only when the schema changes, not at every start.
            from storage import migrations

            migrations.upgrade(conn, stamp_first=BASELINE if state.before_migrations else None)
            if state.before_migrations:  # Alembic's record replaces it
                conn.execute(delete(META).where(META.c.key == "schema_version"))
    return SchemaUpgrade(where(engine), state.revision, SCHEMA_VERSION, time.perf_counter() - began)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A transaction that only one upgrader of the database holds at a time."""
    if engine.dialect.name == "sqlite":
        # BEGIN IMMEDIATE takes the write lock; another upgrader waits for it (the busy timeout) and
        # then reads the revision this one committed.
        with write_transaction(engine) as conn:
            yield conn
        return
    wait = timeouts(BATCH).statement  # another upgrader may be running a statement of up to this long
    # A session-level advisory lock per schema (replicas of one database share it), held across the
    # upgrade's own transaction; its wait is bounded by a lock timeout of the transaction that takes it.
    key = (_MIGRATION_LOCK, func.hashtext(func.current_schema()))
    with engine.connect() as conn:
        try:
            conn.execute(text(f"SET LOCAL lock_timeout = {int(wait * 1000)}"))
            conn.execute(select(func.pg_advisory_lock(*key)))
            conn.commit()
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            raise SchemaBusyError(
                f"another upgrade of {where(engine)} has held the migration lock for over {wait:g} s "
                "(LOYALTY_BATCH_STATEMENT_TIMEOUT); wait for it to finish, then run `loyalty db upgrade` again") from None
        try:
            with conn.begin():
                # A migration rewrites whole tables (0002 rewrites the ledger): its statements take as long as
                # the data is large, so the batch statement bound does not apply; waits for locks still do
                # (services left running make the upgrade fail fast instead of queueing behind them).
                conn.execute(text("SET LOCAL statement_timeout = 0"))
                yield conn
        finally:
            try:
                conn.execute(select(func.pg_advisory_unlock(*key)))
                conn.commit()
            except Exception:  # noqa: BLE001 - a broken session: closing it for good releases the lock
                conn.invalidate()


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


# The write transaction of the request being served, if it has one (see `RequestTransaction`), and what to
# do once it commits. Context variables follow the request into the worker threads that run its routes (a
# copy of the context: hence a list that is appended to, not a variable that is set there).
_AMBIENT: ContextVar[Connection | None] = ContextVar("loyalty_ambient_write", default=None)
_AFTER_COMMIT: ContextVar[list[Callable[[], None]] | None] = ContextVar("loyalty_after_commit", default=None)


def after_commit(action: Callable[[], None]) -> None:
    """Run `action` once what was written so far is committed: at once outside a request transaction (the
    caller's own transactions have ended), else when the request's transaction commits; never if it rolls back."""
    pending = _AFTER_COMMIT.get()
    if pending is None:
        action()
    else:
        pending.append(action)


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
        self._after_commit: list[Callable[[], None]] = []
        self.conn = engine.connect().execution_options(**{_WRITE_OPTION: True})
        try:
            self.conn.begin()
        except BaseException:
            self.conn.close()
            raise

    @contextmanager
    def ambient(self) -> Iterator[Connection]:
        """Make this transaction the one `write_transaction` joins, for the code run inside the block."""
        token, after = _AMBIENT.set(self.conn), _AFTER_COMMIT.set(self._after_commit)
        try:
            yield self.conn
        finally:
            _AFTER_COMMIT.reset(after)
            _AMBIENT.reset(token)

    def commit(self) -> None:
        """Commit everything the request wrote, and give the connection back."""
        try:
            self.conn.commit()
        finally:
            self.conn.close()
        for action in self._after_commit:
            action()

    def rollback(self) -> None:
        """Undo everything the request wrote, and give the connection back (never raises: it is cleanup)."""
        self._after_commit.clear()
        try:
            self.conn.rollback()
        except Exception:  # noqa: BLE001 - a broken connection rolls back by closing
            pass
        finally:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
