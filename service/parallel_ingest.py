"""One ingest shared by several processes, the events shared out by client (PostgreSQL).

This process reads the input in batches as `loyalty ingest` does, sends each process its share of every
batch (all the events of a client go to the same process, so they stay in order) with the moment the
whole batch's instant upgrades are measured at, and gathers the outcomes. Each process applies its
shares with the ordinary ingest path, one transaction a share, under the same row locks as any writer:
the ledger, tiers and balances are those one process would write. On SQLite one process writes at a
time, so there is nothing to share.
"""
from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from service.ingest import IngestReport, InputLine, Outcome, RejectSink, bounded_lines, chunks, route
from service.rules_watcher import RulesWatcher

WAIT_SECONDS = 5.0  # how often a stalled exchange looks whether a process died
Share = list[tuple[int, InputLine]]


class SharedIngestError(Exception):
    """An ingest process failed; the message says why and that running the same command again is safe."""


def ingest_in_processes(db_url: str, rules: Path, source: BinaryIO, processes: int, batch_size: int,
                        progress: Callable[[int], None] | None = None,
                        rejects: RejectSink | None = None) -> IngestReport:
    """Apply the NDJSON `source` with `processes` processes; the report is the one a single process gives.

    Rejected lines reach `rejects` a share at a time, each share in line order.
    """
    context = multiprocessing.get_context("spawn")  # a fork would copy this process's connections
    inboxes = [context.Queue(maxsize=2) for _ in range(processes)]
    results = context.Queue()
    workers = [context.Process(target=_work, args=(db_url, str(rules), batch_size, inbox, results), daemon=True,
                               name=f"loyalty-ingest-{n}") for n, inbox in enumerate(inboxes)]
    for worker in workers:
        worker.start()
    watcher = RulesWatcher(rules)
    report = IngestReport()
    pending = 0  # shares sent and not answered yet

    def take(block: bool) -> bool:
        nonlocal pending
        try:
            kind, *body = results.get(timeout=WAIT_SECONDS) if block else results.get_nowait()
        except queue.Empty:
            _check_alive(workers)
            return False
        if kind == "failed":
            raise SharedIngestError(body[0])
        lines, outcomes, rejected = body
        pending -= 1
        for outcome in outcomes:
            report.add(outcome)
        if rejects is not None:
            for outcome, line in rejected:
                rejects(outcome, line)
        if progress:
            progress(lines)
        return True

    try:
        for chunk in chunks(enumerate(bounded_lines(source), start=1), batch_size):
            watcher.refresh()  # the processes pick up a newly activated version between batches too
            shares, moment = route(chunk, watcher.current(), processes)
            for inbox, share in zip(inboxes, shares, strict=True):
                _put(inbox, (share, moment), workers, take)
                pending += 1
            while take(block=False):
                pass
        for inbox in inboxes:
            _put(inbox, None, workers, take)
        while pending:
            take(block=True)
    finally:
        for worker in workers:
            worker.join(timeout=WAIT_SECONDS)
            if worker.is_alive():
                worker.terminate()
    report.errors.sort(key=lambda error: error["line"])
    return report


def _put(inbox, item: tuple[Share, datetime | None] | None, workers: list, take: Callable[[bool], bool]) -> None:  # noqa: ANN001
    """Hand a process its next share, taking answers meanwhile (a full inbox must not deadlock with a full outbox)."""
    while True:
        try:
            inbox.put(item, timeout=0.05)
            return
        except queue.Full:
            take(False)
            _check_alive(workers)


def _check_alive(workers: list) -> None:
    for worker in workers:
        if worker.exitcode not in (None, 0):
            raise SharedIngestError(f"ingest process {worker.name} stopped (exit {worker.exitcode}); the batches it "
                                    "committed are applied: running the same command again is safe")


def _work(db_url: str, rules: str, batch_size: int, inbox, results) -> None:  # noqa: ANN001 - multiprocessing queues
    """One ingest process: apply each share it is handed, answer with its outcomes and rejected lines."""
    from service.ingest import Ingestor, collect_less
    from storage.db import make_engine

    try:
        watcher = RulesWatcher(Path(rules))
        ingestor = Ingestor(make_engine(db_url), watcher.current(), batch_size=batch_size, rules=watcher)
        collect_less()
        while (item := inbox.get()) is not None:
            share, moment = item
            rejected: list[tuple[Outcome, InputLine]] = []
            outcomes = ingestor.ingest_chunk(share, lambda outcome, line: rejected.append((outcome, line)), moment)
            results.put(("batch", len(share), outcomes, rejected))
    except Exception as exc:  # noqa: BLE001 - told to the parent, which stops the run and says why
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        results.put(("failed", f"an ingest process failed: {reason}. The batches committed before are applied; "
                               "running the same command again is safe (applied events count as duplicates)"))
