"""`loyalty serve` (the HTTP API, in one or several processes) and `loyalty scheduler` (the scheduled jobs)."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from api.limits import LogLevel, ServeSettings
from cli.output import console, emit_json, fail
from service.clock import utc_now

# `loyalty --help` loads this module: the web stack, the database and the scheduler are imported when the
# command runs.
if TYPE_CHECKING:
    from cli.main import Settings

# Where prometheus-client's multiprocess mode keeps each worker's figures (see `serve`).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DEFAULT = ServeSettings()


def _option(name: str) -> Any:
    """The typer option of the `serve` setting `name`: its flag, bounds, variable and help, from `ServeSettings`."""
    setting, flag = ServeSettings.setting(name), "--" + name.replace("_", "-")
    flags = f"{flag}/--no-{flag[2:]}" if isinstance(getattr(_DEFAULT, name), bool) else flag
    return typer.Option(flags, min=setting.low, max=setting.high, envvar=setting.env, show_envvar=True,
                        help=setting.help)


def _keep(name: str) -> Any:
    """An option callback that keeps the value in ctx.meta: options that are not `ServeSettings` (those of
    --consume) stay out of ctx.params, which is exactly the server's settings."""
    def keep(ctx: typer.Context, value: Any) -> Any:
        ctx.meta[name] = value
        return value
    return keep


def serve(
    ctx: typer.Context,
    host: Annotated[str, _option("host")] = _DEFAULT.host,
    port: Annotated[int, _option("port")] = _DEFAULT.port,
    workers: Annotated[int, _option("workers")] = _DEFAULT.workers,
    hold_seconds: Annotated[int, _option("hold_seconds")] = _DEFAULT.hold_seconds,
    log_level: Annotated[LogLevel, _option("log_level")] = _DEFAULT.log_level,
    reload_seconds: Annotated[float, _option("reload_seconds")] = _DEFAULT.reload_seconds,
    scheduler: Annotated[bool, _option("scheduler")] = _DEFAULT.scheduler,
    as_json: Annotated[bool, typer.Option("--json", help="Announce the address as one JSON line on stdout.")] = False,
    request_timeout: Annotated[float, _option("request_timeout")] = _DEFAULT.request_timeout,
    head_timeout: Annotated[float, _option("head_timeout")] = _DEFAULT.head_timeout,
    body_timeout: Annotated[float, _option("body_timeout")] = _DEFAULT.body_timeout,
    keep_alive: Annotated[int, _option("keep_alive")] = _DEFAULT.keep_alive,
    max_head_bytes: Annotated[int, _option("max_head_bytes")] = _DEFAULT.max_head_bytes,
    max_headers: Annotated[int, _option("max_headers")] = _DEFAULT.max_headers,
    max_connections: Annotated[int, _option("max_connections")] = _DEFAULT.max_connections,
    consume_url: Annotated[Optional[str], typer.Option(
        "--consume", metavar="URL", envvar="LOYALTY_CONSUME_URL", show_envvar=True, expose_value=False,
        callback=_keep("consume_url"),
        help="Also consume events from this RabbitMQ broker (amqp://...) in a thread of this process, as "
             "`loyalty consume` does (one worker only: with --workers N run `loyalty consume` beside it).")] = None,
    consume_queue: Annotated[str, typer.Option("--queue", expose_value=False, callback=_keep("consume_queue"),
                                               help="The queue --consume reads.")] = "loyalty.events",
    dispatch: Annotated[bool, _option("dispatch")] = _DEFAULT.dispatch,
) -> None:
    """Run the HTTP API for loan systems (OpenAPI docs at /docs, health at /healthz).

    Callers authenticate with keys from `loyalty apikey create`. Uses the same database and rules as
    the other commands; stop with Ctrl-C. A version installed with `loyalty rules activate` is picked
    up without a restart; a rule file that does not load is refused and the last good rules are kept
    (see /healthz). Every option can be set from its LOYALTY_* variable instead. Every wait is bounded
    (see README, "Limits"). E.g. `loyalty serve --workers 2 --request-timeout 5 --max-connections 200`,
    or `LOYALTY_WORKERS=2 loyalty serve`. With `--workers N` (N > 1) N processes answer on the port; with
    `--scheduler` the jobs run once, in this process, whatever N is (and every replica may run them: one
    review still runs at a time).
    """
    import uvicorn  # imported here: the other commands do not need the web stack

    from api.factory import FACTORY, RULES_ENV
    from api.server import PROTOCOL
    from cli.logs import uvicorn_log_config
    from cli.webhooks import start_background_dispatcher
    from service.database import API, URL_ENV

    settings: Settings = ctx.obj
    options = ServeSettings(**{name: value for name, value in ctx.params.items() if name != "as_json"})
    consume_url, consume_queue = ctx.meta.get("consume_url"), ctx.meta.get("consume_queue", "loyalty.events")
    if consume_url and options.workers > 1:  # one consumer in N workers would be N consumers, or none to count
        raise fail("--consume runs in a one-worker server; with --workers N run `loyalty consume` as its own "
                   "process (as many as you like: they share the queue)", as_json=as_json)
    # Checked here, once, so that a problem is one line, not a traceback from each worker.
    settings.rules_watcher(as_json, interval=options.reload_seconds)
    engine = settings.engine(as_json, role=API)
    where = engine.url.render_as_string(hide_password=True)
    engine.dispose()
    # The application is built by the factory from these variables, in this process (one worker) or in
    # each worker process (they inherit this environment).
    os.environ.update({**options.to_env(), URL_ENV: settings.db_url, RULES_ENV: str(settings.rules.resolve())})
    metrics_dir = _private_metrics_dir() if options.workers > 1 else None
    url = f"http://{options.host}:{options.port}"
    if as_json:
        emit_json({"url": url, "docs": f"{url}/docs", "database": where, "hold_seconds": options.hold_seconds,
                   "workers": options.workers})
    else:
        processes = f" with {options.workers} worker processes" if options.workers > 1 else ""
        console.print(f"serving {escape(where)} on {url}{processes} (docs: {url}/docs)", highlight=False)
    jobs = start_scheduler(settings, background=True) if options.scheduler else None
    consumer, signals = None, contextlib.nullcontext()
    if consume_url:
        from cli.consume import start_in_background, stopped_by_signals

        consumer = start_in_background(settings, consume_url, consume_queue)
        # uvicorn stops on SIGTERM/SIGINT and then raises the signal again under the handler it found: this one
        # (stop the consumer) rather than the default (die at once, the consumer's batch cut off).
        signals = stopped_by_signals(consumer[1])
    stop_dispatcher = start_background_dispatcher(settings) if options.dispatch else None
    try:
        with signals:
            uvicorn.run(FACTORY, factory=True, workers=options.workers, host=options.host, port=options.port,
                        log_level=options.log_level, server_header=False, http=PROTOCOL,
                        timeout_keep_alive=options.keep_alive, limit_concurrency=options.max_connections,
                        log_config=uvicorn_log_config(settings.log_format, options.log_level), access_log=False)
    finally:
        if stop_dispatcher is not None:
            stop_dispatcher()
        if jobs is not None:
            jobs.shutdown(wait=False)
        if consumer is not None:  # after the server stopped: the batch in hand is finished and acknowledged
            thread, stop = consumer
            stop.set()
            thread.join(timeout=60)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _private_metrics_dir() -> str:
    """A fresh directory, readable by this user only, where each worker writes its metrics so that /metrics
    adds them up (prometheus-client's multiprocess mode); files left by an earlier run would be added too."""
    folder = tempfile.mkdtemp(prefix="loyalty-metrics-")
    os.environ[METRICS_DIR_ENV] = folder
    return folder


