"""Errors as RFC 9457 problem details (`application/problem+json`), with a message a person can act on.

`Problem` is the one schema of every error answer: the OpenAPI document is generated from it and every
problem document is built through it, so what is documented and what is sent cannot differ.
"""
from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from api.request_context import current_request_id
from service.answer import Moment

MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    """One request field that does not fit, and why."""

    field: str = Field(description="where, e.g. `body.amount` or `query.limit`")
    message: str


class Problem(BaseModel):
    """An error (RFC 9457): `type` names it for programs, `detail` says what to do; the other members carry
    the figures behind it and appear only on the problems that have them."""

    model_config = ConfigDict(extra="allow")  # RFC 9457 extension members: clients ignore those they do not know

    type: str = Field(description="`/problems/<code>`, stable: e.g. `/problems/insufficient-points`")
    title: str = Field(description="the HTTP status phrase")
    status: int
    detail: str = Field(description="for people: what went wrong and what to do")
    instance: str | SkipJsonSchema[None] = Field(None, description="the request path")
    request_id: str | SkipJsonSchema[None] = Field(None, description="the request's X-Request-ID, for support")
    errors: list[FieldError] | SkipJsonSchema[None] = Field(None, description="`invalid-request`: each field")
    balance: int | SkipJsonSchema[None] = Field(None, description="`insufficient-points`: the client's points")
    cost: int | SkipJsonSchema[None] = Field(None, description="`insufficient-points`: what the reward costs")
    tier: str | SkipJsonSchema[None] = Field(None, description="`tier-too-low`: the client's tier")
    min_tier: str | SkipJsonSchema[None] = Field(None, description="`tier-too-low`: the reward's lowest tier")
    expired_at: Moment | SkipJsonSchema[None] = Field(None, description="`quote-expired`: when")
    quote_status: str | SkipJsonSchema[None] = Field(
        None, description="`quote-committed`, `quote-voided`: what the quote already is")
    resolved_at: Moment | SkipJsonSchema[None] = Field(None, description="`quote-committed`, `quote-voided`: when")
    entitlement_ids: list[int] | SkipJsonSchema[None] = Field(
        None, description="`entitlement-withdrawn`: the held entitlements no longer active")
    required_scope: str | SkipJsonSchema[None] = Field(None, description="`missing-scope`: the scope needed")


class ProblemError(Exception):
    """Raised by the API layer to answer with a problem document."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None, **facts: object):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.facts = status, code, detail, headers, facts


def problem_response(status: int, code: str, detail: str, instance: str | None = None,
                     headers: dict[str, str] | None = None, facts: dict | None = None) -> JSONResponse:
    """A problem document: `type` names the problem (stable, for programs), `detail` says what to do,
    `facts` adds the figures behind it (e.g. the points balance), `request_id` the request's X-Request-ID."""
    problem = Problem(**(facts or {}), type=f"/problems/{code}", title=HTTPStatus(status).phrase, status=status,
                      detail=detail, instance=instance or None, request_id=current_request_id())
    return JSONResponse(problem.model_dump(mode="json", exclude_none=True), status_code=status,
                        media_type=MEDIA_TYPE, headers=headers)


def problem_responses(*statuses: int) -> dict:
    """OpenAPI `responses` entries for the problem statuses an operation can answer (served as
    `application/problem+json`: see `api.openapi`)."""
    return {status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses}
