"""The `/v1` endpoints: thin adapters from HTTP to the use cases in `service/`."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel

from api.models import CommitRequest, QuoteRequest, RedemptionRequest, ReversalRequest
from api.problems import ProblemError, problem_responses
from api.reads import run_read
from api.security import authorize, credential, require
from engine.errors import EventError
from engine.json_input import parse_json_items
from service.benefits import BenefitsAnswer, caller_benefits
from service.explain import MAX_ID, explain_client
from service.explain_answer import ExplanationAnswer
from service.ingest import EventsAnswer, Ingestor
from service.ledger_page import LedgerPage, ledger_page
from service.profile import ProfileAnswer, client_profile
from service.quotes import QuoteAnswer, commit_quote, create_quote, get_quote, void_quote
from service.redemptions import RedemptionAnswer, RewardAnswer, catalogue, redeem
from service.reversal import ReversalAnswer, reverse_event

MAX_EVENTS = 1000
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
ClientId = Annotated[str, Path(min_length=1, max_length=64, pattern=PRINTABLE,
                               description="the lender's client id, e.g. C-1001")]
QuoteId = Annotated[str, Path(min_length=1, max_length=40, pattern=PRINTABLE)]
EventId = Annotated[str, Path(min_length=1, max_length=128, pattern=PRINTABLE)]
At = Annotated[datetime | None, Query(description="moment to look at, ISO 8601 with zone; default now")]
Product = Annotated[str | None, Query(max_length=64, description="loan product to price")]
Amount = Annotated[str | None, Query(max_length=40, description="loan amount (needs product)")]
# The problems every operation can answer: no or a bad key (401), a key without the scope (403), a parameter
# that does not fit (422), a failure (500), the database unavailable or the request's time bound passed (503).
READ = problem_responses(401, 403, 422, 500, 503)
# And every POST, from the request guard: a bad Idempotency-Key (400), a body too slow (408) or too large
# (413), a key reused for another request or still running (409).
WRITE = {**READ, **problem_responses(400, 408, 409, 413)}
MISSING = problem_responses(404)

router = APIRouter(prefix="/v1")


def as_sent(answer: BaseModel) -> Response:
    """`answer` as the JSON its route's `response_model` documents, sent as it is: FastAPI would validate the
    model it was built as a second time before serialising it."""
    return Response(answer.model_dump_json(), media_type="application/json")


@router.post("/events", operation_id="postEvents", dependencies=[Depends(require("events:write"))],
             tags=["events"], response_model=EventsAnswer, responses=WRITE)
async def post_events(request: Request) -> EventsAnswer:
    """Apply events; each item is applied, a duplicate (same id and content) or rejected with its reason.

    A bad item never stops the others, whatever its size or shape. Re-sending an event is safe: it counts
    as a duplicate. A body that is not JSON at all is a 422 (there are no items to answer for).
    """
    # The body is read and parsed here, not by FastAPI: with the bounded parser of NDJSON ingest, a value no
    # event may hold (a 5,000-digit number, NaN) rejects its own item instead of the whole batch. The
    # documented body (`EventIn`, `EventBatch`: api.openapi) is what this accepts.
    try:
        items = parse_json_items(await request.body())
    except EventError as exc:
        raise ProblemError(422, "invalid-request", f"the request body is not JSON: {exc}; send one event object "
                           f"or a list of up to {MAX_EVENTS}") from None
    if not items or len(items) > MAX_EVENTS:
        raise ProblemError(422, "batch-size", f"send 1 to {MAX_EVENTS} events per request, not {len(items)}; "
                           "split larger batches")
    state = request.app.state
    return await to_thread.run_sync(Ingestor(state.engine, state.programmes, state.clock).ingest_items, items)


@router.post("/events/{event_id}/reversal", operation_id="reverseEvent",
             dependencies=[Depends(require("events:write"))], tags=["events"], response_model=ReversalAnswer,
             responses={**WRITE, **MISSING})
def post_reversal(request: Request, event_id: EventId, body: ReversalRequest | None = None) -> ReversalAnswer:
    """Write compensating entries for everything an event produced; reversing again changes nothing."""
    return reverse_event(request.app.state.engine, event_id, body.reason if body else "", request.app.state.clock)


# The benefits query is what loan systems call while pricing: the key check and one indexed read, run
# together by `run_read` (one hop to a worker thread at most). Everything that writes, or aggregates
# (profiles), runs in worker threads.
@router.get("/clients/{client_id}/benefits", operation_id="getBenefits", tags=["benefits"],
            response_model=BenefitsAnswer, responses={**READ, **MISSING})
async def get_benefits(request: Request, client_id: ClientId, key: Annotated[str, Depends(credential)],
                       product: Product = None, amount: Amount = None, at: At = None) -> Response:
    """Tier, points, the effective rate discount for a product after stacking and the ceiling, fast track,
    and every entitlement with its provenance. Same fields as `loyalty benefits --json`."""
    state = request.app.state
    return as_sent(await run_read(state.engine, caller_benefits, state.engine, state.keys, key,
                                  lambda caller: authorize(caller, "benefits:read"), state.programmes, client_id,
                                  at or state.clock(), product, amount))


@router.get("/clients/{client_id}", operation_id="getProfile", dependencies=[Depends(require("benefits:read"))],
            tags=["clients"], response_model=ProfileAnswer, responses={**READ, **MISSING})
def get_client(request: Request, client_id: ClientId, at: At = None) -> ProfileAnswer:
    """Profile, tier, tier history with reasons, and the metrics a review would see."""
    state = request.app.state
    return client_profile(state.engine, state.programmes, client_id, at or state.clock())


@router.get("/clients/{client_id}/explanation", operation_id="explainClient",
            dependencies=[Depends(require("benefits:read"))], tags=["clients"], response_model=ExplanationAnswer,
            responses={**READ, **MISSING})
def get_explanation(request: Request, client_id: ClientId,
                    entitlement: Annotated[int | None, Query(
                        ge=1, le=MAX_ID, description="explain only this entitlement (whatever its status), with "
                                                     "its history; 404 if it is not the client's")] = None,
                    at: At = None) -> ExplanationAnswer:
    """Why the client holds each entitlement at `at`: the rule and programme version that granted it, the rule's
    conditions against the event's values, the tier decision (with metric values and thresholds) behind standing
    tier benefits, and each entitlement's history. Same fields as `loyalty explain --json`."""
    state = request.app.state
    return explain_client(state.engine, state.programmes, client_id, at or state.clock(), entitlement)