def run_scheduler(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Log each job's outcome as one JSON line on stdout.")] = False,
) -> None:
    """Run the tier review and points expiry on the rule file's schedules, until stopped (Ctrl-C).

    Schedules: `review.schedule` and `points.expiry_schedule` (cron and time zone). Jobs are kept in
    the database. Run it on as many machines as you like: one review runs at a time, and a review
    that was missed, or cut off half-way, is run or finished once by whichever scheduler is up.
    """
    settings: Settings = ctx.obj
    model = settings.programmes(as_json).for_moment(utc_now()).model  # the schedules the jobs start with
    settings.engine(as_json)  # fail now, with the reason, if the database is not there
    if model.review.schedule is None and model.points.expiry_schedule is None:
        raise fail("the rule file schedules nothing: add review.schedule or points.expiry_schedule", as_json=as_json)
    start_scheduler(settings, background=False, as_json=as_json)


def start_scheduler(settings: Settings, background: bool, as_json: bool = False):  # noqa: ANN201 - a scheduler
    """Build and start the scheduler; a blocking one returns once stopped (Ctrl-C)."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    from cli.logs import formatter
    from service.scheduler import build_scheduler

    handler = logging.StreamHandler(sys.stdout if as_json else sys.stderr)
    if as_json:  # each job's outcome is itself one JSON line
        handler.setFormatter(logging.Formatter("%(message)s"))
    elif settings.log_format == "json":
        handler.setFormatter(formatter("json"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logger = logging.getLogger("loyalty.scheduler")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    if background:
        runner = build_scheduler(settings.db_url, settings.rules)
    else:
        runner = build_scheduler(settings.db_url, settings.rules, scheduler_class=BlockingScheduler)
        if not as_json:
            for job in runner.get_jobs():
                console.print(f"job {job.id}: {escape(str(job.trigger))}", highlight=False)
    try:
        runner.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    return runner
