"""The admin endpoints (`admin` scope): what the CLI does for operations, with the answers of its `--json`:
pins, the churn list, points expiring, tier reviews (run off the request) and the rule versions."""
from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from starlette.datastructures import State

from api.models import PinRequest, ReviewRequest
from api.problems import ProblemError
from api.routes import MISSING, PRINTABLE, READ, WRITE, ClientId
from api.security import require
from service.activation import RuleVersions, installed_versions
from service.apikeys import Caller
from service.churn import FlaggedClient, churn_list
from service.expiry import ExpiringAnswer, expiring_answer
from service.pins import PinSetAnswer, PinEndedAnswer, pin_tier, unpin_tier
from service.review_jobs import ReviewJob, ReviewJobs, job_status

SCOPE = "admin"
ADMIN = Depends(require(SCOPE))


@asynccontextmanager
async def _stop_reviews(app: FastAPI) -> AsyncIterator[None]:
    """When the server stops, its running review stops at its next page (what it wrote is kept)."""
    yield
    jobs = getattr(app.state, "review_jobs", None)
    if isinstance(jobs, ReviewJobs):
        await asyncio.to_thread(jobs.stop_all)


admin = APIRouter(prefix="/v1", tags=["admin"], lifespan=_stop_reviews)  # the app merges this lifespan with its own
# `within` of points expiring: a number and a unit, as `loyalty points expiring --within`; at most ten years
# ahead (lots expire months after they are earned: further says nothing more, and the sum stays bounded).
WITHIN = re.compile(r"^(\d{1,5})([smhdw])$")
UNITS = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1),
         "w": timedelta(weeks=1)}
MAX_WITHIN = timedelta(days=3660)
ReviewId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="as POST /v1/reviews answered")]
_JOBS_LOCK = threading.Lock()


def _jobs(state: State) -> ReviewJobs:
    """The app's review jobs (made on first use: one registry per app, so per server process)."""
    with _JOBS_LOCK:
        if not isinstance(getattr(state, "review_jobs", None), ReviewJobs):
            state.review_jobs = ReviewJobs()
        return state.review_jobs


def _author(caller: Caller, given: str | None) -> str:
    """Who decided: as given, else the API key that asked (its name and public id)."""
    return given or f"{caller.name} (API key {caller.key_id})"


@admin.put("/clients/{client_id}/pin", operation_id="pinClient", response_model=PinSetAnswer,
           responses={**WRITE, **MISSING})
def put_pin(request: Request, client_id: ClientId, body: PinRequest,
            caller: Annotated[Caller, ADMIN]) -> PinSetAnswer:
    """Pin a client to a tier until a moment: it moves there now and reviews leave it there until then; a later
    pin replaces this one. The same answer as `loyalty tier set --json`. 409 if a later tier decision exists."""
    state = request.app.state
    return pin_tier(state.engine, state.programmes, client_id, body.tier, body.until, body.reason,
                    _author(caller, body.author), state.clock)


@admin.delete("/clients/{client_id}/pin", operation_id="unpinClient", response_model=PinEndedAnswer,
              responses={**WRITE, **MISSING})
def delete_pin(request: Request, client_id: ClientId, caller: Annotated[Caller, ADMIN],
               reason: Annotated[str, Query(min_length=1, max_length=500, pattern=r"\S",
                                            description="why the pin ends early, for the pin history")],
               author: Annotated[str | None, Query(min_length=1, max_length=128, pattern=PRINTABLE,
                                                   description="who decided; default: the API key's name")] = None,
               ) -> PinEndedAnswer:
    """End the client's pin now; it keeps its tier until the next review places it. 404 if no pin is in
    force. The same answer as `loyalty tier unset --json`."""
    state = request.app.state
    return unpin_tier(state.engine, client_id, reason, _author(caller, author), state.clock)


@admin.get("/churn", operation_id="getChurnList", dependencies=[ADMIN], response_model=list[FlaggedClient],
           responses=READ)
