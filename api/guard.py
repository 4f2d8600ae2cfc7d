"""Request guard (ASGI middleware): body size limit, and Idempotency-Key replay for POST requests.

Same key and same request (method, path, query and JSON body, compared canonically): the first
response is replayed, with `Idempotent-Replayed: true`. Same key, different request: 409. A retry
while the first is still running: 409 with Retry-After. Responses of 5xx, 401 and 403 are not stored,
so a retry after fixing the cause runs for real. Keys are per API key: two callers never collide.
The key is authenticated before anything is replayed: a revoked key gets 401, not a stored answer.
A first request that never recorded its response (its process died) leaves its key answering 409
"outcome unknown" rather than running again, since its effect may already be committed.
"""
from __future__ import annotations

import hashlib
import json

from anyio import to_thread
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response
from api.security import presented_key
from service.apikeys import authenticate
from storage import idempotency

MAX_KEY_LENGTH = 255


class _TooLarge(Exception):
    pass


class RequestGuard:
    """Refuses oversized bodies with 413 and makes POSTs with an Idempotency-Key safe to retry."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            body = await self._read_body(headers, receive)
        except _TooLarge:
            await problem_response(413, "body-too-large", f"the request body is over {self.max_body_bytes:,} bytes; "
                                   "send fewer events per request (at most 1,000)", scope["path"])(scope, receive, send)
            return
        replay = _replayer(body)
        key = headers.get("idempotency-key")
        credential = presented_key(headers.get("authorization"), headers.get("x-api-key"))
        if scope["method"] != "POST" or key is None or credential is None:
            await self.app(scope, replay, send)
            return
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
            await problem_response(400, "bad-idempotency-key", f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} "
                                   "printable characters, e.g. a UUID", scope["path"])(scope, receive, send)
            return
        await self._idempotent(scope, replay, send, credential, key, request_hash(scope, body))

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
                          request_hash: str) -> None:
        state = scope["app"].state
        try:
            caller = await to_thread.run_sync(authenticate, state.engine, credential)
            if caller is None:  # the route answers 401; nothing is stored or replayed for an unknown key
                await self.app(scope, receive, send)
                return
            claim = await to_thread.run_sync(idempotency.claim, state.engine, caller.key_id, key, request_hash,
                                             state.clock())
        except OperationalError:
            await problem_response(503, "database-unavailable", "the database did not answer; retry shortly with "
                                   "the same Idempotency-Key", scope["path"], {"Retry-After": "2"})(scope, receive, send)
            return
        refusal = _REFUSALS.get(claim.outcome)
        if refusal:
            code, detail, headers = refusal
            await problem_response(409, code, detail.format(key=key), scope["path"], headers)(scope, receive, send)
            return
        if claim.outcome == idempotency.REPLAY:
            headers = {"Idempotent-Replayed": "true", "content-type": claim.content_type or "application/json"}
            await _send_stored(send, claim.status_code, headers, (claim.body or "").encode())
            return
        await self._run_and_record(scope, receive, send, caller.key_id, key)

    async def _run_and_record(self, scope: Scope, receive: Receive, send: Send, caller: str, key: str) -> None:
        engine = scope["app"].state.engine
        status, content_type, parts = 500, None, []

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = Headers(raw=message["headers"]).get("content-type")
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if status < 500 and status not in (401, 403):
                body = b"".join(parts).decode("utf-8", errors="replace")
                await to_thread.run_sync(idempotency.complete, engine, caller, key, status, content_type, body)
            else:
                await to_thread.run_sync(idempotency.release, engine, caller, key)


_REFUSALS = {
    idempotency.MISMATCH: ("idempotency-key-reused", "Idempotency-Key {key!r} was first used with a different "
                           "request; use a new key for a new request", None),
    idempotency.IN_PROGRESS: ("idempotency-key-in-use", "a request with Idempotency-Key {key!r} is still running; "
                              "retry in a moment to get its response", {"Retry-After": "1"}),
    idempotency.UNKNOWN: ("idempotency-outcome-unknown", "the first request with Idempotency-Key {key!r} stopped "
                          "before recording its response, and it may have taken effect; check the resource (the "
                          "quote, the ledger) before sending it again with a new key", None),
}


def _replayer(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

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

