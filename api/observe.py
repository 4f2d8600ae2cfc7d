"""Request observation (pure ASGI middleware, outermost): the request id, one log line and the metrics of
every request, whatever answered it (a route, the request guard, an error handler).

`X-Request-ID` is the caller's when it is 1 to 128 characters of `[A-Za-z0-9._:-]`, else a new uuid4 hex (a
hostile value is replaced, never echoed); it is current (`api.request_context`) while the request is
served, so every log line and problem document of the request carries it, and it is on every answer.
Metrics and the log line name the route template (`/v1/clients/{client_id}/benefits`), never the raw path.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.request_context import reset_request_id, set_request_id
from service import telemetry

HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a path no route serves: raw paths would make unbounded labels
log = logging.getLogger("loyalty.access")

# The API key id of the request being served, noted where the key is authenticated (maybe in a worker
# thread, which runs in a copy of the context: hence a mutable box set here, not a value set there).
_CALLER: ContextVar[list[str] | None] = ContextVar("loyalty_api_key_id", default=None)


def note_api_key(key_id: str) -> None:
    """Record the authenticated API key (its public id) of the request being served, for its log line."""
    box = _CALLER.get()
    if box is not None:
        box[:] = [key_id]


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-ID if it is a plausible one, else a new one."""
    for name, value in scope["headers"]:
        if name == HEADER:
            if _VALID_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


def route_template(scope: Scope, root_path: str) -> str:
    """The path template of the route serving the request; for an answer given before routing, or by a mount
    (static files), the route is found again, with the `root_path` the request arrived with."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
        template = getattr(_matching(routes, {**scope, "root_path": root_path}), "path", None)
    return template or UNMATCHED


def _matching(routes: list, scope: Scope) -> object | None:
    """The route among `routes` (and the routers included there) that fully matches the request."""
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's wrapper of an included APIRouter
        found = _matching(included.routes, scope) if included is not None else (
            route if route.matches(scope)[0] == Match.FULL else None)
        if found is not None:
            return found
    return None


class Observe:
    """Sets the request id, answers with it, logs each request once and counts it in the metrics."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, root_path = time.perf_counter(), scope.get("root_path", "")
        request_id = request_id_of(scope)
        echoed = (HEADER, request_id.encode("ascii"))
        status, started_answer = 500, False  # if the app fails before answering, the server answers 500
        caller: list[str] = []

        async def answer(message: Message) -> None:
            nonlocal status, started_answer
            if message["type"] == "http.response.start":
                status, started_answer = message["status"], True
                message["headers"] = [*(h for h in message.get("headers", ()) if h[0].lower() != HEADER), echoed]
            await send(message)

        token, caller_token = set_request_id(request_id), _CALLER.set(caller)
        try:
            await self.app(scope, receive, answer)
        except Exception:
            if not started_answer or status != 500:
                raise
            # The app's handler answered 500 and logged the error with this request's id; Starlette re-raises it
            # for the server, which would log it a second time without the id.
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = route_template(scope, root_path)
            telemetry.observe_request(method, route, status, seconds)
            if log.isEnabledFor(logging.INFO):  # `serve --log-level warning` drops the line: do not build it
                log.info("%s %s %d %.1f ms", method, route, status, seconds * 1000,
                         extra={"method": method, "route": route, "status": status,
                                "duration_ms": round(seconds * 1000, 2), "request_id": request_id,
                                "api_key_id": caller[0] if caller else None})
            _CALLER.reset(caller_token)
            reset_request_id(token)
