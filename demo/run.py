"""The demo: a synthetic portfolio ingested quarter by quarter, with a tier review at each quarter end,
so clients move up and down over time as a real programme would see them."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from demo.generator import DEFAULT_END, generate
from engine.programme import ProgrammeSet
from rewards.caps import months_before
from service.ingest import IngestReport, Ingestor
from service.portfolio import portfolio_summary
from service.review import ReviewReport, run_review


@dataclass
class DemoResult:
    """What the demo did and found."""

    events: int
    ingest: IngestReport
    reviews: list[ReviewReport]
    summary: dict


def review_moments(start: datetime, end: datetime) -> list[datetime]:
    """Each quarter start (00:00 UTC) after `start` and before `end`, then `end` itself."""
    moments = []
    year, month = start.year, ((start.month - 1) // 3) * 3 + 1
    while True:
        month += 3
        if month > 12:
            year, month = year + 1, month - 12
        moment = datetime(year, month, 1, tzinfo=UTC)
        if moment >= end:
            return [*moments, end]
        moments.append(moment)


def run_demo(engine: Engine, programmes: ProgrammeSet, clients: int, months: int, seed: int,
             progress: Callable[[int], None] | None = None, end: datetime = DEFAULT_END) -> DemoResult:
    """Generate, ingest up to each review moment, review there, and summarise at the end."""
    events = generate(clients, months, seed, end)
    ingestor = Ingestor(engine, programmes)
    total = IngestReport()
    reviews = []
    position = 0
    for moment in review_moments(months_before(end, months), end):
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        upto = position
        while upto < len(events) and events[upto]["occurred_at"] <= stamp:
            upto += 1
        report = ingestor.ingest_lines([json.dumps(e) for e in events[position:upto]], progress=progress)
        position = upto
        total.applied += report.applied
        total.duplicates += report.duplicates
        total.rejected += report.rejected
        total.errors.extend(report.errors)
        if moment >= programmes.versions[0].effective_from:  # before the programme there is nothing to review
            reviews.append(run_review(engine, programmes, moment))
    return DemoResult(len(events), total, reviews, portfolio_summary(engine, programmes, end))
