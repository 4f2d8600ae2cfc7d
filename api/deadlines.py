"""Client-side bounds on the database work of a request: a frozen database (process stopped, TCP still
accepted by the kernel) cannot enforce its own statement timeout, so the API stops waiting instead.

Blocking work runs in worker threads that are abandoned past the deadline: the request answers 503
and the thread finishes whenever the database answers (then its cleanup runs, e.g. a rollback). The
work left behind is counted; past `MAX_ABANDONED` new requests are refused at once instead of piling
up more of it, until the database answers again and the abandoned work drains.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
from anyio import to_thread

T = TypeVar("T")

# /healthz is what load balancers poll: it must answer fast, even when the database does not.
HEALTH_TIMEOUT = 2.0
# Work abandoned to a frozen database holds a thread (and a pooled connection) until it thaws.
MAX_ABANDONED = 64


class DeadlineExceeded(Exception):
    """The database did not answer within the request's bound (or too much work already waits on it)."""

    def __init__(self, seconds: float):
        super().__init__(f"the database did not answer within {seconds:g} s")
        self.seconds = seconds


class _Backlog:
    """How much abandoned work still waits on the database (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n

    def full(self) -> bool:
        return self.count >= MAX_ABANDONED


backlog = _Backlog()


def check_backlog(seconds: float) -> None:
    """Refuse new database work while too much abandoned work waits on a frozen database."""
    if backlog.full():
        raise DeadlineExceeded(seconds)


async def in_thread(work: Callable[[], T], seconds: float, cleanup: Callable[[T], None] | None = None) -> T:
    """Run blocking `work` in a worker thread for at most `seconds`; past that raise DeadlineExceeded and
    leave the thread to finish on its own, calling `cleanup` on its result (e.g. a rollback) when it does."""
    check_backlog(seconds)
    lock = threading.Lock()
    # Everything the caller and the thread both read or write changes under `lock`, so each outcome is
    # settled by exactly one of them: whoever sees the other's mark second does the follow-up.
    state: dict[str, object] = {"gave_up": False, "started": False, "finished": False, "counted": False}

    def run() -> T:
        with lock:
            if state["gave_up"]:  # the deadline passed while waiting for a thread: nobody wants the work
                raise _NotWanted
            state["started"] = True
        try:
            result = work()
        except BaseException:
            with lock:
                state["finished"] = True
                if state["counted"]:
                    backlog.add(-1)
            raise
        with lock:
            state["finished"] = True
            counted = state["counted"]
            if counted:
                backlog.add(-1)
            else:
                state["result"] = result
        if counted and cleanup is not None:
            cleanup(result)
        return result

    try:
        with anyio.fail_after(max(seconds, 0.001)):
            return await to_thread.run_sync(run, abandon_on_cancel=True)
    except TimeoutError:
        with lock:
            state["gave_up"] = True
            # Only work that started and has not finished is left behind: the thread takes the count off.
            state["counted"] = state["started"] and not state["finished"]
            if state["counted"]:
                backlog.add(1)
            leftover = state.get("result", _NOTHING)
        if leftover is not _NOTHING and cleanup is not None:
            # The thread finished just as the deadline passed: its result still needs the cleanup.
            threading.Thread(target=cleanup, args=(leftover,), daemon=True).start()
        raise DeadlineExceeded(seconds) from None


class _NotWanted(Exception):
    """Raised in a worker thread that starts after its caller gave up; nobody receives it."""


_NOTHING = object()
