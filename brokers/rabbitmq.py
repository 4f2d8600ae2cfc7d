"""RabbitMQ through pika's BlockingConnection: a durable queue with a dead-letter exchange and queue.

Declared idempotently on connect: the dead-letter exchange (direct, durable; `<queue>.dlx` unless named),
the durable queue `<queue>.dead` bound to it under the queue's name, and the durable queue itself with
x-dead-letter-exchange and x-dead-letter-routing-key pointing there (so a message the broker itself
dead-letters, e.g. one rejected by an operator, lands in the same place).

Every wait is bounded: connecting (socket and whole-handshake timeouts), a silent broker (heartbeats), a
broker that blocks publishers for lack of memory or disk (blocked-connection timeout), and so a publish
confirm, which waits on the same connection. The URL's query string may set any of them
(`?heartbeat=30&socket_timeout=5&blocked_connection_timeout=60&stack_timeout=15`).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import parse_qs, urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from brokers import BrokerError, Message, dead_letter_headers

# Seconds. A batch is applied between two reads of the socket, so the heartbeat bounds a batch's time too:
# the broker drops a connection silent for two heartbeats.
TIMEOUTS = {"socket_timeout": 10.0, "stack_timeout": 15.0, "heartbeat": 60, "blocked_connection_timeout": 60.0}
PERSISTENT = 2  # delivery mode: a dead letter survives a broker restart
DROPPED_HEADER = "x-loyalty-headers-dropped"  # the original headers could not be copied
_FAILURES = (pika.exceptions.AMQPError, OSError)


def dead_letter_exchange(queue: str, name: str | None) -> str:
    """The dead-letter exchange of `queue`: `name`, or `<queue>.dlx`."""
    return name or f"{queue}.dlx"


def dead_letter_queue(queue: str) -> str:
    """The queue where the messages refused from `queue` are kept."""
    return f"{queue}.dead"


def connection_parameters(url: str) -> pika.URLParameters:
    """pika's parameters for `url`, with our bounded waits wherever the URL does not set its own."""
    params = pika.URLParameters(url)
    given = parse_qs(urlsplit(url).query)
    for name, value in TIMEOUTS.items():
        if name not in given:
            setattr(params, name, value)
    params.connection_attempts = 1  # the consumer retries, with backoff and a log line
    return params


def reason(exc: BaseException) -> str:
    """One line saying why the broker failed (pika's exceptions often carry only a nested exception or a tuple)."""
    text = str(exc).strip() or repr(exc)
    while not text.strip("()' ") and exc.args:
        exc = exc.args[0]
        text = str(exc)
    return f"{type(exc).__name__}: {text}".splitlines()[0]


