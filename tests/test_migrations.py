"""Schema migrations: a release-0.1 database with real data upgraded to head, refusals of databases behind
or ahead of the program, two upgraders at once, the models and the migrations in agreement (on both
databases: this is CI's drift check), and database URLs the program cannot use."""
from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel
from typer.testing import CliRunner

from cli.main import app
from demo.run import run_demo
from storage import migrations
from storage.db import init_schema, make_engine, write_transaction
from storage.models import SCHEMA_REVISIONS, SCHEMA_VERSION, EventReversal, LedgerEntry, ProcessedEvent, SchemaInfo

RUNNER = CliRunner()
BASELINE = SCHEMA_REVISIONS[0]
APPEND_ONLY = ("ledger_entry", "processed_event", "event_reversal")


def loyalty(db_url: str, *args: str, code: int = 0) -> dict | list:
    """Run a command in process with --json; check its exit status; the parsed answer."""
    result = RUNNER.invoke(app, ["--db", db_url, *args, "--json"])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def at_baseline(db_url: str, before_migrations: bool = False):
    """An engine on a database at the baseline revision; `before_migrations`: as release 0.1's
    init_schema left it (no alembic_version; loyalty_meta.schema_version 3)."""
    engine = make_engine(db_url)
    with write_transaction(engine) as conn:
        migrations.upgrade(conn, target=BASELINE)
        if before_migrations:
            conn.execute(text("DROP TABLE alembic_version"))
            conn.execute(SchemaInfo.__table__.insert().values(key="schema_version", value="3"))
    return engine


@contextlib.contextmanager
def newer_tables(engine):
    """While today's code writes data into a baseline database: the tables added since, dropped afterwards."""
    with write_transaction(engine) as conn:
        existing = set(inspect(conn).get_table_names())
        newer = [table for table in SQLModel.metadata.sorted_tables if table.name not in existing]
        for table in newer:
            table.create(conn)
    yield
    with write_transaction(engine) as conn:
        for table in reversed(newer):
            table.drop(conn)


def snapshot(engine) -> dict:
    """Everything an upgrade must keep: balances, entitlements, points lots and every ledger entry."""
    with engine.connect() as conn:
        return {table: sorted(map(tuple, conn.execute(text(f"SELECT * FROM {table}")).all()), key=repr)
                for table in ("client", "entitlement", "points_lot", "ledger_entry", "tier_assignment")}


def test_release_0_1_database_with_data_is_upgraded_to_head(db_url, programmes):
    engine = at_baseline(db_url, before_migrations=True)
    with newer_tables(engine):  # the demo runs today's code (a review records its pages)
        run_demo(engine, programmes, clients=12, months=6, seed=3)
    before = snapshot(engine)
    assert before["ledger_entry"] and before["tier_assignment"]

    refused = loyalty(db_url, "ledger", "verify", code=2)["error"]
    assert f"revision {BASELINE} (created before migrations), this program needs {SCHEMA_VERSION}" in refused
    assert "run `loyalty db upgrade`" in refused
    assert loyalty(db_url, "db", "current", code=1)["status"] == "behind"
    assert loyalty(db_url, "init", code=2)  # init creates; upgrading a live database is deliberate

    upgraded = loyalty(db_url, "db", "upgrade")
    assert (upgraded["from_revision"], upgraded["to_revision"], upgraded["upgraded"]) == (BASELINE, SCHEMA_VERSION, True)
    again = loyalty(db_url, "db", "upgrade")
    assert (again["from_revision"], again["upgraded"]) == (SCHEMA_VERSION, False)

    assert snapshot(engine) == before
    assert loyalty(db_url, "ledger", "verify") == {"ok": True, "problems": []}
    for client_id, balance in [(row[0], row[6]) for row in before["client"]][:3]:
        assert loyalty(db_url, "benefits", client_id)["points_balance"] == balance
    with engine.connect() as conn:  # Alembic's record replaced release 0.1's
        assert conn.execute(select(SchemaInfo.__table__.c.key)).scalars().all() == []
    assert_append_only(engine)
    engine.dispose()


