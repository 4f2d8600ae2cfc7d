"""Consume activity events from a message broker: apply them in batches through the ingest path, then settle.

Each message is one event envelope (the same JSON object as a line of `loyalty ingest`). A batch of
messages is applied as one ingest batch (one transaction), and only once it committed are its messages
acknowledged: a consumer killed at any moment leaves its unacknowledged messages to be delivered again,
and the event ids make every event applied before the kill a duplicate then. So each event is applied
exactly once, however many consumers share the queue and whatever order their batches commit in.

A message the ingest path rejects (not JSON, a bad value, an id already used for other content) is copied
to the dead-letter queue with the reason in its headers (confirmed by the broker), then acknowledged with
its batch: it is never delivered again. When the database or the broker fails, nothing more is
acknowledged: the connection to the broker is closed (it requeues the batch), and the consumer waits
(with backoff) and starts again.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from brokers import Broker, BrokerError, Message
from service import telemetry
from service.answer import Answer
from service.ingest import APPLIED, DUPLICATE, REJECTED, Ingestor

log = logging.getLogger("loyalty.consume")
EMPTY_MESSAGE = "empty message: a message carries one event (a JSON object)"
_BOM = b"\xef\xbb\xbf"
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # seconds between attempts after a failure, doubling


class ConsumeSummary(Answer):
    """What a consumer did until it stopped."""

    queue: str
    consumed: int  # messages acknowledged: applied, duplicates and dead-lettered
    applied: int
    duplicates: int
    dead_lettered: int
    batches: int
    failures: int  # batches left unacknowledged for redelivery because the database or the broker failed
    seconds: float  # from start to stop
    events_per_second: float  # messages settled a second, from the first batch received to the last acknowledged


@dataclass(frozen=True)
class ConsumeOptions:
    """How a consumer batches: at most `batch` messages, flushed when the queue is quiet for `flush_seconds`;
    with `until_idle`, it stops once no message came for that many seconds (e.g. to drain a queue)."""

    queue: str
    batch: int = 1000
    flush_seconds: float = 0.2
    until_idle: float | None = None


@dataclass
class _Counts:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    failures: int = 0
    first_at: float | None = None  # when the first batch arrived (time.monotonic)
    last_at: float | None = None  # when the last batch was acknowledged


def consume(broker: Broker, connect: Callable[[], Broker], ingestor: Ingestor, options: ConsumeOptions,
            stop: threading.Event) -> ConsumeSummary:
    """Consume from `broker` until `stop` is set (the batch in hand is finished first) or the queue stays idle
    for `options.until_idle`; after a failure, wait and reconnect with `connect`. Returns the counts."""
    counts, started = _Counts(), time.monotonic()
    idle_since = time.monotonic()
    delay = BACKOFF_FIRST
    current: Broker | None = broker
    try:
        while not stop.is_set():
            messages: list[Message] = []
            try:
                if current is None:
                    current = connect()
                    log.warning("consuming %s again", options.queue)
                idle = options.until_idle if options.until_idle is not None else 1.0
                messages = current.receive(options.batch, options.flush_seconds, idle, stop.is_set)
                if not messages:
                    if options.until_idle is not None and time.monotonic() - idle_since >= options.until_idle:
                        break
                    continue
                counts.first_at = counts.first_at or time.monotonic()
                settle(current, ingestor, messages, counts, options.queue)
                counts.last_at = time.monotonic()
                idle_since, delay = time.monotonic(), BACKOFF_FIRST
            except BrokerError as exc:
                counts.failures += bool(messages)
                log.warning("the broker failed: %s; %d message(s) in hand are left unacknowledged, to be delivered "
                            "again; reconnecting in %.0f s", exc, len(messages), delay)
                current = _drop(current)
                delay = _back_off(stop, delay)
            except Exception as exc:  # noqa: BLE001 - the database failed (or a bug): acknowledge nothing, retry
                counts.failures += 1
                first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                what = "the database failed" if _is_database(exc) else "an unexpected error (its trace is logged)"
                log.error("%s applying a batch of %d message(s) (%s: %s); nothing of it is acknowledged: the "
                          "broker delivers it again; retrying in %.0f s", what, len(messages), type(exc).__name__,
                          first[0] if first else "", delay, exc_info=not _is_database(exc))
                current = _drop(current)
                delay = _back_off(stop, delay)
    finally:
        _drop(current)
    seconds = time.monotonic() - started
    consumed = counts.applied + counts.duplicates + counts.dead_lettered
    busy = (counts.last_at - counts.first_at) if counts.first_at and counts.last_at else 0.0
    return ConsumeSummary(queue=options.queue, consumed=consumed, applied=counts.applied,
                          duplicates=counts.duplicates, dead_lettered=counts.dead_lettered, batches=counts.batches,
                          failures=counts.failures, seconds=round(seconds, 3),
                          events_per_second=round(consumed / busy, 1) if busy > 0 else 0.0)


def settle(broker: Broker, ingestor: Ingestor, messages: Sequence[Message], counts: _Counts, queue: str) -> None:
    """Apply one batch of messages in one ingest batch, dead-letter the rejected ones, acknowledge them all."""
    lines = []
    for number, message in enumerate(messages, start=1):
        body = message.body.removeprefix(_BOM)  # every message alike (ingest forgives a BOM on line 1 only)
        if body.strip():  # ingest skips a blank line without an outcome: an empty message is refused below
            lines.append((number, body))
    outcomes = {outcome.line: outcome for outcome in ingestor.ingest_chunk(lines, source="broker")}  # commits, or raises
    statuses = {APPLIED: 0, DUPLICATE: 0, REJECTED: 0}
    for number, message in enumerate(messages, start=1):
        outcome = outcomes.get(number)
        if outcome is None or outcome.status == REJECTED:
            error, field = (outcome.error or "rejected", outcome.field) if outcome else (EMPTY_MESSAGE, None)
            broker.dead_letter(message, error, field)
            statuses[REJECTED] += 1
        else:
            statuses[outcome.status] += 1
    broker.acknowledge(messages)
    counts.applied += statuses[APPLIED]
    counts.duplicates += statuses[DUPLICATE]
    counts.dead_lettered += statuses[REJECTED]
    counts.batches += 1
    telemetry.count_messages(queue, len(messages), statuses[APPLIED], statuses[DUPLICATE], statuses[REJECTED])


def _is_database(exc: BaseException) -> bool:
    """Whether `exc` is the database's own failure (logged in one line) rather than a bug (logged with its trace)."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    return isinstance(exc, (DBAPIError, PoolTimeoutError))


def _drop(broker: Broker | None) -> None:
    if broker is not None:
        broker.close()


def _back_off(stop: threading.Event, delay: float) -> float:
    """Wait `delay` seconds (with jitter, so consumers restarted together spread out) unless stopped; the next
    delay, doubled up to BACKOFF_MAX."""
    stop.wait(delay * random.uniform(0.8, 1.2))
    return min(delay * 2, BACKOFF_MAX)
