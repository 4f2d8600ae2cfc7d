"""`loyalty consume`: apply activity events from a RabbitMQ queue, batch by batch, until stopped."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from cli.output import emit_json, errors, fail

# `loyalty --help` loads this module: pika, the database and the ingest path are imported when the command runs.
if TYPE_CHECKING:
    from brokers import Broker
    from cli.main import Settings
    from service.consume import ConsumeOptions, ConsumeSummary

URL_ENV = "LOYALTY_CONSUME_URL"
SCHEMES = ("amqp://", "amqps://")


def consume_command(
    ctx: typer.Context,
    url: Annotated[Optional[str], typer.Argument(
        envvar=URL_ENV, show_envvar=True, show_default=False,
        help="The broker, e.g. amqp://user:password@rabbit:5672/%2F (amqps:// for TLS). Prefer LOYALTY_CONSUME_URL: "
             "an argument is visible to every user of the machine in the process list.")] = None,
    queue: Annotated[str, typer.Option(help="The queue to consume (declared durable if missing); rejected messages "
                                            "go to the queue `<queue>.dead`.")] = "loyalty.events",
    prefetch: Annotated[int, typer.Option(min=1, max=65_535, help="Messages the broker sends ahead, unacknowledged; "
                                                                  "at least --batch.")] = 2000,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Messages applied per transaction.")] = 1000,
    flush_ms: Annotated[int, typer.Option(min=1, max=60_000, help="Apply a partial batch once the queue has been "
                                                                   "quiet this many milliseconds.")] = 200,
    dead_letter_exchange: Annotated[Optional[str], typer.Option(
        help="The dead-letter exchange (direct, durable). Default: `<queue>.dlx`.")] = None,
    until_idle: Annotated[Optional[float], typer.Option(
        min=0.1, max=86_400, metavar="SECONDS",
        help="Stop once no message has come for this long (drain the queue and exit). Default: run until "
             "stopped.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final counts as JSON on stdout.")] = False,
) -> None:
    """Apply activity events from a RabbitMQ queue: one event (the NDJSON envelope) per message.

    Batches of up to --batch messages are applied in one transaction each and acknowledged only once
    committed: a consumer stopped or killed at any moment loses nothing, and events it applied before
    are duplicates when delivered again. A rejected message (bad JSON, bad value, an id already used
    for other content) is moved to `<queue>.dead` with the reason in its `x-loyalty-error` header (and
    `x-loyalty-field`). If the database or the broker fails, nothing more is acknowledged and the
    consumer retries with backoff. Several consumers may share a queue. Stops after the current batch
    on Ctrl-C or SIGTERM; `--json` then prints the counts.

    Example: `LOYALTY_CONSUME_URL=amqp://guest:guest@127.0.0.1:5672/%2F loyalty consume --queue loyalty.events`
    """
    from brokers import redacted

    settings: Settings = ctx.obj
    options = _options(url, queue, prefetch, batch, flush_ms, dead_letter_exchange, as_json, until_idle)
    assert url is not None  # _options checked it
    connect = _connector(url, options.queue, prefetch, dead_letter_exchange)
    from service.ingest import collect_less

    collect_less()  # this process's work is ingesting
    if not as_json:
        errors.print(f"consuming {escape(options.queue)} from {escape(redacted(url))} in batches of {batch} "
                     f"(rejected messages: {escape(options.queue)}.dead); stop with Ctrl-C", highlight=False)
    stop = threading.Event()
    with stopped_by_signals(stop):
        summary = run(settings, connect, url, options, stop, as_json)
    if as_json:
        emit_json(summary.model_dump(mode="json"))
    else:
        errors.print(f"stopped: {summary.consumed} messages: applied {summary.applied}, duplicates "
                     f"{summary.duplicates}, dead-lettered {summary.dead_lettered} ({summary.events_per_second:,} "
                     "a second)", highlight=False)


def run(settings: Settings, connect: Callable[[], Broker], url: str, options: ConsumeOptions, stop: threading.Event,
        as_json: bool) -> ConsumeSummary:
    """Consume until `stop` is set (or the queue is idle for the options' bound); the summary."""
    from service.consume import consume
    from service.ingest import Ingestor

    watcher = settings.rules_watcher(as_json)
    engine = settings.engine(as_json)
    ingestor = Ingestor(engine, watcher.current(), batch_size=options.batch, rules=watcher)
    return consume(_first(connect, url, as_json), connect, ingestor, options, stop)


def start_in_background(settings: Settings, url: str, queue: str, prefetch: int = 2000,
                        batch: int = 1000) -> tuple[threading.Thread, threading.Event]:
    """`loyalty serve --consume`: connect now (exit 2 with the reason if the broker or the database does not
    answer), then consume in a daemon thread until the returned event is set."""
    options = _options(url, queue, prefetch, batch, 200, None, False, None)
    connect = _connector(url, options.queue, prefetch, None)
    from service.consume import consume
    from service.ingest import Ingestor

    watcher = settings.rules_watcher(False)
    ingestor = Ingestor(settings.engine(False), watcher.current(), batch_size=batch, rules=watcher)
    first, stop = _first(connect, url, False), threading.Event()
    thread = threading.Thread(target=consume, args=(first, connect, ingestor, options, stop),
                              name=f"consume {queue}", daemon=True)
    thread.start()
    return thread, stop


def _options(url: str | None, queue: str, prefetch: int, batch: int, flush_ms: int, exchange: str | None,
             as_json: bool, until_idle: float | None) -> ConsumeOptions:
    """The consumer's options, or exit 2 saying which one is wrong."""
    from service.consume import ConsumeOptions

    if not url:
        raise fail(f"no broker URL: give it as the argument or in {URL_ENV}, e.g. "
                   "amqp://guest:guest@127.0.0.1:5672/%2F", as_json=as_json)
    if not url.startswith(SCHEMES):
        raise fail("the broker URL must start with amqp:// or amqps://", as_json=as_json)
    for flag, name in (("--queue", queue), ("--dead-letter-exchange", exchange)):
        if name is not None and not _valid_name(name):
            raise fail(f"{flag} {name!r}: use 1 to 200 printable characters, not starting with 'amq.' (reserved "
                       "by the broker)", as_json=as_json)
    if prefetch < batch:
        raise fail(f"--prefetch {prefetch} is below --batch {batch}: a batch could never fill; give a prefetch "
                   "of at least the batch size (twice it keeps the next batch arriving)", as_json=as_json)
    return ConsumeOptions(queue=queue, batch=batch, flush_seconds=flush_ms / 1000, until_idle=until_idle)


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 200 and name.isprintable() and not name.startswith("amq.")


def _connector(url: str, queue: str, prefetch: int, exchange: str | None):  # noqa: ANN202 - a factory
    """Connect to the broker (the consumer calls it again to reconnect after a failure)."""
    from brokers.rabbitmq import RabbitMQ

    return lambda: RabbitMQ(url, queue, prefetch, exchange)


def _first(connect, url: str, as_json: bool) -> Broker:  # noqa: ANN001 - the connector above
    """The first connection, or exit 2 with the reason (later failures are retried by the consumer)."""
    from urllib.parse import urlsplit

    from brokers import BrokerError, redacted

    try:
        return connect()
    except BrokerError as exc:
        reason = str(exc)
        password = urlsplit(url).password
        if password:  # no client library is trusted to leave it out of its messages
            reason = reason.replace(password, "***")
        raise fail(f"cannot consume from {redacted(url)}: {reason}. Check that the broker is running and "
                   "reachable, the user and password, and that the queue was not declared before with other "
                   "arguments", as_json=as_json) from None


@contextmanager
def stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (the batch in hand is finished and acknowledged first); restored after."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
