"""Webhook subscriptions and the delivery log: add, list, remove, enable; list deliveries with their
attempts; replay one delivery or a time range. The dispatcher that sends them is `service.dispatch`."""
from __future__ import annotations

import base64
import binascii
import re
import secrets
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import Engine

from engine.errors import did_you_mean
from rewards.notices import TYPES, json_schemas
from service.answer import Answer, Moment
from service.clock import Clock, utc_now
from service.errors import InputError, NotFoundError
from service.exchange import split_url
from storage import webhooks as store
from storage.db import read_snapshot, write_transaction

SECRET_PREFIX = "whsec_"
MAX_URL = 2000
MAX_TYPES = 50
MAX_DESCRIPTION = 500
MAX_LIST = 1000
LOG_PER_DELIVERY = 50  # attempts shown with each delivery: the latest ones
STATUSES = (store.PENDING, store.DELIVERED, store.FAILED)
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")


class SubscriptionAnswer(Answer):
    """A webhook subscription. `secret` is shown only when it is added (keep it: it signs every delivery)."""

    id: str
    url: str
    events: list[str]  # notice types, or ["*"] for all
    description: str | None
    created_at: Moment
    disabled_at: Moment | None
    disabled_reason: str | None
    failing_since: Moment | None  # since when every attempt failed (None while the last one succeeded)
    pending: int  # deliveries waiting
    failed: int  # deliveries that exhausted their retries
    secret: str | None = None


class SubscriptionList(Answer):
    """Every subscription, oldest first."""

    subscriptions: list[SubscriptionAnswer]


class RemovedAnswer(Answer):
    """A subscription removed, with its deliveries and their log."""

    id: str
    removed: bool


class AttemptAnswer(Answer):
    """One HTTP attempt of a delivery."""

    attempted_at: Moment
    dispatcher: str
    status_code: int | None  # None: no answer (connection refused, timeout...)
    error: str | None
    duration_ms: int


class DeliveryAnswer(Answer):
    """One notice to one subscription: its state and its latest attempts (the delivery log)."""

    id: int
    subscription_id: str
    message_id: str  # the notice's id, sent as `webhook-id`
    type: str
    client_id: str | None
    status: str  # pending, delivered or failed
    attempts: int
    next_attempt_at: Moment | None  # when pending
    last_status_code: int | None
    last_error: str | None
    recorded_at: Moment  # when the notice was written
    delivered_at: Moment | None
    log: list[AttemptAnswer]


class DeliveryList(Answer):
    """Deliveries, newest notice first."""

    deliveries: list[DeliveryAnswer]


class ReplayAnswer(Answer):
    """Deliveries made pending again, due now: the dispatcher sends them again, in order per client."""

    replayed: int
    delivery_ids: list[int]


class NoticeType(Answer):
    """A notice type's current schema version and the JSON Schema of its `data`."""

    version: int
    data_schema: dict


class NoticeTypes(Answer):
    """Every notice type a subscription may ask for."""

    types: dict[str, NoticeType]


def add_subscription(engine: Engine, url: str, events: list[str], secret: str | None = None,
                     description: str | None = None, clock: Clock = utc_now) -> SubscriptionAnswer:
    """Subscribe `url` to notices of `events` (type names, or `*`), signed with `secret` (one is made if not
    given); InputError naming what does not fit."""
    row = {"id": f"whk_{secrets.token_hex(8)}", "url": check_url(url), "event_types": " ".join(check_types(events)),
           "secret": check_secret(secret) if secret else new_secret(),
           "description": _check_description(description), "created_at": clock(), "disabled_at": None,
           "disabled_reason": None, "failing_since": None}
    with write_transaction(engine) as conn:
        store.insert_subscription(conn, row)
    return _subscription({**row, "pending": 0, "failed": 0}, with_secret=True)


def list_subscriptions(engine: Engine) -> SubscriptionList:
    """Every subscription, with its state, without secrets."""
    with read_snapshot(engine) as conn:
        rows = store.subscriptions(conn)
    return SubscriptionList(subscriptions=[_subscription(row) for row in rows])


def remove_subscription(engine: Engine, subscription_id: str) -> RemovedAnswer:
    """Remove a subscription, its deliveries and their log; NotFoundError if there is none."""
    with write_transaction(engine) as conn:
        if not store.delete_subscription(conn, subscription_id):
            raise _missing(subscription_id)
    return RemovedAnswer(id=subscription_id, removed=True)


def enable_subscription(engine: Engine, subscription_id: str, clock: Clock = utc_now) -> SubscriptionAnswer:
    """Enable a disabled subscription: what waited for it is sent now, in order; NotFoundError if there is none."""
    with write_transaction(engine) as conn:
        if not store.enable(conn, subscription_id, clock()):
            raise _missing(subscription_id)
        return _subscription(store.subscriptions(conn, subscription_id)[0])


def list_deliveries(engine: Engine, subscription_id: str | None = None, status: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    limit: int = 100) -> DeliveryList:
    """Deliveries (of a subscription, in a status, of notices written in [since, until)), newest first, each
    with its latest attempts; NotFoundError for an unknown subscription."""
    if status is not None and status not in STATUSES:
        raise InputError(f"unknown status {status!r}{did_you_mean(status, STATUSES)}; expected one of: "
                         f"{', '.join(STATUSES)}")
    if not 1 <= limit <= MAX_LIST:
        raise InputError(f"limit {limit} is outside 1-{MAX_LIST}")
    with read_snapshot(engine) as conn:
        if subscription_id is not None and not store.subscriptions(conn, subscription_id):
            raise _missing(subscription_id)
        rows = store.deliveries(conn, subscription_id, status, since, until, limit=limit)
        logs = store.attempts(conn, [row["id"] for row in rows], LOG_PER_DELIVERY)
    return DeliveryList(deliveries=[_delivery(row, logs.get(row["id"], [])) for row in rows])


