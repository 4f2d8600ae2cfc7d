"""Quotes: price a loan application and hold the single-use entitlements it uses until the loan is booked.

A quote is created `held`. Committing it (the loan was booked) writes one consume entry per held
entitlement; voiding it releases them; after `expires_at` it is expired and its holds are free again.
Each quote resolves at most once: the client's row is locked, the state is re-read under the lock, and
the status change is a conditional update. The database also refuses a second consume entry for any
entitlement (a partial unique index), so no code path can apply a single-use discount twice.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Engine

from engine.events import minor_unit_exponent
from engine.programme import ProgrammeSet
from rewards import notices
from rewards.kinds import Status, Use
from service import telemetry
from service.answer import Answer, Moment, ProgrammeRef
from service.benefits import (DiscountAnswer, EntitlementAnswer, benefits_view, check_amount, check_product,
                              load_state, price)
from service.clock import Clock, utc_now
from service.errors import ConflictError, NotFoundError
from service.retry import with_retry
from storage import clients as client_store
from storage import ledger, outbox
from storage import quotes as quote_store
from storage.db import read_snapshot, write_transaction
from storage.ledger import held_entitlements

DEFAULT_HOLD = timedelta(minutes=15)
_PRICING_KEYS = ("tier", "tier_name", "rate_discount_bps", "rate_discount", "interest_saved_per_year",
                 "fast_track_lane", "fast_track_sla_hours", "relationship_manager", "fee_waiver_pct")


class QuoteAnswer(Answer):
    """A quote: its pricing and the single-use entitlements it holds."""

    quote_id: str
    client_id: str
    status: Literal["held", "committed", "voided", "expired"]
    product: str
    amount: str
    currency: str
    programme: ProgrammeRef
    created_at: Moment
    expires_at: Moment
    resolved_at: Moment | None
    loan_id: str | None
    held_entitlement_ids: list[int]
    tier: str
    tier_name: str
    rate_discount_bps: int
    rate_discount: DiscountAnswer | None
    interest_saved_per_year: str | None
    fast_track_lane: str | None
    fast_track_sla_hours: int | None
    relationship_manager: bool
    fee_waiver_pct: int
    entitlements_used: list[EntitlementAnswer]


def create_quote(engine: Engine, programmes: ProgrammeSet, client_id: str, product: str, amount: object,
                 hold: timedelta = DEFAULT_HOLD, clock: Clock = utc_now) -> QuoteAnswer:
    """Price an application for `amount` of `product` now and hold the single-use entitlements it uses."""
    quote = with_retry(lambda: _create(engine, programmes, client_id, product, amount, hold, clock))
    telemetry.count_quote(quote_store.HELD)
    return quote


def _create(engine: Engine, programmes: ProgrammeSet, client_id: str, product: str, amount: object,
            hold: timedelta, clock: Clock) -> QuoteAnswer:
    with write_transaction(engine) as conn:
        programme = programmes.for_moment(clock())
        check_product(programme, product)
        loan_amount = check_amount(programme, amount)
        if not client_store.lock_clients(conn, [client_id]):
            raise NotFoundError(f"no client {client_id!r}: it has no events yet")
        # Under the lock no other quote can take these holds meanwhile; reading the clock here keeps a
        # quote committed just before ours from looking as if it came from the future.
        now = clock()
        state = load_state(conn, client_id, now)
        pricing = price(programme, state, now, product)
        used = set(pricing.chosen.applied if pricing.chosen else ()) | set(pricing.service.applied)
        answer = benefits_view(programme, state, pricing, now, loan_amount).model_dump(mode="json")
        row = {
            "id": f"q_{uuid.uuid4().hex}", "client_id": client_id, "product": product,
            "amount_minor": int(loan_amount.scaleb(minor_unit_exponent(programme.currency))),
            "currency": programme.currency,
            "pricing": json.dumps({**{key: answer[key] for key in _PRICING_KEYS},
                                   "amount": answer["amount"],
                                   "entitlements_used": [e for e in answer["entitlements"] if e["id"] in used]}),
            "programme_id": programme.id, "programme_version": programme.version,
            "created_at": now, "expires_at": now + hold,
        }
        holds = sorted(e.id for e in state.held if e.id in used and e.use == Use.SINGLE)
        quote_store.insert_quote(conn, row, holds)
        return quote_view({**row, "status": quote_store.HELD, "resolved_at": None, "loan_id": None,
                           "holds": holds}, now)


def commit_quote(engine: Engine, quote_id: str, loan_id: str | None = None, clock: Clock = utc_now) -> QuoteAnswer:
    """The loan was booked: consume the quote's held entitlements, once."""
    quote = with_retry(lambda: _resolve(engine, quote_id, quote_store.COMMITTED, loan_id, clock))
    telemetry.count_quote(quote_store.COMMITTED)
    return quote


