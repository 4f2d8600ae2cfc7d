"""Request guard (ASGI middleware): body size and time limits, a bound on each request's database
work, and Idempotency-Key replay for POST, PUT and DELETE requests.

Every request's work is bounded (`api.deadlines`): past the bound it answers 503 with Retry-After. The
work left behind finishes when the database answers again: a POST (PUT, DELETE) with an Idempotency-Key is
then rolled back whole (see below), so its retry runs for real; a POST without one runs in its route's own
transactions and may still be applied, so its 503 says so and asks for a key (the README says why POSTs
without a key are not wrapped in one transaction too).

Same key and same request (method, path, query and JSON body, compared canonically): the first
response is replayed, with `Idempotent-Replayed: true`. Same key, different request: 409. Keys are per
API key: two callers never collide. The key is authenticated before anything is replayed: a revoked
key gets 401, not a stored answer.

A POST with a key runs in ONE write transaction (`service.idempotency`): the key's record is
inserted first, the route's writes nest in it as savepoints, the response is stored in it, and it
commits before the response is sent. Any failure (a 5xx, 401 or 403 answer, a timeout, a lost
database) rolls all of it back, so a retry runs for real; once committed, the key replays. The key's
outcome therefore cannot disagree with the work. A concurrent retry waits on the record's lock (the
lock timeout) and then replays, or answers 409 with Retry-After if the first is still running.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Awaitable

import anyio
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deadlines import DeadlineExceeded, backlog, check_backlog, in_thread
from api.limits import BODY_TIMEOUT, REQUEST_TIMEOUT
from api.problems import problem_response
from api.security import presented_key, remember_caller
from service.apikeys import authenticate
from service import idempotency

MAX_KEY_LENGTH = 255
WRITES = frozenset({"POST", "PUT", "DELETE"})  # the methods an Idempotency-Key makes safe to retry


class _TooLarge(Exception):
    pass


class RequestGuard:
    """Refuses oversized or slow bodies, bounds every request's database work, and makes POSTs with an
    Idempotency-Key safe to retry."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, request_seconds: float = REQUEST_TIMEOUT,
                 body_seconds: float = BODY_TIMEOUT):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.request_seconds = request_seconds
        self.body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if "content-length" in headers or "transfer-encoding" in headers:
            try:
                with anyio.fail_after(self.body_seconds):
                    body = await self._read_body(headers, receive)
            except _TooLarge:
                await problem_response(413, "body-too-large", f"the request body is over {self.max_body_bytes:,} "
                                       "bytes; send fewer events per request (at most 1,000)",
                                       scope["path"])(scope, receive, send)
                return
            except TimeoutError:
                await problem_response(408, "body-timeout", f"the request body did not arrive within "
                                       f"{self.body_seconds:g} s; send it at once", scope["path"],
                                       {"Connection": "close"})(scope, receive, send)
                return
            replay = _replayer(body, receive)
        else:  # no body (a GET): nothing to bound or read, the app reads the connection's own empty one
            body, replay = b"", receive
        deadline = _now() + self.request_seconds
        key = headers.get("idempotency-key") if scope["method"] in WRITES else None
        credential = presented_key(headers.get("authorization"), headers.get("x-api-key")) if key is not None else None
        keyed = credential is not None
        try:
            check_backlog(self.request_seconds)
        except DeadlineExceeded as exc:
            await _timed_out(scope, receive, send, exc, "nothing was applied; retry shortly")
            return
        try:
            if not keyed:
                tracked = _Tracked(send)
                await _bounded(self.app(scope, replay, tracked), tracked, deadline, self.request_seconds)
                return
            if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
                await problem_response(400, "bad-idempotency-key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} "
                                       "printable characters, e.g. a UUID", scope["path"])(scope, receive, send)
                return
            await self._idempotent(scope, replay, send, credential, key, request_hash(scope, body), deadline)
        except DeadlineExceeded as exc:
            if keyed:
                advice = "nothing was applied; retry shortly with the same Idempotency-Key"
            elif scope["method"] in WRITES:
                advice = ("the request may still be applied once the database answers; check its effect (the "
                          "ledger, the quote) before sending it again, and send POSTs with an Idempotency-Key: "
                          "those are safe to retry")
            else:
                advice = "retry shortly"
            await _timed_out(scope, receive, send, exc, advice)

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes:
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _TooLarge
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _idempotent(self, scope: Scope, receive: Receive, send: Send, credential: str, key: str,
                          request_hash: str, deadline: float) -> None:
        state = scope["app"].state
        engine = state.engine

        def left() -> float:
            return deadline - _now()

        try:
            keys = state.keys
            caller = keys.get(credential) or await in_thread(lambda: authenticate(engine, credential, keys), left())
            if caller is None:  # the route answers 401; nothing is stored or replayed for an unknown key
                tracked = _Tracked(send)
                await _bounded(self.app(scope, receive, tracked), tracked, deadline, self.request_seconds)
                return
            remember_caller(scope, caller)
            request, claim = await in_thread(
                lambda: idempotency.begin(engine, caller.key_id, key, request_hash, state.clock()), left(),
                cleanup=_release)
        except (DBAPIError, PoolTimeoutError):
            await _database_unavailable(scope, receive, send)
            return
        if request is None:
            if claim.outcome == idempotency.REPLAY:
                headers = {"Idempotent-Replayed": "true", "content-type": claim.content_type or "application/json"}
                await _send_stored(send, claim.status_code, headers, (claim.body or "").encode())
            else:
                await _refuse(scope, receive, send, claim.outcome, key)
            return
        await self._run_and_record(scope, receive, send, request, deadline)

    async def _run_and_record(self, scope: Scope, receive: Receive, send: Send, request: idempotency.KeyedRequest,
                              deadline: float) -> None:
        """Run the route inside the request transaction; commit its work with the response, then send it."""
        buffered = _Buffered()
        with request.ambient():  # the route's task (and its worker threads) copy this context
            task = asyncio.ensure_future(self.app(scope, receive, buffered))
        try:
            finished = await _wait(task, deadline)
        except BaseException:
            await _quietly(request.rollback, deadline - _now())
            raise
        if not finished:
            _abandon(task, request.rollback)
            raise DeadlineExceeded(self.request_seconds)
        if buffered.status < 500 and buffered.status not in (401, 403):
            body = buffered.body.decode("utf-8", errors="replace")
            try:
                await in_thread(lambda: request.complete(buffered.status, buffered.content_type, body),
                                deadline - _now())
            except (DBAPIError, PoolTimeoutError):
                await _database_unavailable(scope, receive, send)
                return
        else:
            await _quietly(request.rollback, deadline - _now())
        for message in buffered.messages:
            await send(message)


