"""Database set-up: engine from a URL (SQLite file by default, PostgreSQL in production) and schema creation."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables)
from storage.models import APPEND_ONLY_TABLES, SCHEMA_VERSION, SchemaInfo

META = SchemaInfo.__table__

DEFAULT_URL = "sqlite:///loyalty.db"
_WRITE_OPTION = "loyalty_write"
URL_ENV = "LOYALTY_DATABASE_URL"


class SchemaMissingError(RuntimeError):
    """The database has no loyalty schema yet."""


def database_url(explicit: str | None = None) -> str:
    """The database URL: the explicit one, else $LOYALTY_DATABASE_URL, else loyalty.db in the working directory."""
    url = explicit or os.environ.get(URL_ENV) or DEFAULT_URL
    # psycopg 3 is the driver we ship; accept the URL forms people copy from elsewhere.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url`, configured for safe concurrent writers on SQLite and PostgreSQL."""
    url = database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
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


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction that commits on success and rolls back on any error."""
    with engine.connect().execution_options(**{_WRITE_OPTION: True}) as conn, conn.begin():
        yield conn
