"""The `/v1` endpoints: thin adapters from HTTP to the use cases in `service/`."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from api.answers import (BenefitsAnswer, EventsAnswer, ExplanationAnswer, LedgerPage, ProfileAnswer, QuoteAnswer,
                         RedemptionAnswer, ReversalAnswer, RewardAnswer, documented)
from api.models import CommitRequest, QuoteRequest, RedemptionRequest, ReversalRequest
from api.problems import ProblemError, problem_schema
from api.reads import run_read
from api.security import authorize, credential, require
from engine.errors import EventError
from engine.json_input import MAX_JSON_DEPTH, nesting_depth, parse_json_items
from service.apikeys import caller_of
from service.benefits import benefits_answer
from service.explain import MAX_ID, explain_client
from service.ingest import Ingestor, Outcome
from service.ledger_page import ledger_page
from service.profile import client_profile
from service.quotes import commit_quote, create_quote, get_quote, void_quote
from service.redemptions import catalogue, redeem
from service.reversal import reverse_event
from storage.db import autocommit_reads

MAX_EVENTS = 1000
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
ClientId = Annotated[str, Path(min_length=1, max_length=64, pattern=PRINTABLE,
                               description="the lender's client id, e.g. C-1001")]
QuoteId = Annotated[str, Path(min_length=1, max_length=40, pattern=PRINTABLE)]
EventId = Annotated[str, Path(min_length=1, max_length=128, pattern=PRINTABLE)]
At = Annotated[datetime | None, Query(description="moment to look at, ISO 8601 with zone; default now")]
_COMMON = problem_schema(401, 403, 422)

router = APIRouter(prefix="/v1")


_EVENT_EXAMPLE = {"id": "evt-1", "client_id": "C-1001", "type": "loan.drawn", "occurred_at": "2026-03-01T10:00:00Z",
                  "data": {"loan_id": "L-1", "product": "working_capital", "amount": "30000000.00", "currency": "CNY",
                           "term_months": 12}}
# The body is read and parsed here, not by FastAPI: with the bounded parser of NDJSON ingest, a value no
# event may hold (a 5,000-digit number, NaN) rejects its own item instead of the whole batch.
_EVENTS_BODY = {"required": True, "content": {"application/json": {
    "schema": {"description": f"one event envelope, or a list of up to {MAX_EVENTS}: {{id, client_id, type, "
                              "occurred_at, data}} as in NDJSON ingest",
               "anyOf": [{"type": "object"}, {"type": "array", "items": {}, "minItems": 1, "maxItems": MAX_EVENTS}]},
    "example": _EVENT_EXAMPLE}}}


@router.post("/events", dependencies=[Depends(require("events:write"))], tags=["events"],
             response_model=None, openapi_extra={"requestBody": _EVENTS_BODY},
             responses={**documented(EventsAnswer), **problem_schema(401, 403, 413, 422)})
async def post_events(request: Request) -> dict:
    """Apply events; each item is applied, a duplicate (same id and content) or rejected with its reason.

    A bad item never stops the others, whatever its size or shape. Re-sending an event is safe: it counts
    as a duplicate. A body that is not JSON at all is a 422 (there are no items to answer for).
    """
    try:
        items = parse_json_items(await request.body())
    except EventError as exc:
        raise ProblemError(422, "invalid-request", f"the request body is not JSON: {exc}; send one event object "
                           f"or a list of up to {MAX_EVENTS}") from None
    if not items or len(items) > MAX_EVENTS:
        raise ProblemError(422, "batch-size", f"send 1 to {MAX_EVENTS} events per request, not {len(items)}; "
                           "split larger batches")
    return await to_thread.run_sync(_apply_events, request.app.state, items)


def _apply_events(state: Any, items: list[Any]) -> dict:
    outcomes: list[Outcome | None] = [None] * len(items)
    for index, item in enumerate(items):
        if isinstance(item, EventError):  # nested too deep to parse: found and refused on its own
            outcomes[index] = Outcome(index, None, "rejected", f"item {index}: {item}")
        elif not isinstance(item, dict):
            outcomes[index] = Outcome(index, None, "rejected", f"item {index} is not an event object")
        elif (depth := nesting_depth(item)) > MAX_JSON_DEPTH:  # an NDJSON line is refused as text for the same
            outcomes[index] = Outcome(index, None, "rejected", f"objects and arrays nested {depth} deep in item "
                                      f"{index}; at most {MAX_JSON_DEPTH}")
    objects = [(index, item) for index, item in enumerate(items) if outcomes[index] is None]
    for (index, _), outcome in zip(objects, Ingestor(state.engine, state.programmes, state.clock).ingest_raw(objects),
                                   strict=True):
        outcomes[index] = outcome
    results = [{"index": index, "id": o.event_id, "status": o.status, "error": o.error}
               for index, o in enumerate(outcomes) if o is not None]
    counts = {status: sum(1 for r in results if r["status"] == status) for status in ("applied", "duplicate", "rejected")}
    return {"applied": counts["applied"], "duplicates": counts["duplicate"], "rejected": counts["rejected"],
            "results": results}


@router.post("/events/{event_id}/reversal", dependencies=[Depends(require("events:write"))], tags=["events"],
             response_model=None,
             responses={**documented(ReversalAnswer), **_COMMON, **problem_schema(404)})
def post_reversal(request: Request, event_id: EventId,
                  body: ReversalRequest | None = None) -> dict:
    """Write compensating entries for everything an event produced; reversing again changes nothing."""
    return reverse_event(request.app.state.engine, event_id, body.reason if body else "", request.app.state.clock)


# The benefits query is what loan systems call while pricing: the key check and one indexed read, run
# together by `run_read` (one hop to a worker thread at most). Everything that writes, or aggregates
# (profiles), runs in worker threads.
@router.get("/clients/{client_id}/benefits", tags=["benefits"], response_model=None,
            responses={**documented(BenefitsAnswer), **_COMMON, **problem_schema(404)})
async def get_benefits(request: Request, client_id: ClientId, key: Annotated[str, Depends(credential)],
                 product: Annotated[str | None, Query(max_length=64, description="loan product to price")] = None,
                 amount: Annotated[str | None, Query(max_length=40, description="loan amount (needs product)")] = None,
                 at: At = None) -> JSONResponse:
    """Tier, points, the effective rate discount for a product after stacking and the ceiling, fast track,
    and every entitlement with its provenance. Same fields as `loyalty benefits --json`."""
    state = request.app.state

    def answer() -> dict:
        with autocommit_reads(state.engine) as conn:  # one connection for the key and the answer
            authorize(caller_of(conn, key), "benefits:read")
            return benefits_answer(conn, state.programmes, client_id, at or state.clock(), product, amount)

    # Already plain JSON types: sent as they are, without FastAPI validating the answer again.
    return JSONResponse(await run_read(state.engine, answer))


@router.get("/clients/{client_id}", dependencies=[Depends(require("benefits:read"))], tags=["clients"],
            response_model=None,
            responses={**documented(ProfileAnswer), **_COMMON, **problem_schema(404)})
def get_client(request: Request, client_id: ClientId, at: At = None) -> dict:
    """Profile, tier, tier history with reasons, and the metrics a review would see."""
    state = request.app.state
    return client_profile(state.engine, state.programmes, client_id, at or state.clock())


@router.get("/clients/{client_id}/explanation", dependencies=[Depends(require("benefits:read"))], tags=["clients"],
            response_model=None,
            responses={**documented(ExplanationAnswer), **_COMMON, **problem_schema(404)})
def get_explanation(request: Request, client_id: ClientId,
                    entitlement: Annotated[int | None, Query(
                        ge=1, le=MAX_ID, description="explain only this entitlement (whatever its status), with "
                                                     "its history; 404 if it is not the client's")] = None,
                    at: At = None) -> dict:
    """Why the client holds each entitlement at `at`: the rule and programme version that granted it, the rule's
    conditions against the event's values, the tier decision (with metric values and thresholds) behind standing
    tier benefits, and each entitlement's history. Same fields as `loyalty explain --json`."""
    state = request.app.state
    return explain_client(state.engine, state.programmes, client_id, at or state.clock(), entitlement)