class RabbitMQ:
    """One connection and channel consuming `queue` with at most `prefetch` messages unacknowledged."""

    def __init__(self, url: str, queue: str, prefetch: int, dead_letter_exchange_name: str | None = None):
        self.queue = queue
        self.exchange = dead_letter_exchange(queue, dead_letter_exchange_name)
        self._buffer: deque[Message] = deque()
        try:
            params = connection_parameters(url)
        except (ValueError, TypeError) as exc:  # pika's messages name the part at fault, not the password
            raise BrokerError(f"the URL is not valid: {exc}") from None
        try:
            self._connection = pika.BlockingConnection(params)
        except _FAILURES as exc:
            raise BrokerError(reason(exc)) from None
        try:
            self._channel = self._connection.channel()
            declare(self._channel, queue, self.exchange)
            self._channel.confirm_delivery()  # a dead letter is acknowledged only once the broker has it
            self._channel.basic_qos(prefetch_count=prefetch)
            self._channel.basic_consume(queue, self._on_message, auto_ack=False)
        except _FAILURES as exc:
            self.close()
            raise BrokerError(reason(exc)) from None

    def _on_message(self, _channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties,
                    body: bytes) -> None:
        headers = properties.headers if isinstance(properties.headers, dict) else {}
        self._buffer.append(Message(body, headers, bool(method.redelivered), (method.delivery_tag, properties)))

    def receive(self, max_messages: int, quiet_seconds: float, idle_seconds: float,
                stop: Callable[[], bool]) -> list[Message]:
        """Up to `max_messages` delivered messages; see brokers.Broker.receive."""
        started = last = time.monotonic()
        seen = len(self._buffer)
        try:
            while len(self._buffer) < max_messages and not stop():
                now = time.monotonic()
                if self._buffer:
                    wait = last + quiet_seconds - now
                else:
                    wait = min(started + idle_seconds - now, quiet_seconds)  # look at stop() that often
                    if started + idle_seconds <= now:
                        break
                if wait <= 0:
                    break
                self._connection.process_data_events(time_limit=wait)
                if len(self._buffer) > seen:
                    seen, last = len(self._buffer), time.monotonic()
        except _FAILURES as exc:
            raise BrokerError(reason(exc)) from None
        count = min(max_messages, len(self._buffer))
        return [self._buffer.popleft() for _ in range(count)]

    def acknowledge(self, messages: Sequence[Message]) -> None:
        """Acknowledge every delivery up to the batch's last one in one frame (the batch is all of them: they
        are taken in delivery order, and later deliveries wait in the buffer)."""
        if not messages:
            return
        try:
            self._channel.basic_ack(delivery_tag=max(m.receipt[0] for m in messages), multiple=True)
        except _FAILURES as exc:
            raise BrokerError(reason(exc)) from None

    def dead_letter(self, message: Message, reason_text: str, field: str | None) -> None:
        """Publish a copy to the dead-letter exchange, its reason in the headers, and wait for the confirm."""
        original: BasicProperties = message.receipt[1]
        try:
            self._publish_dead(message, original, dead_letter_headers(message.headers, reason_text, field, self.queue))
        except _FAILURES as exc:
            raise BrokerError(f"the dead letter was not confirmed: {reason(exc)}") from None
        except Exception:  # noqa: BLE001 - original headers pika decoded but cannot encode again: drop them
            headers = dead_letter_headers({DROPPED_HEADER: True}, reason_text, field, self.queue)
            try:
                self._publish_dead(message, original, headers)
            except _FAILURES as exc:
                raise BrokerError(f"the dead letter was not confirmed: {reason(exc)}") from None

    def _publish_dead(self, message: Message, original: BasicProperties, headers: dict) -> None:
        properties = BasicProperties(
            content_type=original.content_type, content_encoding=original.content_encoding,
            message_id=original.message_id, correlation_id=original.correlation_id, timestamp=original.timestamp,
            type=original.type, app_id=original.app_id, delivery_mode=PERSISTENT, headers=headers)
        # mandatory: a dead-letter queue deleted under us raises UnroutableError instead of losing the copy
        self._channel.basic_publish(self.exchange, self.queue, message.body, properties, mandatory=True)

    def close(self) -> None:
        """Close the connection; unacknowledged messages return to the queue. Never raises."""
        self._buffer.clear()
        try:
            if self._connection.is_open:
                self._connection.close()
        except Exception:  # noqa: BLE001, S110 - a connection already broken is closed enough
            pass


def declare(channel: BlockingChannel, queue: str, exchange: str) -> None:
    """Declare the dead-letter exchange and queue, and the queue (durable; the same again changes nothing)."""
    channel.exchange_declare(exchange, exchange_type="direct", durable=True)
    channel.queue_declare(dead_letter_queue(queue), durable=True)
    channel.queue_bind(dead_letter_queue(queue), exchange, routing_key=queue)
    channel.queue_declare(queue, durable=True,
                          arguments={"x-dead-letter-exchange": exchange, "x-dead-letter-routing-key": queue})


def publish(url: str, queue: str, bodies: Iterable[bytes], per_commit: int = 5000,
            exchange: str | None = None) -> int:
    """Publish `bodies` (persistent) to `queue`, declared first as the consumer declares it, in AMQP transactions
    of `per_commit` messages (each committed before the next starts: the broker has them all on return, far
    faster than waiting for a confirm per message). For tests, benchmarks and replays; the count published."""
    connection = pika.BlockingConnection(connection_parameters(url))
    try:
        channel = connection.channel()
        declare(channel, queue, dead_letter_exchange(queue, exchange))
        channel.tx_select()
        properties, count = BasicProperties(delivery_mode=PERSISTENT, content_type="application/json"), 0
        for count, body in enumerate(bodies, start=1):
            channel.basic_publish("", queue, body, properties)
            if count % per_commit == 0:
                channel.tx_commit()
        channel.tx_commit()
        return count
    finally:
        connection.close()