@router.get("/clients/{client_id}/ledger", operation_id="getLedger", dependencies=[Depends(require("benefits:read"))],
            tags=["clients"], response_model=LedgerPage, responses={**READ, **MISSING})
def get_ledger(request: Request, client_id: ClientId,
               cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page")] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100) -> LedgerPage:
    """The client's ledger entries, newest first, a page at a time."""
    return ledger_page(request.app.state.engine, client_id, cursor, limit)


@router.post("/clients/{client_id}/quotes", operation_id="createQuote", status_code=201,
             dependencies=[Depends(require("quotes:write"))], tags=["quotes"], response_model=QuoteAnswer,
             responses={**WRITE, **MISSING})
def post_quote(request: Request, client_id: ClientId, body: QuoteRequest) -> QuoteAnswer:
    """Price a loan application and hold the single-use entitlements it uses until commit, void or expiry."""
    state = request.app.state
    return create_quote(state.engine, state.programmes, client_id, body.product, body.amount, state.hold, state.clock)


@router.get("/quotes/{quote_id}", operation_id="getQuote", dependencies=[Depends(require("benefits:read"))],
            tags=["quotes"], response_model=QuoteAnswer, responses={**READ, **MISSING})
async def read_quote(request: Request, quote_id: QuoteId) -> QuoteAnswer:
    """A quote and its status (held, committed, voided or expired)."""
    return await run_read(request.app.state.engine, get_quote, request.app.state.engine, quote_id,
                          request.app.state.clock)


@router.post("/quotes/{quote_id}/commit", operation_id="commitQuote", dependencies=[Depends(require("quotes:write"))],
             tags=["quotes"], response_model=QuoteAnswer, responses={**WRITE, **MISSING})
def post_commit(request: Request, quote_id: QuoteId, body: CommitRequest | None = None) -> QuoteAnswer:
    """The loan was booked: consume the held entitlements. 409 if the quote expired or was already resolved."""
    return commit_quote(request.app.state.engine, quote_id, body.loan_id if body else None, request.app.state.clock)


@router.post("/quotes/{quote_id}/void", operation_id="voidQuote", dependencies=[Depends(require("quotes:write"))],
             tags=["quotes"], response_model=QuoteAnswer, responses={**WRITE, **MISSING})
def post_void(request: Request, quote_id: QuoteId) -> QuoteAnswer:
    """Release the quote's holds. 409 if it expired or was already resolved."""
    return void_quote(request.app.state.engine, quote_id, request.app.state.clock)


@router.get("/catalogue", operation_id="getCatalogue", dependencies=[Depends(require("benefits:read"))],
            tags=["redemptions"], response_model=list[RewardAnswer],
            responses={status: READ[status] for status in (401, 403, 500, 503)})
async def get_catalogue(request: Request) -> list[RewardAnswer]:
    """The rewards clients can redeem points for now."""
    return catalogue(request.app.state.programmes, request.app.state.clock)


@router.post("/clients/{client_id}/redemptions", operation_id="redeem", status_code=201,
             dependencies=[Depends(require("quotes:write"))], tags=["redemptions"], response_model=RedemptionAnswer,
             responses={**WRITE, **MISSING})
def post_redemption(request: Request, client_id: ClientId, body: RedemptionRequest) -> RedemptionAnswer:
    """Spend points on a catalogue reward; 409 with the balance if it is too low."""
    state = request.app.state
    return redeem(state.engine, state.programmes, client_id, body.reward_id, state.clock)
