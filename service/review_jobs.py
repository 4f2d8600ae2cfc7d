"""Reviews started over the admin API: each runs off the request, in a thread of its own with its own
database engine (the batch bounds: a review's statements aggregate a whole portfolio), and is looked up by
its id while it runs and after.

The id is chosen before the review starts, so the caller has it at once (202 with a Location): a review
is named as `loyalty review` names one (`review-<as_of>-<hex>`), and that name is passed to the review, so
the job's id IS the review's id in the database; a caller may also name one, to finish an interrupted review
as `loyalty review --id` does. A dry run records nothing in the database and has no review id: its job is
named `dry-run-<as_of>-<hex>`.

Bounded: one job runs at a time per process (a review holds the database's review lease anyway); a job
stops at the first page boundary after `max_seconds`, or when the server stops (`stop_all`), and what it
wrote is kept: the same review id finishes it. Finished jobs are kept for `keep_seconds`, at most `keep`
of them. A job is known to the process that runs it; another process (another `serve` worker) answers a
real review's status from the database, without its report (see `job_status`).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import Engine

from engine.programme import ProgrammeSet
from service.answer import Answer, Moment
from service.clock import Clock, utc_now
from service.database import BATCH, make_engine
from service.errors import ConflictError, InputError, NotFoundError, ReviewInterruptedError
from service.review import REVIEW_ID, run_review
from storage import reviews as review_records
from storage.db import read_snapshot

log = logging.getLogger("loyalty.reviews")
MAX_SECONDS = 4 * 3600.0  # a review of 100,000 clients takes minutes; hours means something is wrong
KEEP_SECONDS = 24 * 3600.0
KEEP = 50


class ReviewSummary(Answer):
    """What a review found and did: the same fields as `loyalty review --json` (without `report_files`)."""

    review_id: str | None = Field(description="null for a dry run, which records nothing")
    as_of: Moment
    programme_version: str
    trigger: str
    dry_run: bool
    resumed: bool
    currency: str
    tiers: list[str]
    clients: int
    upgrades: int
    downgrades: int
    tiers_before: dict[str, int]
    tiers_after: dict[str, int]
    migration: dict[str, dict[str, int]]
    changes: list[dict[str, Any]] = Field(description="each move: client_id, from, to, direction, "
                                                      "effective_from, policy, reasons")
    held: list[dict[str, Any]]
    pins: list[dict[str, Any]]
    churn: dict[str, list[dict[str, Any]]] = Field(description="`flagged` and `cleared` clients")
    points_expired: dict[str, Any]
    standing_discounts: dict[str, Any] = Field(description="`change_per_year` (decimal text) and `clients`")
    skipped: list[dict[str, Any]]
    unfinished_reviews: list[str]


class ReviewJob(Answer):
    """A review (or dry run) started over the API: its status, and its report once finished."""

    id: str = Field(description="the review's id (a dry run's job id starts with `dry-run-`)")
    status: Literal["running", "finished", "failed", "unfinished"] = Field(
        description="`unfinished`: recorded in the database, not finished, and not running on this server process "
                    "(running on another, or interrupted: POST /v1/reviews with its review_id finishes it)")
    dry_run: bool
    as_of: Moment | None = Field(description="the review's moment (null until known, for a resumed review)")
    started_at: Moment | None
    finished_at: Moment | None
    error: str | None = Field(None, description="why it failed; the same id finishes an interrupted review")
    error_code: str | None = Field(None, description="e.g. `review-running`, `review-finished`, "
                                                     "`review-interrupted`, `review-stopped`")
    report: ReviewSummary | None = Field(None, description="when finished, on the server process that ran it")
    note: str | None = Field(None, description="what this answer leaves out, and where to find it")


class _Stopped(Exception):
    """Raised between pages to stop a job past its time or at shutdown."""


class ReviewJobs:
    """The review jobs of this process (see the module's description)."""

    def __init__(self, max_seconds: float = MAX_SECONDS, keep_seconds: float = KEEP_SECONDS, keep: int = KEEP):
        self.max_seconds, self.keep_seconds, self.keep = max_seconds, keep_seconds, keep
        self._jobs: dict[str, tuple[ReviewJob, float]] = {}  # id -> (job, monotonic time it ended or started)
        self._running: str | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self, engine: Engine, programmes: ProgrammeSet, as_of: datetime | None, dry_run: bool,
              review_id: str | None, clock: Clock = utc_now) -> ReviewJob:
        """Start a review (or dry run) in a thread of its own; its job at once. InputError for a moment in the
        future or a malformed id, ConflictError while another job of this process runs."""
        now = clock()
        if as_of is not None and as_of.tzinfo is None:
            raise InputError("as_of has no time zone; give UTC, e.g. 2026-03-31T00:00:00Z")
        if as_of is not None and as_of > now:
            raise InputError(f"a review cannot look into the future: {as_of.isoformat()} is later than now")
        if review_id is not None and (dry_run or not REVIEW_ID.fullmatch(review_id)):
            raise InputError("review_id names a review to finish (1 to 64 letters, digits, '.', '_', ':' or '-'), "
                             "and a dry run has none" if dry_run else
                             f"review id {review_id[:80]!r} is not one; expected 1 to 64 letters, digits, '.', '_', "
                             "':' or '-'")
        moment = (as_of or now).astimezone(UTC)
        job_id = review_id or f"{'dry-run' if dry_run else 'review'}-{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        job = ReviewJob(id=job_id, status="running", dry_run=dry_run,
                        as_of=None if review_id and as_of is None else moment.isoformat(),
                        started_at=now.isoformat(), finished_at=None)
        with self._lock:
            self._forget_old()
            if self._running is not None:
                raise ConflictError(f"review {self._running} is still running on this server; follow it at "
                                    f"/v1/reviews/{self._running} and start another once it is done", "review-running")
            self._running = job_id
            self._jobs[job_id] = (job, time.monotonic())
            thread = threading.Thread(target=self._run, name=f"review-{job_id}", daemon=True,
                                      args=(job_id, engine.url.render_as_string(hide_password=False), programmes,
                                            as_of if review_id and as_of is None else moment, dry_run,
                                            None if dry_run else job_id, clock))
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return job

    def get(self, job_id: str) -> ReviewJob | None:
        """The job `job_id` of this process, or None."""
        with self._lock:
            kept = self._jobs.get(job_id)
        return kept[0] if kept else None

    def stop_all(self, seconds: float = 5.0) -> None:
        """Ask running jobs to stop at their next page, and wait up to `seconds` for them."""
        self._stop.set()
        deadline = time.monotonic() + seconds
        for thread in list(self._threads):
            thread.join(max(deadline - time.monotonic(), 0))

    def _run(self, job_id: str, url: str, programmes: ProgrammeSet, as_of: datetime | None, dry_run: bool,
             review_id: str | None, clock: Clock) -> None:
        deadline = time.monotonic() + self.max_seconds

        def between_pages(_clients: int) -> None:  # run_review calls it after each page of clients
            if self._stop.is_set() or time.monotonic() > deadline:
                raise _Stopped

        update: dict[str, Any]
        engine = None
        try:
            engine = make_engine(url, BATCH)
            report = run_review(engine, programmes, as_of, dry_run=dry_run, clock=clock, progress=between_pages,
                                review_id=review_id, share=False)
            update = {"status": "finished", "report": ReviewSummary.model_validate(report.as_dict()),
                      "as_of": report.as_of.isoformat()}
        except _Stopped:
            update = {"status": "failed", "error_code": "review-stopped",
                      "error": "stopped at a page boundary (server stopping or past its time bound); what it wrote "
                               "is kept: POST /v1/reviews with this review_id finishes it"}
        except ReviewInterruptedError as exc:
            update = {"status": "failed", "error": str(exc), "error_code": "review-interrupted"}
        except ConflictError as exc:
            update = {"status": "failed", "error": str(exc), "error_code": exc.code}
        except (InputError, NotFoundError) as exc:
            update = {"status": "failed", "error": str(exc), "error_code": "invalid-input"}
        except Exception as exc:  # noqa: BLE001 - a job's failure is its answer, never an unlogged thread death
            log.exception("review job %s failed", job_id)
            update = {"status": "failed", "error": f"the review failed ({type(exc).__name__}); it is logged",
                      "error_code": "internal-error"}
        finally:
            if engine is not None:
                engine.dispose()
        with self._lock:
            job, _ = self._jobs[job_id]
            self._jobs[job_id] = (job.model_copy(update={**update, "finished_at": clock().isoformat()}),
                                  time.monotonic())
            self._running = None

    def _forget_old(self) -> None:
        """Drop finished jobs older than `keep_seconds`, and the oldest beyond `keep` (under the lock)."""
        now = time.monotonic()
        done = [(at, job_id) for job_id, (job, at) in self._jobs.items() if job.status != "running"]
        stale = {job_id for at, job_id in done if now - at > self.keep_seconds}
        stale |= {job_id for _, job_id in sorted(done)[:max(len(done) - self.keep + 1, 0)]}
        for job_id in stale:
            del self._jobs[job_id]


def job_status(jobs: ReviewJobs, engine: Engine, job_id: str) -> ReviewJob:
    """The job `job_id`: from this process if it runs or ran it, else (a review another process ran, or one
    started by `loyalty review`) its status as the database records it, without a report. NotFoundError
    otherwise."""
    known = jobs.get(job_id)
    if known is not None:
        return known
    with read_snapshot(engine) as conn:
        recorded = review_records.find(conn, job_id) if REVIEW_ID.fullmatch(job_id) else None
    if recorded is None:
        raise NotFoundError(f"no review {job_id!r}: ids are those POST /v1/reviews answered with (a dry run's is "
                            "kept by the server process that ran it, for a day)")
    finished = recorded.finished_at
    return ReviewJob(id=job_id, status="finished" if finished else "unfinished", dry_run=False,
                     as_of=recorded.as_of.isoformat(), started_at=None,
                     finished_at=finished.isoformat() if finished else None,
                     note="as the database records it: the report is served by the server process that ran the "
                          "review (for a day after it finished)")