def replay_delivery(engine: Engine, delivery_id: int, clock: Clock = utc_now) -> ReplayAnswer:
    """Send one delivery again (whatever its state); NotFoundError if there is none."""
    with write_transaction(engine) as conn:
        ids = store.requeue(conn, clock(), delivery_id=delivery_id)
    if not ids:
        raise NotFoundError(f"no webhook delivery {delivery_id}; `loyalty webhooks deliveries` lists them")
    return ReplayAnswer(replayed=len(ids), delivery_ids=ids)


def replay_range(engine: Engine, subscription_id: str, since: datetime, until: datetime | None = None,
                 clock: Clock = utc_now) -> ReplayAnswer:
    """Send again every delivery of a subscription whose notice was written in [since, until)."""
    if until is not None and until <= since:
        raise InputError(f"until {until.isoformat()} is not after since {since.isoformat()}")
    with write_transaction(engine) as conn:
        if not store.subscriptions(conn, subscription_id):
            raise _missing(subscription_id)
        ids = store.requeue(conn, clock(), subscription_id=subscription_id, since=since, until=until)
    return ReplayAnswer(replayed=len(ids), delivery_ids=ids)


def notice_types() -> NoticeTypes:
    """Every notice type with its version and JSON Schema."""
    return NoticeTypes(types={name: NoticeType(version=entry["version"], data_schema=entry["schema"])
                              for name, entry in json_schemas().items()})


def new_secret() -> str:
    """A fresh Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_secret(secret: str) -> str:
    """`secret` if it is a Standard Webhooks secret of 24 to 64 bytes, else InputError."""
    body = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True) if secret.strip().startswith(SECRET_PREFIX) else b""
    except (binascii.Error, ValueError):
        key = b""
    if not 24 <= len(key) <= 64:
        raise InputError("the secret must read whsec_ followed by 24 to 64 bytes in base64 (e.g. "
                         "whsec_$(openssl rand -base64 32)); leave it out to have one made")
    return secret.strip()


def check_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL with a host, or an amqp(s) URL naming its exchange
    (`?exchange=NAME`), at most 2000 characters; else InputError."""
    url = url.strip()
    if not url or len(url) > MAX_URL or not _PRINTABLE.match(url) or " " in url:
        raise InputError(f"the URL must be 1 to {MAX_URL} printable characters without spaces")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InputError(f"{url!r} is not a URL: {exc}") from None
    if parsed.scheme in ("amqp", "amqps") and parsed.host:
        try:
            split_url(url)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return url
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(f"{shown_url(url)!r} is not an http(s) URL with a host, e.g. "
                         "https://crm.example.com/hooks/loyalty (or amqp://…?exchange=NAME for a RabbitMQ exchange)")
    return url


def shown_url(url: str) -> str:
    """`url` with its password, if any, replaced by ***: as listings and messages show it."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@", 1)))


def check_types(events: list[str]) -> list[str]:
    """The notice types asked for (split on commas, `*` for all), each known, else InputError."""
    names = sorted({part.strip() for item in events for part in item.split(",") if part.strip()})
    if not names:
        raise InputError("give the notice types to send, e.g. --events tier.changed,churn.flagged (or `*` for all); "
                         "`loyalty webhooks types` lists them")
    if len(names) > MAX_TYPES:
        raise InputError(f"at most {MAX_TYPES} notice types per subscription, not {len(names)}")
    if store.ALL_TYPES in names:
        return [store.ALL_TYPES]
    unknown = [name for name in names if name not in TYPES]
    if unknown:
        shown = unknown[0][:80]
        raise InputError(f"unknown notice type {shown!r}{did_you_mean(shown, TYPES)}; `loyalty webhooks types` "
                         "lists them")
    return names


def _check_description(description: str | None) -> str | None:
    if description is None or not description.strip():
        return None
    if len(description) > MAX_DESCRIPTION or not _PRINTABLE.match(description):
        raise InputError(f"the description must be at most {MAX_DESCRIPTION} printable characters")
    return description.strip()


def _missing(subscription_id: str) -> NotFoundError:
    return NotFoundError(f"no webhook subscription {subscription_id[:60]!r}; `loyalty webhooks list` shows them")


def _moment(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _subscription(row: dict, with_secret: bool = False) -> SubscriptionAnswer:
    return SubscriptionAnswer(id=row["id"], url=shown_url(row["url"]), events=row["event_types"].split(),
                              description=row["description"], created_at=row["created_at"].isoformat(),
                              disabled_at=_moment(row["disabled_at"]), disabled_reason=row["disabled_reason"],
                              failing_since=_moment(row["failing_since"]), pending=row["pending"],
                              failed=row["failed"], secret=row["secret"] if with_secret else None)


def _delivery(row: dict, log: list[dict]) -> DeliveryAnswer:
    return DeliveryAnswer(
        id=row["id"], subscription_id=row["subscription_id"], message_id=row["message_id"], type=row["type"],
        client_id=row["client_id"], status=row["status"], attempts=row["attempts"],
        next_attempt_at=_moment(row["next_attempt_at"]) if row["status"] == store.PENDING else None,
        last_status_code=row["last_status_code"], last_error=row["last_error"],
        recorded_at=row["recorded_at"].isoformat(), delivered_at=_moment(row["delivered_at"]),
        log=[AttemptAnswer(attempted_at=item["attempted_at"].isoformat(), dispatcher=item["dispatcher"],
                           status_code=item["status_code"], error=item["error"], duration_ms=item["duration_ms"])
             for item in log])
