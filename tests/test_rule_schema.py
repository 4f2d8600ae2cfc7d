"""`loyalty rules schema`: the committed rules/schema.json is the format's schema, and editors can trust it."""
from __future__ import annotations

import json
import re

import jsonschema
import yaml

from engine.loader import rule_files
from tests.conftest import RULES, cli_json, run_cli

SCHEMA_FILE = RULES / "schema.json"


class _PlainTimes(yaml.SafeLoader):
    """Reads timestamps as text, as the YAML language server does (JSON Schema has no datetime type)."""


_PlainTimes.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def test_the_committed_schema_is_in_sync_with_the_models():
    assert cli_json("rules", "schema", "--output", str(SCHEMA_FILE), "--check") == {
        "file": str(SCHEMA_FILE), "in_sync": True, "written": False}
    printed = run_cli("rules", "schema")
    assert printed.returncode == 0
    assert printed.stdout == SCHEMA_FILE.read_text(encoding="utf-8")


def test_check_fails_on_a_stale_schema_and_writing_mends_it(tmp_path):
    stale = tmp_path / "schema.json"
    stale.write_text('{"title": "old"}\n', encoding="utf-8")
    result = run_cli("rules", "schema", "-o", str(stale), "--check")
    assert result.returncode == 1
    assert "out of date" in result.stdout
    assert cli_json("rules", "schema", "-o", str(stale)) == {"file": str(stale), "in_sync": False, "written": True}
    assert stale.read_text(encoding="utf-8") == SCHEMA_FILE.read_text(encoding="utf-8")
    assert run_cli("rules", "schema", "--check").returncode == 2  # nothing to compare against


def test_every_shipped_rule_file_names_the_schema_and_satisfies_it():
    validator = _validator()
    for path in rule_files(RULES):
        text = path.read_text(encoding="utf-8")
        assert text.splitlines()[0] == "# yaml-language-server: $schema=schema.json", path
        errors = [error.message for error in validator.iter_errors(yaml.load(text, Loader=_PlainTimes))]
        assert errors == [], (path, errors)


def test_the_schema_catches_what_an_editor_should_underline():
    validator = _validator()
    document = yaml.load((RULES / "corporate_lending.yaml").read_text(encoding="utf-8"), Loader=_PlainTimes)
    document["rules"][0]["awrd"] = document["rules"][0].pop("award")  # a misspelt key
    document["tiers"][1]["benefits"]["rate_discount_bps"]["working_capital"] = 5000  # above the 1000 bps limit
    messages = sorted(error.message for error in validator.iter_errors(document))
    assert any(re.search(r"'awrd' was unexpected", m) for m in messages), messages
    assert any("'award' is a required property" in m for m in messages), messages
    assert any("5000 is greater than the maximum of 1000" in m for m in messages), messages
    # Descriptions from the models reach the editor's hover text.
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert "CEL expression" in schema["$defs"]["Award"]["properties"]["points"]["description"]


def test_the_case_file_schema_is_in_sync_and_the_shipped_cases_satisfy_it():
    case_schema = RULES / "tests" / "schema.json"
    assert cli_json("rules", "schema", "--cases", "-o", str(case_schema), "--check")["in_sync"] is True
    validator = jsonschema.Draft202012Validator(json.loads(case_schema.read_text(encoding="utf-8")))
    files = sorted((RULES / "tests").glob("*.yaml"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text.splitlines()[0] == "# yaml-language-server: $schema=schema.json", path
        document = yaml.load(text, Loader=_PlainTimes)
        assert [error.message for error in validator.iter_errors(document)] == [], path
    document["cases"][0]["expekt"] = {}
    assert any("'expekt' was unexpected" in error.message for error in validator.iter_errors(document))
