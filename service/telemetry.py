"""The service's Prometheus metrics, defined once here and counted where each outcome is known.

With several worker processes (`loyalty serve --workers N`), `PROMETHEUS_MULTIPROC_DIR` names a directory
the workers share; it must be set before this module is first imported (prometheus-client picks its value
store then). Each worker then writes its figures to files there and a scrape, answered by any worker,
adds them up (`multiprocess.MultiProcessCollector`). Each gauge says how its workers' values combine.
"""
from __future__ import annotations

import os
import time
import collections
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest, multiprocess)
from sqlalchemy import Engine, event

from service.errors import ConflictError, InputError, ReviewInterruptedError
from storage.db import after_commit

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
disable_created_metrics()  # a `_created` twin of every series only doubles what a scrape carries

# Seconds: the benefits read takes milliseconds, a batch of 1,000 events seconds.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_REVIEW_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600)

REQUESTS = Histogram("loyalty_http_request_duration_seconds",
                     "HTTP requests by route template, method and status: time from arrival to the last byte sent "
                     "(its _count is the number of requests)",
                     ["method", "route", "status"], buckets=_REQUEST_BUCKETS)
EVENTS = Counter("loyalty_events", "Events by outcome (applied, duplicate, rejected) and source (api: POST /v1/events; "
                 "ingest: NDJSON lines; broker: messages of `loyalty consume`)", ["source", "outcome"])
QUOTES = Counter("loyalty_quotes", "Quotes by outcome: held (created), committed, voided, expired (a commit or void "
                 "that arrived after the hold lapsed)", ["outcome"])
REDEMPTIONS = Counter("loyalty_redemptions", "Points redeemed for a catalogue reward", ["reward"])
POINTS_EXPIRED = Counter("loyalty_points_expired", "Points expired by expiry runs (the scheduler's job, `loyalty points expire`, reviews)")
REVIEW_RUNS = Counter("loyalty_review_runs", "Tier reviews by outcome: completed, dry_run, interrupted, refused, failed",
                      ["outcome"])
REVIEW_SECONDS = Histogram("loyalty_review_duration_seconds", "Time a tier review ran, whatever its outcome",
                           buckets=_REVIEW_BUCKETS)
PROGRAMME = Gauge("loyalty_programme_in_force", "1 for the programme version in force now, 0 for one that was",
                  ["programme", "version"], multiprocess_mode="livemostrecent")
RULES_REFUSED = Counter("loyalty_rule_files_refused", "Rule files refused by a running process's rules watcher "
                        "(each worker watches, and counts, on its own)")
RULES_DEGRADED = Gauge("loyalty_rules_degraded", "1 while a changed rule file is refused and the last good rules are "
                       "served", multiprocess_mode="livemax")
POOL_IN_USE = Gauge("loyalty_db_pool_connections_in_use", "Database connections checked out of the pool now",
                    multiprocess_mode="livesum")

_REQUEST_SERIES: dict[tuple[str, str, int], Histogram] = {}  # REQUESTS' series, found once each (labels() is not free)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count an HTTP request answered with `status` after `seconds`, by method and route template."""
    series = _REQUEST_SERIES.get((method, route, status))
    if series is None:
        series = _REQUEST_SERIES[method, route, status] = REQUESTS.labels(method, route, str(status))
    series.observe(seconds)


def count_events(source: str, outcomes: Iterable[object]) -> None:
    """Count decided events (each with a `status`: applied, duplicate or rejected) from `source`, once committed."""
    for status, count in collections.Counter(outcome.status for outcome in outcomes).items():  # type: ignore[attr-defined]
        after_commit(lambda child=EVENTS.labels(source, status), count=count: child.inc(count))


def count_quote(outcome: str) -> None:
    """Count a quote held, committed, voided or found expired, once what decided it is committed."""
    after_commit(QUOTES.labels(outcome).inc)


def count_redemption(reward_id: str) -> None:
    """Count a redemption of `reward_id`, once it is committed."""
    after_commit(REDEMPTIONS.labels(reward_id).inc)


def show_programme(programme_id: str, versions: Iterable[str], in_force: str) -> None:
    """Record which of the installed `versions` is in force now: 1 for it, 0 for every other. All are written
    each time, so with several workers the most recent scrape's answer wins for every version alike."""
    for version in versions:
        PROGRAMME.labels(programme_id, version).set(1 if version == in_force else 0)


def watch_pool(engine: Engine) -> None:
    """Keep POOL_IN_USE equal to the connections `engine` has checked out (pool events, so that every worker
    process reports its own pool, not only the one answering the scrape)."""
    if not event.contains(engine, "checkout", _checked_out):  # the engine's pool, also once recreated
        event.listen(engine, "checkout", _checked_out)
        event.listen(engine, "checkin", _checked_in)


def _checked_out(*_: object) -> None:
    POOL_IN_USE.inc()


def _checked_in(*_: object) -> None:
    POOL_IN_USE.dec()


def exposition() -> tuple[bytes, str]:
    """The metrics in the Prometheus text format, and its content type; summed over worker processes."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exited() -> None:
    """Drop this worker's live gauges from the shared directory (its counters stay counted)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())


@contextmanager
def review_run(dry_run: bool) -> Iterator[None]:
    """Count a tier review by outcome and time it; a review refused before it starts (another one runs, this
    one already finished) is counted as refused, not timed."""
    started, outcome = time.perf_counter(), "failed"
    try:
        yield
        outcome = "dry_run" if dry_run else "completed"
    except ReviewInterruptedError:
        outcome = "interrupted"
        raise
    except (ConflictError, InputError):
        outcome = "refused"
        raise
    finally:
        REVIEW_RUNS.labels(outcome).inc()
        if outcome != "refused":
            REVIEW_SECONDS.observe(time.perf_counter() - started)


BROKER_MESSAGES = Counter("loyalty_broker_messages", "Messages consumed from a broker queue (`loyalty consume`), once "
                          "acknowledged, by outcome: consumed (all of them), applied, duplicate (delivered again), "
                          "dead_lettered (rejected: copied to the dead-letter queue with the reason)",
                          ["queue", "outcome"])


def count_messages(queue: str, consumed: int, applied: int, duplicates: int, dead_lettered: int) -> None:
    """Count a batch of messages from `queue` once it is acknowledged, by outcome."""
    for outcome, count in (("consumed", consumed), ("applied", applied), ("duplicate", duplicates),
                           ("dead_lettered", dead_lettered)):
        if count:
            BROKER_MESSAGES.labels(queue, outcome).inc(count)


WEBHOOK_DELIVERIES = Counter("loyalty_webhook_deliveries", "Webhook (and exchange) delivery attempts written by "
                             "dispatchers, by outcome: delivered, retrying (failed, to be tried again), failed (retries "
                             "over a day: given up), and subscriptions disabled", ["outcome"])


def count_deliveries(delivered: int, retrying: int, failed: int, disabled: int) -> None:
    """Count a dispatcher round's outcomes once they are committed."""
    for outcome, count in (("delivered", delivered), ("retrying", retrying), ("failed", failed),
                           ("subscription_disabled", disabled)):
        if count:
            WEBHOOK_DELIVERIES.labels(outcome).inc(count)
