"""Programme versions: `loyalty rules activate`, the rules watcher, hot reload in a running `loyalty serve`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from engine import matching
from service.activation import Candidate, install
from service.clock import utc_now
from service.rules_watcher import RulesWatcher
from storage import outbox
from storage.db import make_engine, read_snapshot
from storage.models import LedgerEntry, ProcessedEvent
from tests.conftest import RULES, ROOT, cli_json, event, ndjson, run_cli
from tests.api_support import running_server

SHIPPED = (RULES / "corporate_lending.yaml").read_text(encoding="utf-8")


def version_text(version: str, start: datetime, client_day_points: int = 500) -> str:
    """The shipped programme as another version: its own label and start, optionally other client-day points."""
    stamp = start.isoformat().replace("+00:00", "Z")
    changed = (SHIPPED.replace('version: "2026.1"', f'version: "{version}"')
               .replace("effective_from: 2025-01-01T00:00:00Z", f"effective_from: {stamp}")
               .replace("      points: 500\n", f"      points: {client_day_points}\n"))
    assert changed.count(f'"{version}"') == 1 and stamp in changed
    return changed


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    """A rules directory holding the shipped version and its rule tests."""
    directory = tmp_path / "rules"
    directory.mkdir()
    shutil.copy(RULES / "corporate_lending.yaml", directory)
    if (RULES / "tests").is_dir():
        shutil.copytree(RULES / "tests", directory / "tests")
    return directory


# --- the watcher --------------------------------------------------------------------------------------

def test_the_watcher_installs_a_new_version_whole_and_refuses_a_broken_one(rules_dir):
    watcher = RulesWatcher(rules_dir, settle=0)
    first = watcher.current()
    assert [v.version for v in first.versions] == ["2026.1"]
    assert watcher.refresh() and watcher.current() is first  # nothing changed: the same set, nothing compiled

    (rules_dir / "v2027.yaml").write_text(version_text("2027.1", datetime(2027, 1, 1, tzinfo=UTC)))
    assert watcher.refresh()
    second = watcher.current()
    assert [v.version for v in second.versions] == ["2026.1", "2027.1"]
    assert second.versions[0] is first.versions[0]  # the unchanged file was not compiled again
    assert first.for_moment(datetime(2027, 6, 1, tzinfo=UTC)).version == "2026.1"  # old snapshots stay whole

    (rules_dir / "v2028.yaml").write_text(version_text("2028.1", datetime(2028, 1, 1, tzinfo=UTC))
                                          .replace("loan_products:", "loan_prodcts:"))
    assert watcher.refresh()  # still serving
    assert watcher.current() is second
    status = watcher.status()
    assert status.installed == ("2026.1", "2027.1") and status.reloads == 2
    assert any(p.path == "loan_prodcts" and "did you mean 'loan_products'" in p.message for p in status.problems)

    (rules_dir / "v2028.yaml").write_text("a: &a [*a]\n")  # a recursive alias: the YAML library itself fails
    assert watcher.refresh() and watcher.current() is second
    assert "refers to the list or mapping that contains it" in watcher.status().problems[0].message
    assert watcher.refresh() and watcher.status().problems  # still reported at the next look

    (rules_dir / "v2028.yaml").unlink()
    assert watcher.refresh() and watcher.status().problems == ()


def test_a_running_watcher_refuses_what_would_rewrite_history(rules_dir):
    watcher = RulesWatcher(rules_dir, settle=0)
    live = rules_dir / "corporate_lending.yaml"
    live.write_text(SHIPPED.replace("      points: 500\n", "      points: 900\n"))  # the version in use, edited
    assert watcher.refresh() and watcher.current().versions[0].rules[7].points.evaluate({}) == 500
    assert "was edited in place" in watcher.status().problems[0].message
    live.write_text(SHIPPED)
    assert watcher.refresh() and watcher.status().problems == ()

    (rules_dir / "past.yaml").write_text(version_text("2026.5", utc_now() - timedelta(days=1)))
    assert watcher.refresh()
    assert [v.version for v in watcher.current().versions] == ["2026.1"]
    assert "before now" in watcher.status().problems[0].message


def test_the_watcher_waits_for_a_file_being_written_to_settle(rules_dir):
    now = [utc_now()]
    watcher = RulesWatcher(rules_dir, settle=1.0, clock=lambda: now[0])
    (rules_dir / "v2027.yaml").write_text(version_text("2027.1", datetime(2027, 1, 1, tzinfo=UTC)))
    now[0] = utc_now()
    assert watcher.refresh() and len(watcher.current().versions) == 1  # written just now: not read yet
    now[0] += timedelta(seconds=2)
    assert watcher.refresh() and len(watcher.current().versions) == 2


def test_two_hundred_activations_keep_memory_and_threads_bounded(tmp_path, monkeypatch):
    """Each activation adds a version and the service evaluates events under it; durable-rules never frees a
    ruleset by itself, so without eviction this grew by about 1 MiB a version (see DURABLE_RULES_NOTES.md)."""
    monkeypatch.setattr(matching._LIVE, "limit", 8)
    directory = tmp_path / "rules"
    directory.mkdir()
    shutil.copy(RULES / "corporate_lending.yaml", directory)
    watcher = RulesWatcher(directory, settle=0)

    def activate(number: int) -> None:
        start = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=number)
        source = tmp_path / f"v{number}.yaml"
        source.write_text(version_text(f"2027.{number}", start, client_day_points=100 + number))
        install(Candidate(None, source.read_bytes(), directory / source.name, False))  # type: ignore[arg-type]
        assert watcher.refresh()
        programme = watcher.current().for_moment(start + timedelta(hours=1))
        assert programme.version == f"2027.{number}"
        assert programme.matcher.match("event.attended", {"kind": "client_day"}, {"tier": "standard"})  # loads its ruleset

    def rss_mib() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    for number in range(1, 21):  # warm-up: allocator arenas, caches
        activate(number)
    before, threads_before = rss_mib(), threading.active_count()
    for number in range(21, 221):
        activate(number)
    after, threads_after = rss_mib(), threading.active_count()
    print(f"\n200 activations: RSS {before:.1f} -> {after:.1f} MiB ({after - before:+.1f}), "
          f"threads {threads_before} -> {threads_after}, loaded rulesets {matching._LIVE.loaded()}, "
          f"versions kept {len(watcher.current().versions)}")
    assert len(watcher.current().versions) == 221  # every version is kept, for events of its time
    assert matching._LIVE.loaded() <= 8
    assert threads_after == threads_before
    # The parsed models of the 200 kept versions remain (about 0.1 MiB each); compiled rulesets do not pile up.
    assert after - before < 60


# --- the command --------------------------------------------------------------------------------------

def test_activate_installs_a_future_version_and_refuses_what_would_rewrite_history(rules_dir, tmp_path, db_url):
    new = tmp_path / "corporate_lending-2030.1.yaml"
    new.write_text(version_text("2030.1", datetime(2030, 1, 1, tzinfo=UTC)))

    dry = cli_json("rules", "activate", str(new), "--dry-run", rules=rules_dir, db_url=db_url)
    assert dry["activated"] is False and not (rules_dir / new.name).exists()
    done = cli_json("rules", "activate", str(new), rules=rules_dir, db_url=db_url)
    assert done["activated"] is True and done["version"] == "2030.1"
    assert (rules_dir / new.name).read_bytes() == new.read_bytes()
    assert done["tests"]["failed"] == 0 and done["tests"]["passed"] == done["tests"]["cases"] > 20
    again = cli_json("rules", "activate", str(new), rules=rules_dir, db_url=db_url)
    assert again["already_installed"] is True and again["activated"] is False
    listed = cli_json("rules", "versions", rules=rules_dir)["versions"]
    assert [(v["version"], v["state"]) for v in listed] == [("2026.1", "in force"), ("2030.1", "scheduled")]

    def refused(path: Path, **kwargs) -> dict:
        answer = cli_json("rules", "activate", str(path), expect_code=1, rules=rules_dir, db_url=db_url, **kwargs)
        assert answer["activated"] is False
        return answer

    same_label = tmp_path / "same-label.yaml"
    same_label.write_text(version_text("2030.1", datetime(2031, 1, 1, tzinfo=UTC)))
    assert any("version '2030.1' is also defined" in line for line in refused(same_label)["details"])

    soon = tmp_path / "soon.yaml"
    soon.write_text(version_text("2031.1", utc_now() + timedelta(minutes=5)))
    assert refused(soon)["code"] == "starts-too-soon"

    overwrite = tmp_path / "other" / new.name
    overwrite.parent.mkdir()
    overwrite.write_text(version_text("2032.1", datetime(2032, 1, 1, tzinfo=UTC)))
    assert refused(overwrite)["code"] == "version-file-exists"

    broken = tmp_path / "broken.yaml"
    broken.write_text(version_text("2033.1", datetime(2033, 1, 1, tzinfo=UTC)).replace("id: gold", "id: Gold"))
    details = refused(broken)["details"]
    assert any(line.startswith(f"{broken}:") and "tiers[2].id" in line for line in details), details

    # An event already applied at some moment: a version may not start before it.
    assert run_cli("init", db_url=db_url).returncode == 0
    applied_at = utc_now() - timedelta(hours=1)
    cli_json("ingest", "-", db_url=db_url, rules=rules_dir,
             stdin=ndjson(event("E-1", "C-1", "event.attended", applied_at.isoformat(), kind="forum")))
    past = tmp_path / "past.yaml"
    past.write_text(version_text("2031.2", applied_at - timedelta(hours=1)))
    answer = refused(past)
    assert answer["code"] == "starts-in-the-past" and "already evaluated" in answer["reason"]

    # With a database, an installed version is announced to webhook receivers, once.
    announced = tmp_path / "announced.yaml"
    announced.write_text(version_text("2034.1", datetime(2034, 1, 1, tzinfo=UTC)))
    assert cli_json("rules", "activate", str(announced), rules=rules_dir, db_url=db_url)["activated"] is True
    engine = make_engine(db_url)
    with read_snapshot(engine) as conn:
        [record] = [r for r in outbox.records(conn) if r["type"] == "rule_version.activated"]
    engine.dispose()
    assert (record["client_id"], record["data"]["version"], record["data"]["effective_from"]) == \
        (None, "2034.1", "2034-01-01T00:00:00Z")


def test_activation_runs_the_rule_tests_under_the_new_version(rules_dir, tmp_path):
    if not any((rules_dir / "tests").glob("*.yaml")):
        pytest.fail("the shipped rules have no rule tests")
    changed = tmp_path / "double-survey.yaml"
    changed.write_text(version_text("2030.2", datetime(2030, 1, 1, tzinfo=UTC), client_day_points=1000))
    answer = cli_json("rules", "activate", str(changed), expect_code=1, rules=rules_dir,
                      db_url=f"sqlite:///{tmp_path / 'none.db'}")
    assert answer["code"] == "rule-tests-fail" and answer["details"]
    assert not (rules_dir / changed.name).exists()


# --- hot reload under load ----------------------------------------------------------------------------

def test_a_running_server_picks_up_a_new_version_between_events_and_keeps_serving_on_a_broken_one(
        rules_dir, tmp_path, db_url):
    shutil.rmtree(rules_dir / "tests")  # the new version changes client-day points, which the shipped cases pin
    assert run_cli("init", db_url=db_url).returncode == 0
    key = cli_json("apikey", "create", "--name", "feed", "--scope", "admin", db_url=db_url)["key"]
    log = tmp_path / "server.log"
    with running_server(db_url, log, "--reload-seconds", "0.2", rules=rules_dir) as base:
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        onboard = event("E-on", "C-1", "client.onboarded", "2026-01-05T09:00:00Z", segment="mid_market",
                        industry="manufacturing")
        assert client.post("/v1/events", json=onboard).status_code == 200

        stop, sent, failures = threading.Event(), [], []

        def feed() -> None:
            number = 0
            while not stop.is_set():
                number += 1
                at = utc_now().isoformat().replace("+00:00", "Z")
                batch = [event(f"S-{number}-{i}", "C-1", "event.attended", at, kind="client_day") for i in range(5)]
                answer = client.post("/v1/events", json=batch)
                if answer.status_code != 200:
                    failures.append(answer.text)
                sent.extend(item["id"] for item in batch)

        feeder = threading.Thread(target=feed)
        feeder.start()
        time.sleep(1.0)
        start = (utc_now() + timedelta(seconds=14)).replace(microsecond=0)  # the command takes seconds, more when loaded
        new = tmp_path / "v2.yaml"
        new.write_text(version_text("2026.2", start, client_day_points=1000))
        activated = cli_json("rules", "activate", str(new), "--lead", "2s", rules=rules_dir, db_url=db_url)
        assert activated["activated"] is True and activated["tests"] == {"passed": 0, "failed": 0, "cases": 0}
        time.sleep(max(0.0, (start - utc_now()).total_seconds()) + 2.0)
        (rules_dir / "zz-broken.yaml").write_text("format: 1\nprogramme: [\n")  # saved by hand, half written
        for _ in range(100):  # the watcher lets a just-written file settle for a second, then refuses it
            health = httpx.get(f"{base}/healthz").json()
            if health["rules"]["refused"]:
                break
            time.sleep(0.1)
        stop.set()
        feeder.join()
        assert failures == []
        assert health["rules"]["versions"] == ["2026.1", "2026.2"]
        assert health["rules"]["refused"] and health["rules"]["refused"][0]["file"].endswith("zz-broken.yaml")
        assert client.post("/v1/events", json=event("S-last", "C-1", "event.attended",
                                                    utc_now().isoformat(), kind="client_day")).status_code == 200

    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(ProcessedEvent.event_id, ProcessedEvent.occurred_at, ProcessedEvent.programme_version,
                   LedgerEntry.programme_version, LedgerEntry.points)
            .join(LedgerEntry, LedgerEntry.event_id == ProcessedEvent.event_id)
            .where(ProcessedEvent.type == "event.attended")).all()
    engine.dispose()
    assert len({row[0] for row in rows}) == len(sent) + 1
    by_version = {"2026.1": 0, "2026.2": 0}
    for event_id, occurred_at, event_version, entry_version, points in rows:
        expected = "2026.2" if occurred_at >= start else "2026.1"
        # Each event under exactly one version, the one in force when it occurred, with that version's points.
        assert (event_version, entry_version) == (expected, expected), event_id
        assert points == (1000 if expected == "2026.2" else 500)
        by_version[expected] += 1
    print(f"\nhot reload under load: {by_version['2026.1']} events under 2026.1, {by_version['2026.2']} under 2026.2")
    assert by_version["2026.1"] > 0 and by_version["2026.2"] > 0


def test_concurrent_activations_never_overwrite_or_contradict(rules_dir, tmp_path):
    """Two people activate at once: under the directory's lock the second sees the first's version."""
    drafts = []
    for team in ("a", "b"):
        folder = tmp_path / team
        folder.mkdir()
        draft = folder / "next.yaml"  # the same file name, different versions
        draft.write_text(version_text(f"2035.{'1' if team == 'a' else '2'}", datetime(2035, 1, 1 + (team == 'b'),
                                                                                     tzinfo=UTC)))
        drafts.append(draft)
    same_label = tmp_path / "same-label.yaml"
    same_label.write_text(version_text("2035.1", datetime(2036, 1, 1, tzinfo=UTC)))
    drafts.append(same_label)
    script = Path(sys.executable).parent / "loyalty"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    runs = [subprocess.Popen([*command, "--rules", str(rules_dir), "--db", f"sqlite:///{tmp_path / 'none.db'}",
                              "rules", "activate", str(draft), "--json"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
            for draft in drafts]
    answers = [json.loads(run.communicate(timeout=300)[0]) for run in runs]
    activated = [(draft, answer) for draft, answer in zip(drafts, answers) if answer["activated"]]
    # a's and b's next.yaml cannot both go in; same-label clashes with a's 2035.1 but not with b's 2035.2.
    assert 1 <= len(activated) <= 2, answers
    assert not (answers[0]["activated"] and answers[1]["activated"])
    for draft, answer in activated:  # each installed exactly what it checked
        assert Path(answer["file"]).read_bytes() == draft.read_bytes()
    listed = cli_json("rules", "versions", rules=rules_dir)["versions"]  # the directory still loads
    assert len(listed) == 1 + len(activated)


def test_activation_refuses_what_no_service_would_load_and_installs_a_readable_file(rules_dir, tmp_path):
    text_file = tmp_path / "corporate_lending-2030.1.txt"
    text_file.write_text(version_text("2030.1", datetime(2030, 1, 1, tzinfo=UTC)))
    result = run_cli("rules", "activate", str(text_file), rules=rules_dir)
    assert result.returncode == 2 and "ends in .yaml or .yml" in result.stderr + result.stdout

    good = tmp_path / "corporate_lending-2030.1.yaml"
    good.write_text(text_file.read_text())
    good.chmod(0o600)  # a private draft: the installed version must still be readable by the service
    cli_json("rules", "activate", str(good), rules=rules_dir, db_url=f"sqlite:///{tmp_path / 'none.db'}")
    assert (rules_dir / good.name).stat().st_mode & 0o444 == 0o444
    assert not (tmp_path / "none.db").exists()  # looking for applied events created no database

    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"
    other = tmp_path / "corporate_lending-2031.1.yaml"
    other.write_text(version_text("2031.1", datetime(2031, 1, 1, tzinfo=UTC)))
    result = run_cli("rules", "activate", str(other), rules=rules_dir, db_url=unreachable)
    assert result.returncode == 2 and "cannot ask the database" in result.stderr + result.stdout
    assert not (rules_dir / other.name).exists()


def test_activating_into_the_programme_shipped_with_the_package_is_refused(tmp_path):
    draft = tmp_path / "next.yaml"
    draft.write_text(version_text("2035.1", datetime(2035, 1, 1, tzinfo=UTC)))
    before = sorted(path.name for path in RULES.iterdir())
    answer = cli_json("rules", "activate", str(draft), db_url=f"sqlite:///{tmp_path / 'none.db'}", expect_code=1)
    assert answer["code"] == "shipped-rules" and "LOYALTY_RULES" in answer["reason"]
    assert sorted(path.name for path in RULES.iterdir()) == before
