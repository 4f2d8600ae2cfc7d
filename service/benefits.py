"""What a client holds at a moment: tier, points, effective rate discount, service benefits, with provenance."""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select

from engine.context import tier_at
from engine.errors import did_you_mean
from engine.programme import ProgrammeSet
from rewards.stacking import Entitlement, rate_discount, service_benefits
from service.errors import InputError, NotFoundError
from storage import clients as client_store
from storage.db import read_snapshot
from storage.ledger import held_entitlements
from storage.models import Client


def client_benefits(engine: Engine, programmes: ProgrammeSet, client_id: str, at: datetime,
                    product: str | None = None) -> dict:
    """The benefits answer a loan system or an operator asks for (same fields in CLI `--json` and HTTP)."""
    if at.tzinfo is None:
        raise InputError("the moment has no time zone; give UTC, e.g. 2026-03-01T10:00:00Z")
    at = at.astimezone(UTC)
    programme = programmes.for_moment(at)
    products = programme.model.loan_products
    if product is not None and product not in products:
        raise InputError(f"unknown loan product {product!r}{did_you_mean(product, products)}; "
                         f"expected one of: {', '.join(products)}")
    with read_snapshot(engine) as conn:
        client = conn.execute(select(Client.__table__).where(Client.__table__.c.client_id == client_id)).first()
        if client is None:
            raise NotFoundError(f"no client {client_id!r}: it has no events yet")
        history = client_store.tier_histories(conn, [client_id]).get(client_id, [])
        held = [e for e in held_entitlements(conn, client_id) if e.valid_at(at)]
    tier = programme.tier(tier_at(history, at, programme.lowest_tier.id))
    by_product = {p: rate_discount(held, p, at, programme.ceiling_bps(p)) for p in products}
    chosen = by_product.get(product) if product else None
    service = service_benefits(held, at)
    return {
        "client_id": client_id,
        "as_of": at.isoformat(),
        "programme": {"id": programme.id, "version": programme.version},
        "tier": tier.id,
        "tier_name": tier.name,
        "points_balance": client.points_balance,
        "points_multiplier": str(tier.benefits.points_multiplier),
        "product": product,
        "rate_discount_bps": chosen.bps if chosen else 0,
        "rate_discount": {"uncapped_bps": chosen.uncapped_bps, "ceiling_bps": chosen.ceiling_bps,
                          "entitlement_ids": list(chosen.applied)} if chosen else None,
        "rate_discount_bps_by_product": {p: decision.bps for p, decision in by_product.items()},
        "fast_track_lane": service.fast_track_lane,
        "fast_track_sla_hours": service.fast_track_sla_hours,
        "relationship_manager": service.relationship_manager,
        "fee_waiver_pct": service.fee_waiver_pct,
        "entitlements": [entitlement_view(e) for e in held],
    }


def entitlement_view(entitlement: Entitlement) -> dict:
    """An entitlement with its provenance, as JSON."""
    return {
        "id": entitlement.id, "kind": str(entitlement.kind), "use": str(entitlement.use),
        "bps": entitlement.bps or None, "products": list(entitlement.products), "detail": entitlement.detail,
        "rule_id": entitlement.rule_id, "programme_id": entitlement.programme_id,
        "programme_version": entitlement.programme_version, "event_id": entitlement.event_id,
        "ledger_entry_id": entitlement.id, "valid_from": entitlement.valid_from.isoformat(),
        "valid_to": entitlement.valid_to.isoformat() if entitlement.valid_to else None,
    }
