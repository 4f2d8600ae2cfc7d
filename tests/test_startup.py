"""CLI start-up: `loyalty --help` loads no database, web, scheduling or CEL stack, and still lists every
command. (How long it takes is bench/startup.py's to say: no timings here.)"""
from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from cli.main import app
from tests.conftest import ROOT, SAMPLE

COMMANDS = ["churn", "simulate", "explain", "serve", "scheduler", "consume", "dispatch", "init", "ingest", "benefits",
            "review", "client", "generate", "demo", "ledger", "reverse", "rules", "apikey", "db", "tier", "points",
            "webhooks"]
GROUPS = {"rules": ["check", "schema", "diff", "test", "activate", "versions"],
          "apikey": ["create", "list", "revoke"], "db": ["upgrade", "current", "history"], "tier": ["set", "unset"],
          "points": ["expiring", "expire"],
          "webhooks": ["add", "list", "remove", "enable", "deliveries", "replay", "types"]}
# What `--help` must not import: each (with what it imports) costs tens of milliseconds or more, and the
# listing needs none of them.
HEAVY = ["sqlalchemy", "sqlmodel", "pydantic", "cel", "durable", "apscheduler", "fastapi", "uvicorn",
         "prometheus_client", "matplotlib", "yaml", "storage", "cli.apikeys", "cli.db", "cli.rule_activate"]


def listed(text: str) -> list[str]:
    """The command names of a rich help screen's Commands panel, in order."""
    panel = text[text.index("Commands"):]
    return [line.split()[1] for line in panel.splitlines() if line.startswith("│ ") and not line[2].isspace()]


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom cli.main import app\ntry:\n    app(['--help'], prog_name='loyalty')\n"
            "except SystemExit:\n    pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.stderr.strip() == "", result.stderr
    assert listed(result.stdout) == COMMANDS


def test_every_command_is_listed_with_its_help():
    runner = CliRunner()
    for group, commands in GROUPS.items():
        result = runner.invoke(app, [group, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert listed(result.output) == commands, group
        for command in commands:  # each one loads and shows its own help
            assert runner.invoke(app, [group, command, "--help"]).exit_code == 0, (group, command)


def test_a_command_closes_its_connections(tmp_path):
    # A command's objects are not collected at exit (cli/main.py), so it must close its connections itself:
    # SQLite then checkpoints and removes its WAL file.
    database = tmp_path / "loyalty.db"
    runner = CliRunner(env={"LOYALTY_DATABASE_URL": f"sqlite:///{database}"})
    for command in (["init"], ["ingest", str(SAMPLE)], ["benefits", "C-1001", "--json"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        assert sorted(path.name for path in tmp_path.iterdir()) == ["loyalty.db"], command