class _Tracked:
    """Forwards a response as it is sent, remembering whether it started; drops it once abandoned."""

    def __init__(self, send: Send):
        self.send, self.started, self.dropped = send, False, False

    async def __call__(self, message: Message) -> None:
        if self.dropped:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class _Buffered:
    """Keeps a response until its work is committed."""

    def __init__(self) -> None:
        self.status, self.content_type, self.messages, self.parts = 500, None, [], []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.content_type = Headers(raw=message["headers"]).get("content-type")
        elif message["type"] == "http.response.body":
            self.parts.append(message.get("body", b""))
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)


async def _bounded(work: Awaitable[None], tracked: _Tracked, deadline: float, seconds: float) -> None:
    """Run the app for a request, answering 503 (DeadlineExceeded) if it has not started its response by
    the deadline; the app is then left to finish in the background, its response dropped."""
    task = asyncio.ensure_future(work)
    if await _wait(task, deadline):
        return
    if tracked.started:  # the answer is on its way: let it finish
        await task
        return
    tracked.dropped = True
    _abandon(task, None)
    raise DeadlineExceeded(seconds)


async def _wait(task: asyncio.Future, deadline: float) -> bool:
    """Wait for `task` until `deadline`; True if it finished (its exception, if any, is raised)."""
    done, _ = await asyncio.wait({task}, timeout=max(deadline - _now(), 0))
    if done:
        task.result()
        return True
    return False


