"""The review and expiry jobs on the rule file's schedules (APScheduler 3, jobs kept in the database).

Jobs live in APScheduler's SQLAlchemy job store, in the loyalty database itself, stored as references
to the functions below without arguments: any replica loads and runs them on its own configuration.
`coalesce` and an unlimited misfire grace make a scheduler that fell behind (a suspended machine, a
long job) run a job once, not once per missed moment; and a missed review is always the latest
scheduled one, so catching up after downtime is one review.

Replicas each run the jobs, and the work stays single: a scheduled review is named by its scheduled
moment, so every replica that fires it names the same review; the review's lease lets one run it
and the others find it running or finished. A catch-up job, every few minutes and at start, runs
the latest scheduled review if it has not finished: after downtime, or when the replica running it
died half-way (its lease lapses and the review resumes where it stopped). Expiry is idempotent under
the clients' locks, so two replicas expiring at once expire each lot once.

The schedules are those of the version in force now, not of the latest version installed: a version
activated for next month does not move this month's reviews. When it starts, the next run of any job
(the catch-up at the latest, within five minutes) moves the jobs to its schedules, without a restart.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, bindparam, inspect, text

from engine.programme import ProgrammeSet
from engine.schema import Programme, Schedule
from service.clock import utc_now
from service.errors import ConflictError, ReviewInterruptedError
from service.expiry import expire_points
from service.expiry_notices import announce_expiring
from service.review import run_review, scheduled_review_id
from service.rules_watcher import RulesWatcher
from storage.db import make_engine, write_transaction

log = logging.getLogger("loyalty.scheduler")

REVIEW_JOB, EXPIRY_JOB, CATCH_UP_JOB = "tier-review", "points-expiry", "review-catch-up"
CATCH_UP_EVERY = timedelta(minutes=5)
JOB_TABLE = "apscheduler_jobs"
_LOOK_BACK = timedelta(days=800)  # a schedule fires at least once in two years, or it is not a schedule

_engines: dict[str, Engine] = {}  # one engine per database for this process's jobs
_config: dict[str, str] = {}  # this process's database URL and rules, for the stored jobs
_watchers: dict[str, RulesWatcher] = {}  # one per rules location, for the life of the process
_running: dict = {}  # this process's scheduler, and the schedules its jobs follow


def build_scheduler(database_url: str, rules: Path, scheduler_class: type[BaseScheduler] = BackgroundScheduler,
                    catch_up_every: timedelta = CATCH_UP_EVERY) -> BaseScheduler:
    """A scheduler (not started) holding the jobs the programme's schedules ask for, stored in the database.

    The stored jobs carry no arguments: each replica runs them on its own database URL and rules
    (so no password is written to the job table, and replicas installed in different places agree).
    """
    _config.update(database_url=database_url, rules=str(rules))
    model = _programmes(str(rules)).for_moment(utc_now()).model
    engine = _engine(database_url)
    store = SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE)
    scheduler = scheduler_class(jobstores={"default": store}, timezone=UTC,
                                job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1})
    wanted = {}
    if model.review.schedule is not None:
        wanted[REVIEW_JOB] = (review_job, cron_trigger(model.review.schedule), {})
        wanted[CATCH_UP_JOB] = (review_job, IntervalTrigger(seconds=catch_up_every.total_seconds()),
                                {"next_run_time": utc_now()})
    if model.points.expiry_schedule is not None:
        wanted[EXPIRY_JOB] = (expiry_job, cron_trigger(model.points.expiry_schedule), {})
    _forget_other_jobs(engine, set(wanted))
    for job_id, (function, trigger, options) in wanted.items():
        # Re-added at every start, so an edited schedule takes effect. Runs missed while no scheduler
        # was up are not lost: the catch-up job runs the latest review at start, and each expiry takes
        # everything due by then.
        scheduler.add_job(function, trigger, id=job_id, name=job_id, replace_existing=True, **options)
    _running.update(scheduler=scheduler, schedules=_schedules(model))
    return scheduler


def _schedules(model: Programme) -> dict[str, Schedule | None]:
    return {REVIEW_JOB: model.review.schedule, EXPIRY_JOB: model.points.expiry_schedule}


def _follow_schedules(programmes: ProgrammeSet) -> None:
    """Move the jobs to the schedules of the version in force now, once a new version that changes them starts."""
    scheduler = _running.get("scheduler")
    if scheduler is None:
        return
    wanted = _schedules(programmes.for_moment(utc_now()).model)
    for job_id, schedule in wanted.items():
        if schedule == _running["schedules"].get(job_id):
            continue
        if schedule is None:
            if scheduler.get_job(job_id) is not None:
                scheduler.remove_job(job_id)
        else:
            function = review_job if job_id == REVIEW_JOB else expiry_job
            scheduler.add_job(function, cron_trigger(schedule), id=job_id, name=job_id, replace_existing=True)
        log.info(json.dumps({"job": job_id, "schedule": schedule.model_dump() if schedule else None,
                             "reason": "the version in force now has this schedule"}))
    _running["schedules"] = wanted


def review_job() -> dict | None:
    """The stored review job: the latest scheduled review, on this process's database and rules."""
    return scheduled_review(_config["database_url"], _config["rules"])


