"""What a client holds at a moment: tier, points, effective rate discount, service benefits, with provenance.

Single-use entitlements held by a live quote are listed (with the quote's id) but left out of the
effective discount and benefits: another application cannot use them until the quote is voided or expires.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal

from sqlalchemy import Connection, Engine

from engine.errors import EventError, did_you_mean
from engine.events import minor_unit_exponent, parse_money
from engine.programme import CompiledProgramme, ProgrammeSet
from rewards.stacking import DiscountDecision, Entitlement, ServiceBenefits, rate_discount, service_benefits
from service.answer import Answer, Moment, ProgrammeRef
from service.apikeys import Caller, KeyCache, authenticate
from service.errors import InputError, NotFoundError
from storage.holdings import Holdings, client_holdings, read_holdings


class EntitlementFields(Answer):
    """What an entitlement is: the fields every answer about one starts with."""

    id: int
    kind: Literal["rate_discount", "fast_track", "relationship_manager", "fee_waiver"]
    use: Literal["single", "standing"]
    bps: int | None
    products: list[str]
    detail: dict[str, Any]


class EntitlementAnswer(EntitlementFields):
    """An entitlement with its provenance."""

    rule_id: str
    programme_id: str
    programme_version: str
    event_id: str | None
    ledger_entry_id: int
    valid_from: Moment
    valid_to: Moment | None
    reserved_by_quote: str | None


class DiscountAnswer(Answer):
    """How the effective discount came about."""

    uncapped_bps: int
    ceiling_bps: int
    entitlement_ids: list[int]


class BenefitsAnswer(Answer):
    """What a client holds at a moment, and what it gives a loan of `product` (and `amount`)."""

    client_id: str
    as_of: Moment
    programme: ProgrammeRef
    tier: str
    tier_name: str
    points_balance: int
    points_multiplier: str
    product: str | None
    amount: str | None
    currency: str
    rate_discount_bps: int
    rate_discount: DiscountAnswer | None
    interest_saved_per_year: str | None
    rate_discount_bps_by_product: dict[str, int]
    fast_track_lane: str | None
    fast_track_sla_hours: int | None
    relationship_manager: bool
    fee_waiver_pct: int
    entitlements: list[EntitlementAnswer]


@dataclass(frozen=True)
class ClientState:
    """What the benefits answer is computed from, read in one transaction."""

    client_id: str
    points_balance: int
    tier: str | None  # at the moment asked about; None before the first assignment
    held: list[Entitlement]  # valid at the moment asked about
    reserved: dict[int, str]  # entitlement id → quote holding it


@dataclass(frozen=True)
class Pricing:
    """The effective benefits for one application (or none) after holds, stacking and the ceiling."""

    tier_id: str
    by_product: dict[str, DiscountDecision]
    chosen: DiscountDecision | None
    service: ServiceBenefits


def require_utc(at: datetime) -> datetime:
    """`at` in UTC; a naive moment, or one outside the years 1900-2999, is an input error."""
    if at.tzinfo is None:
        raise InputError("the moment has no time zone; give UTC, e.g. 2026-03-01T10:00:00Z")
    try:
        utc = at.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not 1900 <= utc.year <= 2999:
        raise InputError(f"the moment {at.isoformat()} is outside the years 1900-2999")
    return utc


def check_product(programme: CompiledProgramme, product: str | None) -> None:
    """Raise InputError unless `product` is None or one of the programme's loan products."""
    products = programme.model.loan_products
    if product is not None and product not in products:
        raise InputError(f"unknown loan product {product!r}{did_you_mean(product, products)}; "
                         f"expected one of: {', '.join(products)}")


def check_amount(programme: CompiledProgramme, amount: object) -> Decimal:
    """The loan amount as an exact Decimal in the programme's currency, or InputError saying why not."""
    try:
        return parse_money(amount, programme.currency, "amount")
    except EventError as exc:
        raise InputError(str(exc)) from None


def load_state(conn: Connection, client_id: str, at: datetime) -> ClientState:
    """Read a client's balance, tier history, entitlements valid at `at` and their holds in `conn`'s transaction;
    NotFoundError if unknown."""
    return _state(client_holdings(conn, client_id, at), client_id, at)


def _state(holdings: Holdings | None, client_id: str, at: datetime) -> ClientState:
    if holdings is None:
        raise NotFoundError(f"no client {client_id!r}: it has no events yet")
    held = [e for e in holdings.held if e.valid_at(at)]
    return ClientState(client_id, holdings.points_balance, holdings.tier, held, holdings.reserved)