def test_behind_and_ahead_are_refused(db_url):
    engine = at_baseline(db_url)
    behind = loyalty(db_url, "benefits", "C-1", code=2)["error"]
    assert f"at schema revision {BASELINE}, this program needs {SCHEMA_VERSION}: run `loyalty db upgrade`" in behind
    loyalty(db_url, "ingest", str(Path(__file__).parent.parent / "examples" / "sample_events.jsonl"), code=2)
    loyalty(db_url, "db", "upgrade")
    with write_transaction(engine) as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    for command in (["benefits", "C-1"], ["init"], ["db", "upgrade"]):
        ahead = loyalty(db_url, *command, code=2)["error"]
        assert f"at schema revision 0099_future, newer than this program's {SCHEMA_VERSION}" in ahead, command
    assert loyalty(db_url, "db", "current", code=1) == {
        "database": make_engine(db_url).url.render_as_string(hide_password=True), "revision": "0099_future",
        "head": SCHEMA_VERSION, "status": "ahead"}
    engine.dispose()


def test_two_upgrades_at_once_one_migrates_the_other_finds_head(db_url):
    engines = [make_engine(db_url) for _ in range(3)]
    start = threading.Barrier(len(engines))
    results, errors = [], []

    def upgrade(engine) -> None:
        start.wait()
        try:
            results.append(init_schema(engine))
        except Exception as exc:  # noqa: BLE001 - collected and shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r.from_revision or "" for r in results) == ["", SCHEMA_VERSION, SCHEMA_VERSION]
    assert {r.to_revision for r in results} == {SCHEMA_VERSION}
    for engine in engines:
        engine.dispose()


def test_models_and_migrations_agree(engine):
    """CI's drift check: the models describe exactly what the migrations build, on this database."""
    with engine.connect() as conn:
        assert migrations.drift(conn) == []
        if engine.dialect.name == "postgresql":  # a SERIAL's sequence caps its ids whatever the column's type
            sequences = conn.execute(text("SELECT sequencename, data_type FROM pg_sequences "
                                          "WHERE schemaname = current_schema()")).all()
            assert sequences and {data_type for _, data_type in sequences} == {"bigint"}, sequences
    assert_append_only(engine)


def test_the_shipped_revisions_are_the_ones_the_program_knows():
    revisions = migrations.history()
    assert tuple(r.revision for r in revisions) == SCHEMA_REVISIONS
    assert [r.down_revision for r in revisions] == [None, *SCHEMA_REVISIONS[:-1]]  # one line, no branches
    listed = loyalty("sqlite://", "db", "history")
    assert [(r["revision"], r["head"]) for r in listed] == [(r, r == SCHEMA_VERSION) for r in SCHEMA_REVISIONS]


def assert_append_only(engine) -> None:
    """The database itself refuses to change or delete rows of the ledger's tables."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    with write_transaction(engine) as conn:
        conn.execute(ProcessedEvent.__table__.insert().values(
            event_id="e-append", client_id="C-append", type="t", occurred_at=moment, content_hash="h", payload="{}",
            programme_id="p", programme_version="1", processed_at=moment))
        conn.execute(EventReversal.__table__.insert().values(event_id="e-append", reversed_at=moment))
        conn.execute(LedgerEntry.__table__.insert().values(
            client_id="C-append", kind="points", reason="earn", points=1, valid_from=moment, created_at=moment))
    for table in APPEND_ONLY:
        for statement in (f"UPDATE {table} SET reason = reason" if table != "processed_event" else
                          f"UPDATE {table} SET type = type", f"DELETE FROM {table}"):
            with pytest.raises(DBAPIError, match="append-only"), write_transaction(engine) as conn:
                conn.execute(text(statement))


@pytest.mark.parametrize("url", ["mysql://loyalty:secret@db/loyalty", "postgresql+psycopg2://db/loyalty", "foo://",
                                 "not a url at all"])
@pytest.mark.parametrize("how", ["--db", "env"])
def test_a_database_url_the_program_cannot_use_is_one_line(url, how, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOYALTY_DATABASE_URL", raising=False)
    args, env = (["--db", url], {}) if how == "--db" else ([], {"LOYALTY_DATABASE_URL": url})
    result = RUNNER.invoke(app, [*args, "benefits", "C-1"], env=env)
    assert result.exit_code == 2, (result.output, result.exception)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert "sqlite:///path/to/loyalty.db or postgresql://user@host:5432/dbname" in message
    assert "secret" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_failed_read_leaves_no_database_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOYALTY_DATABASE_URL", raising=False)
    for command in (["benefits", "C-1"], ["ledger", "verify"], ["db", "current"], ["apikey", "list"]):
        result = RUNNER.invoke(app, command)
        assert result.exit_code in (1, 2) and "run `loyalty init`" in result.stdout + result.stderr, command
    assert list(tmp_path.iterdir()) == []
    assert RUNNER.invoke(app, ["init"]).exit_code == 0 and (tmp_path / "loyalty.db").exists()