def get_churn(request: Request,
              tier: Annotated[str | None, Query(min_length=1, max_length=64, description="only this tier")] = None,
              history: Annotated[bool, Query(description="also flags cleared since")] = False,
              limit: Annotated[int, Query(ge=1, le=1000, description="most clients")] = 50) -> list[FlaggedClient]:
    """Clients flagged at risk of leaving, most valuable first, with the signals that fired. The same answer
    as `loyalty churn --json`."""
    programme = request.app.state.programmes.current
    if tier is not None and tier not in programme.tier_ids:
        raise ProblemError(422, "invalid-request", f"tier {tier[:64]!r} is not a tier; expected one of: "
                           f"{', '.join(programme.tier_ids)}", errors=[{"field": "query.tier",
                                                                        "message": "not a tier of the programme"}])
    return churn_list(request.app.state.engine, programme.currency, tier=tier, history=history)[:limit]


@admin.get("/points/expiring", operation_id="getExpiringPoints", dependencies=[ADMIN],
           response_model=ExpiringAnswer, responses=READ)
def get_expiring(request: Request,
                 within: Annotated[str, Query(max_length=6, description="how far ahead: a number and s, m, h, d "
                                              "or w, e.g. 30d, 12w, 48h; at most 3660d")] = "30d",
                 client: Annotated[str | None, Query(min_length=1, max_length=64, pattern=PRINTABLE,
                                                     description="only this client")] = None,
                 limit: Annotated[int, Query(ge=1, le=1000, description="most lots listed")] = 100) -> ExpiringAnswer:
    """Points that will expire within a period, soonest first, and their total. The same answer as
    `loyalty points expiring --json`."""
    state = request.app.state
    return expiring_answer(state.engine, state.programmes, state.clock(), _within(within), within, client, limit)


def _within(text: str) -> timedelta:
    """`within` as a duration; 422 naming the parameter if it is not one or is over the bound."""
    match = WITHIN.fullmatch(text)
    span = int(match.group(1)) * UNITS[match.group(2)] if match else None
    if span is None or not timedelta(0) < span <= MAX_WITHIN:
        reason = ("is not a duration: use a number and s, m, h, d or w, e.g. 30d" if span is None else
                  f"must be more than nothing and at most {MAX_WITHIN.days}d")
        raise ProblemError(422, "invalid-request", f"within {text[:20]!r} {reason}",
                           errors=[{"field": "query.within", "message": reason}])
    return span


ACCEPTED = {202: {"description": "Accepted: the review runs; its status and report are at `Location`",
                  "headers": {"Location": {"description": "`/v1/reviews/{id}`", "schema": {"type": "string"}}}}}


@admin.post("/reviews", operation_id="startReview", status_code=202, dependencies=[ADMIN],
            response_model=ReviewJob, responses={**ACCEPTED, **WRITE})
def post_review(request: Request, response: Response, body: ReviewRequest | None = None) -> ReviewJob:
    """Start a tier review or a dry run; it runs off the request. Answers 202 at once, with `Location`
    naming `GET /v1/reviews/{id}` where its status, then its report, are served. One review runs at a time:
    409 while another runs on this server (its id in the detail); a review running elsewhere ends the job
    `failed` with `error_code` `review-running`."""
    state = request.app.state
    body = body or ReviewRequest()
    job = _jobs(state).start(state.engine, state.programmes, body.as_of, body.dry_run, body.review_id, state.clock)
    response.headers["Location"] = f"/v1/reviews/{job.id}"
    return job


@admin.get("/reviews/{review_id}", operation_id="getReview", dependencies=[ADMIN], response_model=ReviewJob,
           responses={**READ, **MISSING})
def get_review(request: Request, review_id: ReviewId) -> ReviewJob:
    """A review started over the API: running, finished (with its report: the fields of `loyalty review
    --json`) or failed (with the reason). A review this server process did not run is answered from the
    database: its status, without the report."""
    return job_status(_jobs(request.app.state), request.app.state.engine, review_id)


@admin.get("/rules/versions", operation_id="getRuleVersions", dependencies=[ADMIN], response_model=RuleVersions,
           responses={status: READ[status] for status in (401, 403, 500, 503)})
def get_rule_versions(request: Request) -> RuleVersions:
    """The installed versions of the programme, oldest first, and which one is in force. The same answer as
    `loyalty rules versions --json`."""
    state = request.app.state
    return installed_versions(state.programmes, state.clock())