_PENDING: set[asyncio.Future] = set()  # abandoned requests, kept referenced until they finish


def _abandon(task: asyncio.Future, cleanup) -> None:  # noqa: ANN001 - a callable or None
    """Leave a timed-out request's task to finish on its own, then run `cleanup` (a rollback) in a thread."""
    backlog.add(1)
    _PENDING.add(task)

    def finished(done: asyncio.Future) -> None:
        _PENDING.discard(done)
        backlog.add(-1)
        if not done.cancelled():
            done.exception()  # retrieved, so asyncio does not log it as never retrieved
        if cleanup is not None:
            threading.Thread(target=cleanup, daemon=True).start()

    task.add_done_callback(finished)


def _release(begun: tuple[idempotency.KeyedRequest | None, idempotency.Claim]) -> None:
    """Roll back a claim made after its request gave up waiting for it."""
    if begun[0] is not None:
        begun[0].rollback()


async def _quietly(work, seconds: float) -> None:  # noqa: ANN001 - a blocking callable
    """Run cleanup (a rollback) in a thread without letting a slow or dead database hold the answer."""
    try:
        await in_thread(work, max(seconds, 0.5))
    except (DeadlineExceeded, DBAPIError, PoolTimeoutError):
        pass


async def _timed_out(scope: Scope, receive: Receive, send: Send, exc: DeadlineExceeded, advice: str) -> None:
    await problem_response(503, "database-timeout", f"{exc}; {advice}", scope["path"],
                           {"Retry-After": "2"})(scope, receive, send)


async def _database_unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    await problem_response(503, "database-unavailable", "the database did not answer; nothing was applied. Retry "
                           "shortly with the same Idempotency-Key", scope["path"],
                           {"Retry-After": "2"})(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, outcome: str, key: str) -> None:
    code, detail, headers = _REFUSALS[outcome]
    await problem_response(409, code, detail.format(key=key), scope["path"], headers)(scope, receive, send)


_REFUSALS = {
    idempotency.MISMATCH: ("idempotency-key-reused", "Idempotency-Key {key!r} was first used with a different "
                           "request; use a new key for a new request", None),
    idempotency.IN_USE: ("idempotency-key-in-use", "a request with Idempotency-Key {key!r} is still running; "
                               "retry in a moment to get its response", {"Retry-After": "1"}),
    # Only for records left by the previous version, which stored the response after committing the work.
    idempotency.UNKNOWN: ("idempotency-outcome-unknown", "the first request with Idempotency-Key {key!r} stopped "
                          "before recording its response, and it may have taken effect; check the resource (the "
                          "quote, the ledger) before sending it again with a new key", None),
}


def _now() -> float:
    """The event loop's clock, which deadlines are set on (anyio's `current_time`, without its look-up of the
    running async library on every call)."""
    return asyncio.get_running_loop().time()


def _replayer(body: bytes, receive_more: Receive) -> Receive:
    """Gives the app the body already read, then the connection's own messages: a file or streaming response
    listens for the client's disconnect while it sends, and must not be told of one that did not happen."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive_more()

    return receive


def request_hash(scope: Scope, body: bytes) -> str:
    """What makes two requests the same: method, path, query and the JSON body compared canonically."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except (ValueError, UnicodeDecodeError, RecursionError):
        canonical = body
    head = f"{scope['method']} {scope['path']}?{scope.get('query_string', b'').decode('latin-1')}\n".encode()
    return hashlib.sha256(head + canonical).hexdigest()


async def _send_stored(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

