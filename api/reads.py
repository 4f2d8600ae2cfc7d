"""Where the short reads of the hot path run (the key check, benefits, a quote)."""
from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Engine

T = TypeVar("T")
# A few threads are enough to overlap round trips; more only fight over the GIL on a small machine. asyncio's
# executor, not anyio's worker threads: those cost 0.04 ms more CPU per read (a tenth of a request).
READ_THREADS = 2
_THREADS = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="loyalty-read")  # threads start on first use


async def run_read(engine: Engine, work: Callable[..., T], *args: object) -> T:
    """Run a short read without stalling the server: on SQLite on the event loop (a local file that
    WAL readers never wait on: a worker thread's hop would cost more than the read); on PostgreSQL in a
    worker thread, so a slow network, lock or failover delays this request only. The work sees the
    request's context (its id, its API key for the log line)."""
    if engine.dialect.name == "sqlite":
        return work(*args)
    within_request = functools.partial(contextvars.copy_context().run, work, *args)
    return await asyncio.get_running_loop().run_in_executor(_THREADS, within_request)
