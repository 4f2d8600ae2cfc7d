"""`loyalty webhooks` (subscriptions, the delivery log, replay, the notice types) and `loyalty dispatch`
(the process that sends them). Services are imported in the commands: `loyalty --help` loads none."""
from __future__ import annotations

import json
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.output import console, emit_json, errors, fail, parse_duration, parse_moment
from service.errors import InputError, NotFoundError, SettingError

if TYPE_CHECKING:  # imported by the commands that use them: `loyalty --help` loads none
    from types import FrameType

    from cli.main import Settings
    from service.dispatch import Dispatcher, DispatchRound

_STOP_WAIT = 30.0  # seconds `serve` waits for its dispatcher's deliveries in flight when it stops
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SubscriptionArg = Annotated[str, typer.Argument(help="The subscription's id (whk_…), as `loyalty webhooks list` shows it.")]


def webhooks_add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Where to POST the notices: an http(s) URL.")],
    events: Annotated[str, typer.Option(help="Notice types, comma-separated, or '*' for all "
                                             "(`loyalty webhooks types` lists them).")],
    secret: Annotated[Optional[str], typer.Option(help="The signing secret, whsec_<base64>; made if left out.")] = None,
    description: Annotated[Optional[str], typer.Option(help="Who receives it and why.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Subscribe a URL to notices, signed following Standard Webhooks (its secret is shown here, once).

    E.g. `loyalty webhooks add https://crm.example.com/hooks/loyalty --events tier.changed,churn.flagged`.
    """
    from service.webhooks import add_subscription

    engine = ctx.obj.engine(as_json)
    try:
        answer = add_subscription(engine, url, [events], secret, description)
    except InputError as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    console.print(f"subscription {answer.id}: {escape(answer.url)} receives {', '.join(answer.events)}",
                  highlight=False)
    console.print(f"signing secret (give it to the receiver; `webhooks list` does not show it): {answer.secret}",
                  highlight=False, soft_wrap=True)


def webhooks_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List subscriptions: URL, notice types, deliveries pending and failed, and whether (and why) disabled.

    E.g. `loyalty webhooks list --json`.
    """
    from service.webhooks import list_subscriptions

    answer = list_subscriptions(ctx.obj.engine(as_json))
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    if not answer.subscriptions:
        console.print("no webhook subscriptions; add one with `loyalty webhooks add URL --events tier.changed`")
        return
    table = Table("id", "url", "events", "pending", "failed", "state")
    for sub in answer.subscriptions:
        state = (f"[red]disabled {sub.disabled_at[:19]}[/]: {escape(sub.disabled_reason or '')}" if sub.disabled_at
                 else f"[yellow]failing since {sub.failing_since[:19]}[/]" if sub.failing_since else "[green]enabled[/]")
        table.add_row(sub.id, escape(sub.url), escape(", ".join(sub.events)), f"{sub.pending:,}", f"{sub.failed:,}",
                      state)
    console.print(table)


def webhooks_remove(ctx: typer.Context, subscription_id: SubscriptionArg, as_json: JsonFlag = False) -> None:
    """Remove a subscription, with its pending deliveries and its delivery log.

    E.g. `loyalty webhooks remove whk_3f2a9c0d1e4b5a67`.
    """
    from service.webhooks import remove_subscription

    try:
        answer = remove_subscription(ctx.obj.engine(as_json), subscription_id)
    except NotFoundError as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    console.print(f"subscription {escape(answer.id)} removed")


def webhooks_enable(ctx: typer.Context, subscription_id: SubscriptionArg, as_json: JsonFlag = False) -> None:
    """Enable a disabled subscription: what waited for it is sent now, in order per client.

    E.g. `loyalty webhooks enable whk_3f2a9c0d1e4b5a67`.
    """
    from service.webhooks import enable_subscription

    try:
        answer = enable_subscription(ctx.obj.engine(as_json), subscription_id)
    except NotFoundError as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    console.print(f"subscription {answer.id} enabled; {answer.pending:,} deliveries pending", highlight=False)


def webhooks_deliveries(
    ctx: typer.Context,
    subscription: Annotated[Optional[str], typer.Option(help="Only this subscription's deliveries.")] = None,
    status: Annotated[Optional[str], typer.Option(help="Only deliveries pending, delivered or failed.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only notices written from this moment (ISO 8601).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only notices written before this moment (ISO 8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most deliveries to list.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """The delivery log: deliveries, newest notice first, each with its attempts (status code or error, duration).

    E.g. `loyalty webhooks deliveries --subscription whk_3f2a9c0d1e4b5a67 --status failed --since 2026-12-01`.
    """
    from service.webhooks import list_deliveries

    start = parse_moment(since, as_json, "--since", allow_date=True) if since else None
    end = parse_moment(until, as_json, "--until", allow_date=True) if until else None
    try:
        answer = list_deliveries(ctx.obj.engine(as_json), subscription, status, start, end, limit)
    except (InputError, NotFoundError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    if not answer.deliveries:
        console.print("no deliveries match")
        return
    table = Table("id", "subscription", "notice", "type", "client", "status", "attempts", "last")
    for item in answer.deliveries:
        last = (f"{item.last_status_code}" if item.last_status_code else "") + (f" {item.last_error}" if item.last_error
                                                                                else "")
        if item.status == "pending" and item.next_attempt_at:
            last += f" (next {item.next_attempt_at[:19]})"
        table.add_row(str(item.id), item.subscription_id, item.message_id, item.type, escape(item.client_id or ""),
                      item.status, str(item.attempts), escape(last.strip()))
    console.print(table)


def webhooks_replay(
    ctx: typer.Context,
    delivery_id: Annotated[Optional[int], typer.Argument(help="One delivery to send again (its id).")] = None,
    subscription: Annotated[Optional[str], typer.Option(help="Replay this subscription's deliveries (with --since).")] = None,
    since: Annotated[Optional[str], typer.Option(help="Of notices written from this moment (ISO 8601).")] = None,
    until: Annotated[Optional[str], typer.Option(help="And before this moment (ISO 8601); default: now.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send deliveries again, whatever their state: one by id, or a subscription's over a time range.

    E.g. `loyalty webhooks replay 42`, or `loyalty webhooks replay --subscription whk_3f2a9c0d1e4b5a67
    --since 2026-12-01T00:00:00Z --until 2026-12-02T00:00:00Z`. The dispatcher sends them in order per client.
    """
    from service.webhooks import replay_delivery, replay_range

    engine = ctx.obj.engine(as_json)
    try:
        if delivery_id is not None and subscription is None and since is None and until is None:
            answer = replay_delivery(engine, delivery_id)
        elif delivery_id is None and subscription and since:
            answer = replay_range(engine, subscription, parse_moment(since, as_json, "--since", allow_date=True),
                                  parse_moment(until, as_json, "--until", allow_date=True) if until else None)
        else:
            raise fail("give a delivery id, or --subscription with --since (and --until): e.g. `loyalty webhooks "
                       "replay 42` or `loyalty webhooks replay --subscription whk_… --since 2026-12-01`",
                       as_json=as_json)
    except (InputError, NotFoundError) as exc:
        raise fail(str(exc), as_json=as_json) from None
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    console.print(f"{answer.replayed:,} deliveries to send again", highlight=False)


def webhooks_types(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The notice types a subscription may ask for, with their schema version; --json adds each JSON Schema.

    E.g. `loyalty webhooks types --json > notice-schemas.json`.
    """
    from service.webhooks import notice_types

    answer = notice_types()
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    table = Table("type", "version", "data fields")
    for name, entry in answer.types.items():
        table.add_row(name, str(entry.version), ", ".join(entry.data_schema.get("properties", {})))
    console.print(table)


def dispatch_command(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Send what is due now, then exit (e.g. from cron).")] = False,
    interval: Annotated[str, typer.Option(help="Rest between passes when idle: 1s, 500ms, 2m.")] = "1s",
    timeout: Annotated[float, typer.Option(min=0.1, max=300, help="HTTP timeout per attempt, seconds.")] = 10.0,
    lease: Annotated[float, typer.Option(min=0.2, max=3600, help="How long a claimed delivery is this process's "
                                         "(seconds, more than --timeout); past it another dispatcher sends it.")] = 60.0,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Deliveries sent at once.")] = 8,
    retry_for: Annotated[str, typer.Option(help="How long a delivery is retried before it is failed: 24h, 2d.")] = "1d",
    disable_after: Annotated[str, typer.Option(help="Disable a subscription whose every attempt failed this long.")] = "1d",
    backoff_base: Annotated[float, typer.Option(min=0.01, max=3600, help="First retry within this many seconds; "
                                                "doubling each time (full jitter).")] = 5.0,
    backoff_cap: Annotated[float, typer.Option(min=0.01, max=86400, help="Longest wait between retries, seconds.")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print each pass (or, with --once, the total) as one JSON "
                                          "line on stdout.")] = False,
) -> None:
    """Send webhook deliveries: route new notices to subscriptions, sign and POST them, retry, log each attempt.

    Run as many as you like on the same database: they share the work (leases, skipped row locks), and each
    subscription gets each client's notices in order. SIGTERM or Ctrl-C stops after the deliveries in flight;
    one killed outright loses nothing (its leases lapse and another sends them). E.g. `loyalty dispatch`,
    or `loyalty dispatch --once --json`.
    """
    from service.dispatch import Dispatcher, DispatchSettings

    try:
        settings = DispatchSettings(timeout=timeout, lease=lease, concurrency=concurrency, backoff_base=backoff_base,
                                    backoff_cap=backoff_cap,
                                    retry_for=parse_duration(retry_for, as_json, "--retry-for"),
                                    disable_after=parse_duration(disable_after, as_json, "--disable-after"))
    except SettingError as exc:
        raise fail(str(exc), as_json=as_json) from None
    rest = _seconds(interval, as_json)
    dispatcher = Dispatcher(ctx.obj.engine(as_json), settings)
    try:
        if once:
            total = dispatcher.run_once()
            if as_json:
                emit_json(total.model_dump(mode="json"))
            else:
                _print_round(total)
            return
        _stop_on_signals(dispatcher)
        if not as_json:
            errors.print(f"dispatcher {escape(dispatcher.name)} running (Ctrl-C stops it)", highlight=False)
        dispatcher.run(rest, on_round=(lambda step: _json_line(step.model_dump(mode="json"))) if as_json
                       else _print_round)
    finally:
        dispatcher.close()


def _stop_on_signals(dispatcher: Dispatcher) -> None:
    """SIGTERM and Ctrl-C end the run loop after the deliveries in flight."""
    def stop(_signum: int, _frame: FrameType | None) -> None:
        dispatcher.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _json_line(value: dict) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _print_round(step: DispatchRound) -> None:
    disabled = f", disabled {', '.join(step.disabled)}" if step.disabled else ""
    console.print(f"routed {step.routed:,}, sent {step.sent:,}: delivered {step.delivered:,}, retrying "
                  f"{step.retrying:,}, failed {step.failed:,}{disabled}", highlight=False)


def _seconds(text: str, as_json: bool) -> float:
    """A rest such as 500ms, 1s, 2m (or plain seconds), bounded to 10 ms-10 min."""
    match = re.fullmatch(r"(\d{1,6}(?:\.\d{1,3})?)(ms|s|m)?", text.strip())
    if match is None:
        raise fail(f"--interval {text!r} is not a duration; use e.g. 500ms, 1s or 2m", as_json=as_json)
    value = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
    if not 0.01 <= value <= 600:
        raise fail(f"--interval {text!r} is outside 10ms-10m", as_json=as_json)
    return value


def start_background_dispatcher(settings: Settings) -> Callable[[], None]:
    """A dispatcher with the default settings in a thread of this process (`loyalty serve --dispatch`): the
    function that stops it (after the deliveries in flight) and waits for it."""
    from service.database import BATCH, make_engine
    from service.dispatch import Dispatcher

    engine = make_engine(settings.db_url, BATCH)
    dispatcher = Dispatcher(engine)
    thread = threading.Thread(target=dispatcher.run, name="webhook-dispatcher", daemon=True)
    thread.start()

    def stop() -> None:
        dispatcher.stop()
        thread.join(_STOP_WAIT)
        dispatcher.close()
        engine.dispose()

    return stop