@router.get("/clients/{client_id}/ledger", dependencies=[Depends(require("benefits:read"))], tags=["clients"],
            response_model=None,
            responses={**documented(LedgerPage), **_COMMON, **problem_schema(404)})
def get_ledger(request: Request, client_id: ClientId,
               cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page")] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict:
    """The client's ledger entries, newest first, a page at a time."""
    return ledger_page(request.app.state.engine, client_id, cursor, limit)


@router.post("/clients/{client_id}/quotes", status_code=201, dependencies=[Depends(require("quotes:write"))],
             tags=["quotes"], response_model=None,
             responses={**documented(QuoteAnswer, 201), **_COMMON, **problem_schema(404)})
def post_quote(request: Request, client_id: ClientId, body: QuoteRequest) -> dict:
    """Price a loan application and hold the single-use entitlements it uses until commit, void or expiry."""
    state = request.app.state
    return create_quote(state.engine, state.programmes, client_id, body.product, body.amount, state.hold, state.clock)


@router.get("/quotes/{quote_id}", dependencies=[Depends(require("benefits:read"))], tags=["quotes"],
            response_model=None,
            responses={**documented(QuoteAnswer), **_COMMON, **problem_schema(404)})
async def read_quote(request: Request, quote_id: QuoteId) -> dict:
    """A quote and its status (held, committed, voided or expired)."""
    return await run_read(request.app.state.engine, get_quote, request.app.state.engine, quote_id,
                          request.app.state.clock)


@router.post("/quotes/{quote_id}/commit", dependencies=[Depends(require("quotes:write"))], tags=["quotes"],
             response_model=None,
             responses={**documented(QuoteAnswer), **_COMMON, **problem_schema(404, 409)})
def post_commit(request: Request, quote_id: QuoteId, body: CommitRequest | None = None) -> dict:
    """The loan was booked: consume the held entitlements. 409 if the quote expired or was already resolved."""
    return commit_quote(request.app.state.engine, quote_id, body.loan_id if body else None, request.app.state.clock)


@router.post("/quotes/{quote_id}/void", dependencies=[Depends(require("quotes:write"))], tags=["quotes"],
             response_model=None,
             responses={**documented(QuoteAnswer), **_COMMON, **problem_schema(404, 409)})
def post_void(request: Request, quote_id: QuoteId) -> dict:
    """Release the quote's holds. 409 if it expired or was already resolved."""
    return void_quote(request.app.state.engine, quote_id, request.app.state.clock)


@router.get("/catalogue", dependencies=[Depends(require("benefits:read"))], tags=["redemptions"],
            response_model=None,
            responses={**documented(list[RewardAnswer]), **problem_schema(401, 403)})
async def get_catalogue(request: Request) -> list[dict]:
    """The rewards clients can redeem points for now."""
    return catalogue(request.app.state.programmes, request.app.state.clock)


@router.post("/clients/{client_id}/redemptions", status_code=201, dependencies=[Depends(require("quotes:write"))],
             tags=["redemptions"], response_model=None,
             responses={**documented(RedemptionAnswer, 201), **_COMMON, **problem_schema(404, 409)})
def post_redemption(request: Request, client_id: ClientId, body: RedemptionRequest) -> dict:
    """Spend points on a catalogue reward; 409 with the balance if it is too low."""
    state = request.app.state
    return redeem(state.engine, state.programmes, client_id, body.reward_id, state.clock)
