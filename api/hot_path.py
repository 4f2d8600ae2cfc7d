"""The two requests the API answers most, answered ahead of FastAPI's routing (ASGI middleware, inside the
request guard): the benefits query loan systems send while pricing, and /healthz that load balancers poll.

FastAPI's work around a request (trying the routes in turn, its exception and exit-stack middlewares, the
request handler, the parameters solved one by one, the answer validated again) cost more CPU than either
answer itself. So each is answered here by its route's own endpoint:
- GET /healthz, as it is;
- GET /v1/clients/{client_id}/benefits in the plain form: with an API key, the query holding at most
  `product` and `amount` (each once), every value valid by its declaration in `api.routes`.
Any other request goes to FastAPI as before; so does one the benefits endpoint refuses or fails on (an
unknown or revoked key, an unknown client, a database error), which FastAPI runs again: its answers (401,
404, 422, 503, ...) stay the contract, an error costs two runs.
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from api.operations import healthz, operations
from api.routes import Amount, ClientId, Product, get_benefits, router
from api.security import presented_key


def _route(routes: list, endpoint: object) -> APIRoute:
    return next(route for route in routes if getattr(route, "endpoint", None) is endpoint)


BENEFITS, HEALTH = _route(router.routes, get_benefits), _route(operations.routes, healthz)


class _PlainForm(TypedDict, total=False):
    """The benefits query's parameters as loan systems send them (no `at`)."""

    client_id: ClientId
    product: Product
    amount: Amount


_PLAIN = TypeAdapter(_PlainForm)  # the route's own declarations, validated in one step
_QUERY = frozenset(_PlainForm.__annotations__) - {"client_id"}


class HotPaths:
    """Answers /healthz and the benefits query in its plain form; hands every other request to `app`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not await self._answered(scope, receive, send):
            await self.app(scope, receive, send)

    async def _answered(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a hot request; False for any other, and for one the benefits endpoint refused or failed on."""
        if scope["method"] != "GET" or scope.get("root_path"):  # behind a prefix, FastAPI strips it first
            return False
        if scope["path"] == HEALTH.path:
            route, response = HEALTH, await healthz(Request(scope, receive))
        elif found := BENEFITS.path_regex.match(scope["path"]):
            route, response = BENEFITS, await _benefits(Request(scope, receive), found["client_id"])
        else:
            return False
        if response is None:
            return False
        scope["route"] = route  # the route template, for the request's metrics and log line
        await response(scope, receive, send)
        return True


async def _benefits(request: Request, client_id: str) -> Response | None:
    """The benefits answer to a request in the plain form; None for any other, or one refused or failed."""
    key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    pairs = parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True)  # as Starlette does
    query = dict(pairs)
    if not key or not query.keys() <= _QUERY or len(query) != len(pairs):
        return None
    try:
        values = _PLAIN.validate_python({**query, "client_id": client_id})
    except ValidationError:
        return None
    try:
        return await get_benefits(request, **{"product": None, "amount": None, **values, "key": key, "at": None})
    except Exception:  # noqa: BLE001 - answered by FastAPI's handlers, which run it again
        return None