def expiry_job() -> dict:
    """The stored expiry job, on this process's database and rules."""
    return scheduled_expiry(_config["database_url"], _config["rules"])


def _forget_other_jobs(engine: Engine, wanted: set[str]) -> None:
    """Remove stored jobs whose schedule is no longer in the rule file."""
    if inspect(engine).has_table(JOB_TABLE):
        with write_transaction(engine) as conn:
            conn.execute(text(f"DELETE FROM {JOB_TABLE} WHERE id NOT IN :wanted")  # noqa: S608 - a constant
                         .bindparams(bindparam("wanted", expanding=True)), {"wanted": sorted(wanted) or [""]})


def cron_trigger(schedule: Schedule) -> CronTrigger:
    """The APScheduler trigger of a rule file's schedule."""
    return CronTrigger.from_crontab(schedule.cron, timezone=ZoneInfo(schedule.timezone))


def latest_moment(schedule: Schedule, now: datetime) -> datetime | None:
    """The latest moment at or before `now` that `schedule` fires, in UTC (None if none in two years)."""
    trigger = cron_trigger(schedule)
    latest = None
    moment = trigger.get_next_fire_time(None, now - _LOOK_BACK)
    while moment is not None and moment <= now:
        latest = moment
        moment = trigger.get_next_fire_time(moment, moment + timedelta(seconds=1))
    return latest.astimezone(UTC) if latest is not None else None


def scheduled_review(database_url: str, rules: str) -> dict | None:
    """Run (or finish) the review of the latest scheduled moment, unless it has finished or is running."""
    programmes = _programmes(rules)
    _follow_schedules(programmes)
    schedule = programmes.for_moment(utc_now()).model.review.schedule
    moment = latest_moment(schedule, utc_now()) if schedule else None
    if moment is None:
        return None
    review_id = scheduled_review_id(moment)
    try:
        report = run_review(_engine(database_url), programmes, moment, trigger="scheduled", review_id=review_id)
    except ConflictError as exc:
        if exc.code not in ("review-finished", "review-running"):
            raise
        log.debug("review %s not run: %s", review_id, exc)
        return None
    except ReviewInterruptedError as exc:  # the catch-up job finishes it once the database answers again
        log.warning(json.dumps({"job": REVIEW_JOB, "review_id": review_id, "interrupted": str(exc)}))
        return None
    summary = report.as_dict()
    outcome = {"job": REVIEW_JOB, "review_id": review_id, "as_of": summary["as_of"], "resumed": summary["resumed"],
               "clients": summary["clients"], "upgrades": summary["upgrades"], "downgrades": summary["downgrades"],
               "held": len(summary["held"]), "pins": len(summary["pins"]),
               "churn_flagged": len(summary["churn"]["flagged"]), "points_expired": summary["points_expired"]["points"]}
    log.info(json.dumps(outcome))
    return outcome


def scheduled_expiry(database_url: str, rules: str) -> dict:
    """Expire the points that have expired by now, and warn of those about to (points.expiring notices)."""
    programmes = _programmes(rules)
    _follow_schedules(programmes)
    report = expire_points(_engine(database_url), programmes, utc_now())
    warned = announce_expiring(_engine(database_url), programmes)
    outcome = {"job": EXPIRY_JOB, **report.as_dict(), "expiry_notices": warned}
    log.info(json.dumps(outcome))
    return outcome


def _programmes(rules: str) -> ProgrammeSet:
    """The programmes at `rules`, reloaded only when a rule file changed (compiling at every run would
    grow the process); a change that does not load is refused and the last good set is used."""
    if rules not in _watchers:
        _watchers[rules] = RulesWatcher(Path(rules))
    _watchers[rules].refresh()
    return _watchers[rules].current()


def _engine(database_url: str) -> Engine:
    if database_url not in _engines:
        _engines[database_url] = make_engine(database_url)
    return _engines[database_url]
