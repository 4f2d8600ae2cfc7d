"""Where the short reads of the hot path run (the key check, benefits, a quote)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from anyio import CapacityLimiter, to_thread
from sqlalchemy import Engine

T = TypeVar("T")
# A few threads are enough to overlap round trips; more only fight over the GIL on a small machine.
READ_THREADS = 2
_limiter: CapacityLimiter | None = None


async def run_read(engine: Engine, work: Callable[..., T], *args: object) -> T:
    """Run a short read without stalling the server: on SQLite on the event loop (a local file that
    WAL readers never wait on: a worker thread's hop would cost more than the read); on PostgreSQL in a
    worker thread, so a slow network, lock or failover delays this request only."""
    if engine.dialect.name == "sqlite":
        return work(*args)
    global _limiter
    if _limiter is None:
        _limiter = CapacityLimiter(READ_THREADS)
    return await to_thread.run_sync(lambda: work(*args), limiter=_limiter)
