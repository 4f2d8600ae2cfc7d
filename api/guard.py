"""Request guard (ASGI middleware): body size limit, and Idempotency-Key replay for POST requests.

Same key and same request (method, path, query and JSON body, compared canonically): the first
response is replayed, with `Idempotent-Replayed: true`. Same key, different request: 409. A retry
while the first is still running: 409 with Retry-After. Responses of 5xx, 401 and 403 are not stored,
so a retry after fixing the cause runs for real. Keys are per API key: two callers never collide.
"""
from __future__ import annotations

import hashlib
import json

from anyio import to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response
from api.security import presented_key
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
        await self._idempotent(scope, replay, send, credential, key, _request_hash(scope, body))

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
        caller = hashlib.sha256(credential.encode()).hexdigest()
        claim = await to_thread.run_sync(idempotency.claim, state.engine, caller, key, request_hash, state.clock())
        if claim.outcome == idempotency.REPLAY:
            headers = {"Idempotent-Replayed": "true", "content-type": claim.content_type or "application/json"}
            await _send_stored(send, claim.status_code, headers, (claim.body or "").encode())
            return
        if claim.outcome == idempotency.MISMATCH:
            await problem_response(409, "idempotency-key-reused", f"Idempotency-Key {key!r} was first used with a "
                                   "different request; use a new key for a new request", scope["path"])(scope, receive, send)
            return
        if claim.outcome == idempotency.IN_PROGRESS:
            await problem_response(409, "idempotency-key-in-use", f"a request with Idempotency-Key {key!r} is still "
                                   "running; retry in a moment to get its response", scope["path"],
                                   headers={"Retry-After": "1"})(scope, receive, send)
            return
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
                await to_thread.run_sync(idempotency.complete, state.engine, caller, key, status, content_type, body)
            else:
                await to_thread.run_sync(idempotency.release, state.engine, caller, key)


def _replayer(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _request_hash(scope: Scope, body: bytes) -> str:
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except (ValueError, UnicodeDecodeError):
        canonical = body
    head = f"{scope['method']} {scope['path']}?{scope.get('query_string', b'').decode('latin-1')}\n".encode()
    return hashlib.sha256(head + canonical).hexdigest()


async def _send_stored(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

