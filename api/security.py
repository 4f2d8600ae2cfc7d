"""API-key authentication and scopes: 401 without a valid key, 403 without the scope."""
from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.types import Scope

from api.observe import note_api_key
from api.problems import ProblemError
from api.reads import run_read
from service.apikeys import Caller, KeyCache, authenticate

# The two ways to send a key, as the OpenAPI document declares them on every `/v1` operation (`api.openapi`).
# Requests are read by `credential`, not by these classes: solving them as dependencies of every request cost
# more CPU than the rest of the key check.
KEY_SCHEMES = (HTTPBearer(auto_error=False, description="`Authorization: Bearer lk_…` (from `loyalty apikey create`)"),
               APIKeyHeader(name="X-API-Key", auto_error=False, description="or `X-API-Key: lk_…`"))
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="loyalty"'}
_CALLER = "loyalty_caller"  # where a request's scope state keeps its authenticated caller


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request carries in `Authorization: Bearer …` or `X-API-Key`."""
    if api_key:
        return api_key.strip()
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def credential(request: Request) -> str:
    """The API key the request carries (read as the idempotency guard reads it); 401 if it carries none."""
    headers = request.headers
    key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
    if not key:
        raise ProblemError(401, "unauthenticated", "this endpoint needs an API key: send `Authorization: Bearer "
                           "<key>` or `X-API-Key: <key>`; `loyalty apikey create` makes one", _CHALLENGE)
    return key


def authorize(caller: Caller | None, scope: str) -> Caller:
    """The caller if it may use `scope`; 401 for no caller (unknown or revoked key), 403 without the scope."""
    if caller is None:
        raise ProblemError(401, "invalid-key", "the API key is unknown, mistyped or revoked; `loyalty apikey "
                           "list` shows the keys in force", _CHALLENGE)
    note_api_key(caller.key_id)  # for the request's log line
    if not caller.may(scope):
        raise ProblemError(403, "missing-scope", f"API key {caller.key_id} ({caller.name}) lacks the scope "
                           f"{scope!r} this endpoint needs; it has: {', '.join(sorted(caller.scopes))}",
                           required_scope=scope)
    return caller


def remember_caller(scope: Scope, caller: Caller) -> None:
    """Keep the caller the request guard authenticated, so the route does not read the key again (a
    keyed POST already holds a pooled connection for its transaction: a second one could wait on the pool)."""
    scope.setdefault("state", {})[_CALLER] = caller


def require(scope: str) -> Callable:
    """A dependency admitting callers whose key has `scope`."""

    async def check(request: Request, key: str = Depends(credential)) -> Caller:
        keys: KeyCache = request.app.state.keys
        known = request.scope.get("state", {}).get(_CALLER) or keys.get(key)
        if known is not None:  # read from the same headers by the guard, or verified lately
            return authorize(known, scope)
        engine = request.app.state.engine
        return await run_read(engine, lambda: authorize(authenticate(engine, key, keys), scope))

    return check
