"""Errors as RFC 9457 problem details (`application/problem+json`), with a message a person can act on."""
from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"


class ProblemError(Exception):
    """Raised by the API layer to answer with a problem document."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None, **facts: object):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.facts = status, code, detail, headers, facts


def problem_response(status: int, code: str, detail: str, instance: str | None = None,
                     headers: dict[str, str] | None = None, facts: dict | None = None) -> JSONResponse:
    """A problem document: `type` names the problem (stable, for programs), `detail` says what to do,
    `facts` adds the figures behind it (e.g. the points balance)."""
    body = {**(facts or {}), "type": f"/problems/{code}", "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail, **({"instance": instance} if instance else {})}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def problem_schema(*statuses: int) -> dict:
    """OpenAPI `responses` entries for the problem statuses an operation can answer."""
    schema = {"type": "object", "required": ["type", "title", "status", "detail"],
              "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                             "status": {"type": "integer"}, "detail": {"type": "string"},
                             "instance": {"type": "string"}}}
    return {status: {"description": HTTPStatus(status).phrase, "content": {MEDIA_TYPE: {"schema": schema}}}
            for status in statuses}
