"""The benefits query answered ahead of FastAPI's routing (ASGI middleware, inside the request guard).

Loan systems call it while pricing, and FastAPI's work around it (trying the routes in turn, its exception
and exit-stack middlewares, the request handler, the key dependency and four parameters solved one by one)
cost more CPU than the query itself. A request in the plain form is answered here by the route's own
endpoint: GET, with an API key, the query holding at most `product` and `amount` (each once), every value
valid by its declaration in `api.routes`. Any other request goes to FastAPI as before; so does one the
endpoint refuses or fails on (an unknown or revoked key, an unknown client, a database error), which FastAPI
runs again: its answers (401, 404, 422, 503, ...) stay the contract, an error costs two runs.
"""
from __future__ import annotations

from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from api.routes import Amount, ClientId, Product, get_benefits, router
from api.security import presented_key

ROUTE: APIRoute = next(route for route in router.routes if getattr(route, "endpoint", None) is get_benefits)


class _PlainForm(TypedDict, total=False):
    """The benefits query's parameters as loan systems send them (no `at`)."""

    client_id: ClientId
    product: Product
    amount: Amount


_PLAIN = TypeAdapter(_PlainForm)  # the route's own declarations, validated in one step
_QUERY = frozenset(_PlainForm.__annotations__) - {"client_id"}


class BenefitsHotPath:
    """Answers the benefits query in its plain form; hands every other request to `app`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not await self._answered(scope, receive, send):
            await self.app(scope, receive, send)

    async def _answered(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a request in the plain form; False for any other, and for one the endpoint refused or failed on."""
        found = ROUTE.path_regex.match(scope["path"]) if scope["method"] == "GET" else None
        if found is None or scope.get("root_path"):  # behind a prefix, FastAPI strips it first
            return False
        request = Request(scope, receive)
        arguments = _plain_form(request, found["client_id"])
        if arguments is None:
            return False
        try:
            response = await get_benefits(request, **arguments)
        except Exception:  # noqa: BLE001 - answered by FastAPI's handlers, which run it again
            return False
        scope["route"] = ROUTE  # the route template, for the request's metrics and log line
        await response(scope, receive, send)
        return True


def _plain_form(request: Request, client_id: str) -> dict | None:
    """`get_benefits`' arguments from a request in the plain form, or None for any other request."""
    key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    query = request.query_params
    if not key or not query.keys() <= _QUERY or len(query.multi_items()) != len(query):
        return None
    try:
        values = _PLAIN.validate_python({**query, "client_id": client_id})
    except ValidationError:
        return None
    return {"product": None, "amount": None, **values, "key": key, "at": None}
