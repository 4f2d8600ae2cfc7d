"""Notices published to a RabbitMQ exchange, for a subscription whose URL is `amqp(s)://…?exchange=NAME`:
the routing key is the notice's type, the body and headers those of a webhook, and each message is
confirmed by the broker (publisher confirms) before its delivery counts as delivered.

The exchange is declared as a durable topic exchange (so consumers bind `tier.*`, `churn.#`…), messages
are persistent and published `mandatory`: one no queue is bound to receive is returned by the broker and
counts as a failed attempt, retried like any other, rather than dropped. Each sending thread keeps one
connection per broker URL; a connection found broken is replaced once within the same attempt."""
from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions

EXCHANGE_PARAM = "exchange"
_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,127}$")


def is_broker_url(url: str) -> bool:
    """Whether a subscription's URL names a broker exchange rather than an HTTP receiver."""
    return url.split(":", 1)[0].lower() in ("amqp", "amqps")


def split_url(url: str) -> tuple[str, str]:
    """(the broker URL for pika, the exchange name) of `amqp(s)://…?exchange=NAME`; ValueError if it has none."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [value for key, value in query if key == EXCHANGE_PARAM]
    if len(names) != 1 or not _NAME.match(names[0]):
        raise ValueError("an amqp(s) URL names its exchange as ?exchange=NAME (1 to 127 of A-Z a-z 0-9 . _ : -), "
                         "e.g. amqp://user:pass@rabbit:5672/%2F?exchange=loyalty.notices")
    rest = urlencode([(key, value) for key, value in query if key != EXCHANGE_PARAM])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")), names[0]


class ExchangePublisher:
    """Publishes with confirms, one connection per sending thread and broker URL, every wait bounded by
    `timeout` seconds (connecting, the socket, a broker that blocks publishers)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._local = threading.local()
        self._opened: list[pika.BlockingConnection] = []
        self._lock = threading.Lock()

    def publish(self, url: str, routing_key: str, body: bytes, headers: dict[str, str]) -> str | None:
        """Publish one message and wait for the broker's confirm: None when confirmed, else why not."""
        broker, exchange = split_url(url)
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                                          message_id=headers["webhook-id"], headers=headers)
        for fresh in (False, True):
            try:
                channel = self._channel(broker, exchange, fresh)
                channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
                return None
            except pika.exceptions.UnroutableError:
                return f"the broker returned it: no queue is bound to exchange {exchange!r} for {routing_key!r}"
            except pika.exceptions.NackError:
                return f"the broker refused it (nack) on exchange {exchange!r}"
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._forget(broker)
                if fresh:  # a new connection failed too: this attempt fails
                    return f"{type(exc).__name__}: {exc}".strip(": ")
        return None  # not reached

    def close(self) -> None:
        """Close every connection opened."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            try:
                connection.close()
            except Exception:
                pass

    def _channel(self, broker: str, exchange: str, fresh: bool):
        kept: dict = self._local.__dict__.setdefault("channels", {})
        if fresh or broker not in kept or not kept[broker][0].is_open:
            self._forget(broker)
            parameters = pika.URLParameters(broker)
            parameters.socket_timeout = parameters.stack_timeout = self.timeout
            parameters.blocked_connection_timeout = self.timeout
            parameters.connection_attempts = 1
            connection = pika.BlockingConnection(parameters)
            with self._lock:
                self._opened.append(connection)
            channel = connection.channel()
            channel.confirm_delivery()
            kept[broker] = (connection, channel, set())
        connection, channel, declared = kept[broker]
        if exchange not in declared:
            channel.exchange_declare(exchange, exchange_type="topic", durable=True)
            declared.add(exchange)
        return channel

    def _forget(self, broker: str) -> None:
        kept: dict = self._local.__dict__.setdefault("channels", {})
        entry = kept.pop(broker, None)
        if entry is not None:
            try:
                entry[0].close()
            except Exception:
                pass
