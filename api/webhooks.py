"""Webhook subscriptions and deliveries over HTTP (the `admin` scope), and every notice type documented as an
OpenAPI 3.1 webhook: what a subscriber receives, with its schema."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, create_model

from api.routes import MISSING, PRINTABLE, READ, WRITE
from api.security import require
from rewards.notices import TYPES
from service.errors import InputError
from service.webhooks import (DeliveryList, RemovedAnswer, ReplayAnswer, SubscriptionAnswer, SubscriptionList,
                              add_subscription, enable_subscription, list_deliveries, list_subscriptions,
                              remove_subscription, replay_delivery)

ADMIN = [Depends(require("admin"))]
SubscriptionId = Annotated[str, Path(min_length=1, max_length=40, pattern=PRINTABLE,
                                     description="the subscription's id, e.g. whk_3f2a9c0d1e4b5a67")]

router = APIRouter(prefix="/v1", tags=["webhooks"])


class SubscriptionRequest(BaseModel):
    """A new subscription: where to send, which notice types (or `*`), and optionally its signing secret."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, description="an http(s) URL")
    events: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=50, description="notice types, or [\"*\"] for all")
    secret: str | None = Field(None, max_length=200, description="whsec_<base64>; one is made when left out")
    description: str | None = Field(None, max_length=500)


@router.get("/webhooks", operation_id="listWebhooks", dependencies=ADMIN, response_model=SubscriptionList,
            responses=READ)
def get_webhooks(request: Request) -> SubscriptionList:
    """Every subscription, oldest first: its notice types, deliveries pending and failed, and whether disabled."""
    return list_subscriptions(request.app.state.engine)


@router.post("/webhooks", operation_id="addWebhook", dependencies=ADMIN, response_model=SubscriptionAnswer,
             status_code=201, responses=WRITE)
def post_webhook(request: Request, body: Annotated[SubscriptionRequest, Body()]) -> SubscriptionAnswer:
    """Subscribe a URL to notices, signed following Standard Webhooks; the answer shows the secret, once."""
    state = request.app.state
    return add_subscription(state.engine, body.url, body.events, body.secret, body.description, state.clock)


@router.delete("/webhooks/{subscription_id}", operation_id="removeWebhook", dependencies=ADMIN,
               response_model=RemovedAnswer, responses={**READ, **MISSING})
def delete_webhook(request: Request, subscription_id: SubscriptionId) -> RemovedAnswer:
    """Remove a subscription, its pending deliveries and its delivery log."""
    return remove_subscription(request.app.state.engine, subscription_id)


@router.post("/webhooks/{subscription_id}/enable", operation_id="enableWebhook", dependencies=ADMIN,
             response_model=SubscriptionAnswer, responses={**WRITE, **MISSING})
def post_enable(request: Request, subscription_id: SubscriptionId) -> SubscriptionAnswer:
    """Enable a disabled subscription: what waited for it is sent now, in order per client."""
    return enable_subscription(request.app.state.engine, subscription_id, request.app.state.clock)


@router.get("/webhooks/{subscription_id}/deliveries", operation_id="listWebhookDeliveries", dependencies=ADMIN,
            response_model=DeliveryList, responses={**READ, **MISSING})
def get_deliveries(
    request: Request, subscription_id: SubscriptionId,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="notices written from this moment, ISO 8601 with zone")] = None,
    until: Annotated[datetime | None, Query(description="and before this moment")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryList:
    """The subscription's delivery log: deliveries, newest notice first, each with its latest attempts."""
    return list_deliveries(request.app.state.engine, subscription_id, status, _aware(since), _aware(until), limit)


@router.post("/webhook-deliveries/{delivery_id}/replay", operation_id="replayWebhookDelivery", dependencies=ADMIN,
             response_model=ReplayAnswer, responses={**WRITE, **MISSING})
def post_replay(request: Request, delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> ReplayAnswer:
    """Send one delivery again, whatever its state."""
    return replay_delivery(request.app.state.engine, delivery_id, request.app.state.clock)


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        raise InputError(f"{moment.isoformat()} has no time zone; add Z for UTC")
    return moment


def install(app: FastAPI) -> None:
    """Serve the webhook endpoints and document each notice type as an OpenAPI webhook."""
    app.include_router(router)
    for name, (version, data) in TYPES.items():
        envelope = create_model(
            "Notice_" + name.replace(".", "_"), __config__=ConfigDict(extra="forbid"),
            type=(Literal[name], ...), version=(Literal[version], ...),
            timestamp=(datetime, Field(description="when the decision took effect (ISO 8601 UTC)")), data=(data, ...))
        envelope.__doc__ = (f"The `{name}` notice as POSTed to a subscriber, signed following Standard Webhooks "
                            "(`webhook-id` = the notice's id: deduplicate by it; `webhook-timestamp`, "
                            "`webhook-signature`).")
        _document(app, name, envelope, data.__doc__ or name)


def _document(app: FastAPI, name: str, envelope: type[BaseModel], summary: str) -> None:
    def receive(body: envelope) -> None:  # type: ignore[valid-type]  # documentation only: never served
        """What a subscriber receives; answer 2xx when it is handled (410 Gone ends the subscription)."""

    receive.__annotations__ = {"body": envelope, "return": None}
    app.webhooks.post(name, summary=summary.splitlines()[0], operation_id=f"notice{_camel(name)}",
                      status_code=204, responses=_ANSWERS)(receive)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("_", ".").split("."))


# What the dispatcher makes of a subscriber's answer.
_ANSWERS = {
    204: {"description": "any 2xx: delivered"},
    410: {"description": "Gone: the subscription is disabled at once (its deliveries wait for `enable`)"},
    "4XX": {"description": "any other answer, or none within the timeout: retried with exponential backoff and "
                           "jitter for a day, then failed; a subscription failing for a day is disabled"},
    "5XX": {"description": "retried, as 4XX"},
}