def void_quote(engine: Engine, quote_id: str, clock: Clock = utc_now) -> QuoteAnswer:
    """The application was withdrawn or priced again: release the quote's holds."""
    quote = with_retry(lambda: _resolve(engine, quote_id, quote_store.VOIDED, None, clock))
    telemetry.count_quote(quote_store.VOIDED)
    return quote


def get_quote(engine: Engine, quote_id: str, clock: Clock = utc_now) -> QuoteAnswer:
    """A quote with its status now (a held quote past its expiry reads as expired)."""
    with read_snapshot(engine) as conn:
        quote = quote_store.find_quote(conn, quote_id)
    if quote is None:
        raise NotFoundError(f"no quote {quote_id!r}")
    return quote_view(quote, clock())


def _resolve(engine: Engine, quote_id: str, outcome: str, loan_id: str | None, clock: Clock) -> QuoteAnswer:
    with write_transaction(engine) as conn:
        quote = quote_store.find_quote(conn, quote_id)
        if quote is None:
            raise NotFoundError(f"no quote {quote_id!r}")
        client_store.lock_clients(conn, [quote["client_id"]])
        quote = quote_store.find_quote(conn, quote_id)  # as it is now that concurrent resolutions are done
        now = clock()
        _require_live(quote, now, "commit" if outcome == quote_store.COMMITTED else "void")
        if outcome == quote_store.COMMITTED:
            held = {e.id: e for e in held_entitlements(conn, quote["client_id"])}
            withdrawn = [e for e in quote["holds"] if e not in held or held[e].status != Status.ACTIVE]
            if withdrawn:
                raise ConflictError(
                    f"quote {quote_id} cannot be committed: entitlement(s) {withdrawn} it holds are no longer active "
                    "(revoked, reversed or consumed since it was made); void it and request a new quote",
                    "entitlement-withdrawn", entitlement_ids=withdrawn)
            detail = {"quote_id": quote_id, **({"loan_id": loan_id} if loan_id else {})}
            ledger.append(conn, [ledger.consume_entry(held[e], now, now, detail) for e in quote["holds"]])
        if not quote_store.resolve(conn, quote_id, outcome, now, loan_id):
            raise ConflictError(f"quote {quote_id} was resolved by another request", "quote-resolved")
        if outcome == quote_store.COMMITTED:
            outbox.record(conn, [notices.notice(
                "quote.committed", now, client_id=quote["client_id"], quote_id=quote_id, loan_id=loan_id,
                product=quote["product"], amount_minor=quote["amount_minor"], currency=quote["currency"],
                entitlement_ids=quote["holds"], pricing=json.loads(quote["pricing"]), committed_at=now)], now)
        return quote_view({**quote, "status": outcome, "resolved_at": now, "loan_id": loan_id}, now)


def _require_live(quote: dict, now: datetime, action: str) -> None:
    status = quote_store.effective_status(quote, now)
    if status == quote_store.EXPIRED:
        telemetry.count_quote(quote_store.EXPIRED)  # the only moment anyone learns of it
        raise ConflictError(f"cannot {action} quote {quote['id']}: it expired at {quote['expires_at'].isoformat()} "
                            "and its holds were released; request a new quote", "quote-expired",
                            expired_at=quote["expires_at"].isoformat())
    if status != quote_store.HELD:
        loan = f" for loan {quote['loan_id']}" if quote["loan_id"] else ""
        raise ConflictError(f"cannot {action} quote {quote['id']}: it was already {status}{loan} at "
                            f"{quote['resolved_at'].isoformat()}; a quote resolves once", f"quote-{status}",
                            quote_status=status, resolved_at=quote["resolved_at"].isoformat())


def quote_view(quote: dict, now: datetime) -> QuoteAnswer:
    """A quote, with the pricing stored when it was made."""
    pricing = json.loads(quote["pricing"])
    return QuoteAnswer.model_validate({
        "quote_id": quote["id"], "client_id": quote["client_id"],
        "status": quote_store.effective_status(quote, now),
        "product": quote["product"], "amount": pricing.pop("amount"), "currency": quote["currency"],
        "programme": {"id": quote["programme_id"], "version": quote["programme_version"]},
        "created_at": quote["created_at"].isoformat(), "expires_at": quote["expires_at"].isoformat(),
        "resolved_at": quote["resolved_at"].isoformat() if quote["resolved_at"] else None,
        "loan_id": quote["loan_id"],
        "held_entitlement_ids": quote["holds"],
        **pricing,
    })
