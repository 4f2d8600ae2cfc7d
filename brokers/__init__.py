"""Message brokers that activity events arrive on, behind one small interface (`Broker`).

The consumer (service/consume.py) only receives batches, acknowledges them and dead-letters single
messages; it never imports a broker's client library. Each broker is one module here (rabbitmq.py);
another (Kafka: see README, "Consuming from RabbitMQ") is a new module with the same three methods.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# What a dead-lettered message carries besides its body, unchanged: why it was refused, and the field at fault.
ERROR_HEADER = "x-loyalty-error"
FIELD_HEADER = "x-loyalty-field"
QUEUE_HEADER = "x-loyalty-queue"
MAX_REASON_CHARS = 1000  # a header, not a report: a reason quoting a huge value is cut


class BrokerError(Exception):
    """The broker failed or refused (connection lost, channel closed, a publish not confirmed in time): the
    messages not yet acknowledged will be delivered again."""


@dataclass(frozen=True)
class Message:
    """One delivery: its body, its headers, and the broker's own handle on it (`receipt`)."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    receipt: Any = None  # the adapter's: a delivery tag, a partition offset


class Broker(Protocol):
    """A source of event messages that are settled only once their batch is committed."""

    def receive(self, max_messages: int, quiet_seconds: float, idle_seconds: float,
                stop: Callable[[], bool]) -> list[Message]:
        """Up to `max_messages`, in delivery order: returned once the batch is full, or once no message has
        arrived for `quiet_seconds` (a partial batch), or empty after `idle_seconds` without any; sooner when
        `stop()` turns true."""
        ...

    def acknowledge(self, messages: Sequence[Message]) -> None:
        """Settle a batch received by the last `receive` (dead-lettered ones included): none is delivered again."""
        ...

    def dead_letter(self, message: Message, reason: str, field: str | None) -> None:
        """Store a copy of `message` in the dead-letter queue with `reason` (and `field`) in its headers, and
        return once the broker confirmed it; the original is settled by `acknowledge`."""
        ...

    def close(self) -> None:
        """Disconnect; messages not acknowledged go back to the queue for another consumer."""
        ...


def dead_letter_headers(headers: dict[str, Any], reason: str, field: str | None, queue: str) -> dict[str, Any]:
    """The headers of a dead-lettered copy: the original ones, with the reason, the field and the queue added."""
    reason = reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 1] + "…"
    extra = {ERROR_HEADER: reason, QUEUE_HEADER: queue}
    if field:
        extra[FIELD_HEADER] = field
    return {**headers, **extra}


def redacted(url: str) -> str:
    """A broker URL fit to print: its password replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:  # not even a URL: show none of it, it may be all secret
        return "<the broker URL>"