def price(programme: CompiledProgramme, state: ClientState, at: datetime, product: str | None) -> Pricing:
    """Stack what the client holds at `at` and no live quote reserves."""
    available = [e for e in state.held if e.id not in state.reserved]
    by_product = {p: rate_discount(available, p, at, programme.ceiling_bps(p)) for p in programme.model.loan_products}
    tier_id = state.tier or programme.lowest_tier.id
    return Pricing(tier_id, by_product, by_product.get(product) if product else None,
                   service_benefits(available, at))


def yearly_saving(programme: CompiledProgramme, amount: Decimal, bps: int) -> str:
    """Interest a year saved on `amount` at `bps`, rounded down to the currency's minor unit (never overstated)."""
    unit = Decimal(1).scaleb(-minor_unit_exponent(programme.currency))
    return str((amount * bps / 10_000).quantize(unit, rounding=ROUND_DOWN))


def client_benefits(engine: Engine, programmes: ProgrammeSet, client_id: str, at: datetime,
                    product: str | None = None, amount: object = None) -> BenefitsAnswer:
    """The benefits answer a loan system or an operator asks for (same fields in CLI `--json` and HTTP)."""
    at = require_utc(at)
    programme = programmes.for_moment(at)
    check_product(programme, product)
    loan_amount = check_amount(programme, amount) if amount is not None else None
    if loan_amount is not None and product is None:
        raise InputError("an amount needs a product: say which loan product it is for")
    state = _state(read_holdings(engine, client_id, at), client_id, at)  # one statement: its own snapshot
    return benefits_view(programme, state, price(programme, state, at, product), at, loan_amount)


def caller_benefits(engine: Engine, keys: KeyCache, key: str, admit: Callable[[Caller | None], object],
                    programmes: ProgrammeSet, client_id: str, at: datetime, product: str | None = None,
                    amount: object = None) -> BenefitsAnswer:
    """The benefits answer for the holder of API key `key` (read unless `keys` verified it lately), in one call
    for the hot path of pricing (one hop to a worker thread at most); `admit` refuses a caller by raising."""
    admit(authenticate(engine, key, keys))
    return client_benefits(engine, programmes, client_id, at, product, amount)


def benefits_view(programme: CompiledProgramme, state: ClientState, pricing: Pricing, at: datetime,
                  amount: Decimal | None) -> BenefitsAnswer:
    """The benefits answer."""
    tier = programme.tier(pricing.tier_id)
    chosen, service = pricing.chosen, pricing.service
    return BenefitsAnswer(
        client_id=state.client_id,
        as_of=at.isoformat(),
        programme=ProgrammeRef(id=programme.id, version=programme.version),
        tier=tier.id,
        tier_name=tier.name,
        points_balance=state.points_balance,
        points_multiplier=str(tier.benefits.points_multiplier),
        product=chosen.product if chosen else None,
        amount=str(amount) if amount is not None else None,
        currency=programme.currency,
        rate_discount_bps=chosen.bps if chosen else 0,
        rate_discount=DiscountAnswer(uncapped_bps=chosen.uncapped_bps, ceiling_bps=chosen.ceiling_bps,
                                     entitlement_ids=list(chosen.applied)) if chosen else None,
        interest_saved_per_year=yearly_saving(programme, amount, chosen.bps) if chosen and amount else None,
        rate_discount_bps_by_product={p: decision.bps for p, decision in pricing.by_product.items()},
        fast_track_lane=service.fast_track_lane,
        fast_track_sla_hours=service.fast_track_sla_hours,
        relationship_manager=service.relationship_manager,
        fee_waiver_pct=service.fee_waiver_pct,
        entitlements=[entitlement_view(e, state.reserved.get(e.id)) for e in state.held],
    )


def entitlement_view(entitlement: Entitlement, reserved_by: str | None = None) -> EntitlementAnswer:
    """An entitlement with its provenance."""
    return EntitlementAnswer(
        id=entitlement.id, kind=str(entitlement.kind), use=str(entitlement.use),
        bps=entitlement.bps or None, products=list(entitlement.products), detail=entitlement.detail,
        rule_id=entitlement.rule_id, programme_id=entitlement.programme_id,
        programme_version=entitlement.programme_version, event_id=entitlement.event_id,
        ledger_entry_id=entitlement.id, valid_from=entitlement.valid_from.isoformat(),
        valid_to=entitlement.valid_to.isoformat() if entitlement.valid_to else None,
        reserved_by_quote=reserved_by,
    )
