"""JSON Schemas of the files product teams write, generated from the pydantic models that validate them.

Editors with the YAML language server read them (a `# yaml-language-server: $schema=...` comment at the
top of a file) for completion, hover text and inline errors. The loader stays the authority: the
schema cannot express cross-references such as a rule naming an unknown tier.
"""
from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from engine.rule_cases import Case
from engine.schema import Programme

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(model: type[BaseModel], title: str) -> dict:
    """The JSON Schema of `model`, titled for editors."""
    schema = model.model_json_schema(mode="validation")
    return {"$schema": DIALECT, **schema, "title": title}


def rule_file_schema() -> dict:
    """The JSON Schema of a rule file."""
    return json_schema(Programme, "Loyalty programme rule file (format 1)")


class _CaseFile(BaseModel):
    """A rule-test case file as editors see it (the loader validates its cases one by one instead)."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    cases: list[Case] = Field(min_length=1)


def case_file_schema() -> dict:
    """The JSON Schema of a rule-test case file (rules/tests/*.yaml)."""
    return json_schema(_CaseFile, "Loyalty programme rule-test cases")


def render(schema: dict) -> str:
    """Stable text of a schema: sorted keys, two-space indent, final newline (so diffs stay small)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
