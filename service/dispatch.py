"""The webhook dispatcher: routes outbox records to the subscriptions that want them, then sends the due
deliveries, signed following Standard Webhooks, retrying with exponential backoff and full jitter.

At least once, never lost: a delivery is leased to the dispatcher that claimed it and written as delivered
only after the receiver answered 2xx; a dispatcher that dies mid-send leaves a lease that lapses, and another
dispatcher (or the same one restarted) sends it again. Receivers deduplicate by `webhook-id`. Any number of
dispatchers may run on one database: they claim different deliveries (row locks skipped, leases), and each
subscription gets each client's notices in order (a delivery waits while an earlier one of the same client
is pending).
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError
from standardwebhooks import Webhook

from service import telemetry
from service.answer import Answer
from service.clock import Clock, utc_now
from service.errors import SettingError
from service.exchange import ExchangePublisher, is_broker_url
from service.version import package_version
from storage import webhooks as store
from storage.db import write_transaction

log = logging.getLogger("loyalty.webhooks")
MAX_ERROR = 1000


@dataclass(frozen=True)
class DispatchSettings:
    """How a dispatcher works: HTTP `timeout` per attempt (seconds); `lease` a claimed delivery is its own
    (seconds; must exceed the timeout, or a slow send could be sent twice); `concurrency` deliveries sent at
    once; the backoff after the n-th failed attempt, a random delay in [0, min(cap, base * 2^(n-1))] (full
    jitter); `retry_for` how long a delivery is retried before it is failed; `disable_after` how long a
    subscription may fail every attempt before it is disabled; `route_batch` records routed per transaction."""

    timeout: float = 10.0
    lease: float = 60.0
    concurrency: int = 8
    backoff_base: float = 5.0
    backoff_cap: float = 3600.0
    retry_for: timedelta = timedelta(days=1)
    disable_after: timedelta = timedelta(days=1)
    route_batch: int = 500

    def __post_init__(self) -> None:
        if not 0.1 <= self.timeout <= 300:
            raise SettingError(f"timeout {self.timeout:g} s is outside 0.1-300 s")
        if not self.timeout < self.lease <= 3600:
            raise SettingError(f"lease {self.lease:g} s must exceed the timeout ({self.timeout:g} s) and be at "
                               "most 3600 s")
        if not 1 <= self.concurrency <= 64:
            raise SettingError(f"concurrency {self.concurrency} is outside 1-64")
        if not 0 < self.backoff_base <= self.backoff_cap <= 86_400:
            raise SettingError("backoff: 0 < base <= cap <= 86400 s")


class DispatchRound(Answer):
    """What one pass of a dispatcher did."""

    routed: int  # outbox records handed to the subscriptions
    sent: int  # attempts made
    delivered: int
    retrying: int  # failed attempts to be retried
    failed: int  # deliveries that exhausted their retries
    disabled: list[str]  # subscriptions disabled in this pass


@dataclass
class _Outcome:
    item: dict
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.error is None


def envelope(item: dict) -> bytes:
    """The body of a notice's delivery: {"type", "timestamp", "data", "version"} as compact JSON."""
    body = {"type": item["type"], "timestamp": item["occurred_at"].isoformat().replace("+00:00", "Z"), "data": json.loads(item["data"]),
            "version": item["version"]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class Dispatcher:
    """Routes and sends webhook deliveries from one process; `stop()` (e.g. on SIGTERM) ends `run` after
    the deliveries in flight."""

    def __init__(self, engine: Engine, settings: DispatchSettings | None = None, clock: Clock = utc_now,
                 name: str | None = None, rng: random.Random | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.engine = engine
        self.settings = settings or DispatchSettings()
        self.clock = clock
        self.name = (name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")[:128]
        self.rng = rng or random.Random()
        self.stopping = threading.Event()
        # No redirects: a receiver that moved must be re-subscribed, not followed (the signature names the URL's
        # owner). The timeout bounds connecting, each write and each read of one attempt.
        self.http = httpx.Client(timeout=httpx.Timeout(self.settings.timeout), follow_redirects=False,
                                 transport=transport,
                                 headers={"user-agent": f"loyalty-engine-webhooks/{package_version()}"})
        self.pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="webhook")
        self.exchanges = ExchangePublisher(self.settings.timeout)  # for subscriptions to a broker's exchange
        # Deliveries claimed at once: `concurrency` per wave, as many waves as fit in a lease with a timeout to
        # spare (at most 4), so a batch of sends that all time out still ends within its lease.
        waves = max(1, min(4, int(self.settings.lease // self.settings.timeout) - 1))
        self.batch = self.settings.concurrency * waves

    def close(self) -> None:
        """Release the HTTP connections and the sending threads."""
        self.pool.shutdown(wait=True)
        self.http.close()
        self.exchanges.close()

    def stop(self) -> None:
        """Ask `run` to return after the deliveries in flight."""
        self.stopping.set()

    def route(self) -> int:
        """Route every unrouted outbox record (in batches); the number routed (0 if another dispatcher routes)."""
        total = 0
        if not self._idle_check(store.has_unrouted):
            return 0
        while not self.stopping.is_set():
            with write_transaction(self.engine) as conn:
                routed = store.route(conn, self.clock(), self.settings.route_batch)
            total += routed or 0
            if not routed or routed < self.settings.route_batch:
                return total
        return total

    def deliver_due(self) -> DispatchRound:
        """Claim a batch of due deliveries, send them `concurrency` at a time, write their outcomes."""
        now = self.clock()
        if not self._idle_check(lambda conn: store.has_due(conn, now)):
            return DispatchRound(routed=0, sent=0, delivered=0, retrying=0, failed=0, disabled=[])
        with write_transaction(self.engine) as conn:
            claimed = store.claim(conn, self.name, now, now + timedelta(seconds=self.settings.lease), self.batch)
        # Sorted: every dispatcher then locks subscription rows in the same order (no deadlock between them).
        outcomes = sorted(self.pool.map(self._send, claimed), key=lambda o: (o.item["subscription_id"], o.item["id"]))
        tally = DispatchRound(routed=0, sent=len(outcomes), delivered=0, retrying=0, failed=0, disabled=[])
        try:  # the batch's outcomes in one transaction: one commit (one fsync) for them all
            with write_transaction(self.engine) as conn:
                for outcome in outcomes:
                    self._finish(conn, outcome, tally)
        except IntegrityError:  # a subscription removed while its delivery was sent: the others one by one
            tally = DispatchRound(routed=0, sent=len(outcomes), delivered=0, retrying=0, failed=0, disabled=[])
            for outcome in outcomes:
                try:
                    with write_transaction(self.engine) as conn:
                        self._finish(conn, outcome, tally)
                except IntegrityError:
                    log.info("delivery %s: its subscription was removed meanwhile", outcome.item["id"])
        telemetry.count_deliveries(tally.delivered, tally.retrying, tally.failed, len(tally.disabled))
        return tally

    def run_once(self) -> DispatchRound:
        """Route everything, then send every delivery due now until none is (retries later are left for later)."""
        total = DispatchRound(routed=self.route(), sent=0, delivered=0, retrying=0, failed=0, disabled=[])
        while not self.stopping.is_set():
            step = self.deliver_due()
            _add(total, step)
            if step.sent == 0:
                routed = self.route()  # records written while sending
                total.routed += routed
                if routed == 0:
                    break
        return total

    def run(self, interval: float = 1.0, on_round: Callable[[DispatchRound], None] | None = None) -> None:
        """Route and send until stopped, resting `interval` seconds whenever there is nothing to do; a database
        that does not answer is retried after the rest, not fatal."""
        while not self.stopping.is_set():
            try:
                step = DispatchRound(routed=self.route(), sent=0, delivered=0, retrying=0, failed=0, disabled=[])
                _add(step, self.deliver_due())
            except Exception as exc:
                log.error("dispatcher %s: %s; retrying in %g s", self.name, str(exc).splitlines()[0][:300], interval)
                self.stopping.wait(interval)
                continue
            if on_round is not None and (step.routed or step.sent):
                on_round(step)
            if step.sent < self.settings.concurrency and not step.routed:
                self.stopping.wait(interval)

    def _idle_check(self, question: Callable) -> bool:
        """Ask `question` in a plain read first: an idle dispatcher then takes no write lock (SQLite's is the
        whole database's) and no row locks, however often it polls."""
        with self.engine.connect() as conn:
            return question(conn)

    def backoff(self, attempts: int) -> timedelta:
        """The delay before the next attempt after `attempts` failed ones: full jitter over an exponential."""
        ceiling = min(self.settings.backoff_cap, self.settings.backoff_base * 2 ** min(attempts - 1, 30))
        return timedelta(seconds=self.rng.uniform(0, ceiling))

    def _send(self, item: dict) -> _Outcome:
        body = envelope(item)
        # Signed at the real moment of sending: receivers refuse a webhook-timestamp more than 5 minutes off.
        sent_at = datetime.now(UTC)
        headers = {"webhook-id": item["message_id"], "webhook-timestamp": str(int(sent_at.timestamp())),
                   "webhook-signature": Webhook(item["secret"]).sign(item["message_id"], sent_at, body),
                   "content-type": "application/json"}
        attempted_at, started = self.clock(), time.monotonic()
        if is_broker_url(item["url"]):
            code, error = None, self._publish(item, body, headers)
            return _Outcome(item, attempted_at, code, error[:MAX_ERROR] if error else None,
                            round((time.monotonic() - started) * 1000))
        try:
            # Streamed and closed unread: a receiver's answer body is not needed, whatever its size.
            with self.http.stream("POST", item["url"], content=body, headers=headers) as response:
                code = response.status_code
            error = None if 200 <= code < 300 else f"the receiver answered HTTP {code}"
        except httpx.HTTPError as exc:
            code, error = None, f"{type(exc).__name__}: {exc}".strip(": ")
        except Exception as exc:
            code, error = None, f"{type(exc).__name__}: {exc}"
        return _Outcome(item, attempted_at, code, error[:MAX_ERROR] if error else None,
                        round((time.monotonic() - started) * 1000))

    def _publish(self, item: dict, body: bytes, headers: dict[str, str]) -> str | None:
        try:
            return self.exchanges.publish(item["url"], item["type"], body, headers)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def _finish(self, conn: Connection, outcome: _Outcome, tally: DispatchRound) -> None:
        item, now = outcome.item, self.clock()
        subscription = item["subscription_id"]
        store.log_attempt(conn, {"delivery_id": item["id"], "attempted_at": outcome.attempted_at,
                                 "dispatcher": self.name, "status_code": outcome.status_code,
                                 "error": outcome.error, "duration_ms": outcome.duration_ms})
        last = {"last_status_code": outcome.status_code, "last_error": outcome.error}
        if outcome.ok:
            store.finish(conn, item["id"], self.name, {**last, "status": store.DELIVERED, "delivered_at": now})
            store.note_success(conn, subscription)
            tally.delivered += 1
            return
        if outcome.status_code == 410:  # Gone: the receiver asks for no more; the delivery waits for `enable`
            store.finish(conn, item["id"], self.name, {**last, "next_attempt_at": now, "first_attempt_at": None})
            self._disable(conn, subscription, now, f"the receiver answered 410 Gone at {now.isoformat()}", tally)
            return
        failing_since = store.note_failure(conn, subscription, now)
        attempts = item["attempts"] + 1
        if now - item["first_attempt_at"] >= self.settings.retry_for:
            store.finish(conn, item["id"], self.name, {**last, "status": store.FAILED})
            tally.failed += 1
        else:
            store.finish(conn, item["id"], self.name, {**last, "next_attempt_at": now + self.backoff(attempts)})
            tally.retrying += 1
        if now - failing_since >= self.settings.disable_after:
            self._disable(conn, subscription, now, f"every attempt failed since {failing_since.isoformat()} "
                          f"(last: {outcome.error})", tally)

    def _disable(self, conn: Connection, subscription: str, now: datetime, reason: str, tally: DispatchRound) -> None:
        if not store.disable(conn, subscription, now, reason):
            return  # already disabled (by another outcome of the batch, or another dispatcher)
        tally.disabled.append(subscription)
        log.warning("webhook subscription %s disabled: %s; `loyalty webhooks enable %s` resumes it once the "
                    "receiver is fixed", subscription, reason, subscription)


def _add(total: DispatchRound, step: DispatchRound) -> None:
    total.routed += step.routed
    total.sent += step.sent
    total.delivered += step.delivered
    total.retrying += step.retrying
    total.failed += step.failed
    total.disabled.extend(step.disabled)
