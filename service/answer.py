"""What the use cases answer: typed models, the one description of each answer for the CLI's `--json`, the
HTTP API and its OpenAPI document (extra fields are forbidden, so an answer cannot carry what its model
does not say)."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, WithJsonSchema

# Timestamps travel as ISO 8601 text with their zone, as the CLI prints them; documented as date-time so
# generated clients read them as aware datetimes.
Moment = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


class Answer(BaseModel):
    """Base of every answer model."""

    model_config = ConfigDict(extra="forbid")


class ProgrammeRef(Answer):
    """The rule-file version that decided."""

    id: str
    version: str
