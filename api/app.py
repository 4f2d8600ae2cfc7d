"""The FastAPI application: routes, the request guard, errors as problem documents, request observation,
health, readiness, metrics and the offline API docs."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from api.admin import admin
from api.guard import RequestGuard
from api.hot_path import HotPaths
from api.limits import BODY_TIMEOUT, REQUEST_TIMEOUT
from api.observe import Observe
from api.openapi import install as install_contract
from api.operations import operations
from api.problems import ProblemError, problem_response
from api.routes import router
from api.webhooks import install as install_webhooks
from engine.programme import ProgrammeSet
from service import telemetry
from service.apikeys import KeyCache
from service.clock import Clock, utc_now
from service.errors import ConflictError, InputError, NotFoundError
from service.quotes import DEFAULT_HOLD
from service.version import package_version

MAX_BODY_BYTES = 2 * 1024 * 1024
log = logging.getLogger("loyalty.api")


class LoyaltyAPI(FastAPI):
    """FastAPI with request observation (`api.observe`) outside everything else, Starlette's error middleware
    included, so that 500 answers carry the request id and are logged and counted like any other."""

    observe = True

    def build_middleware_stack(self) -> ASGIApp:
        """The usual stack, wrapped in the observation middleware."""
        stack = super().build_middleware_stack()
        return Observe(stack) if self.observe else stack


def create_app(engine: Engine, programmes: ProgrammeSet, clock: Clock = utc_now,
               hold: timedelta = DEFAULT_HOLD, max_body_bytes: int = MAX_BODY_BYTES,
               request_seconds: float = REQUEST_TIMEOUT, body_seconds: float = BODY_TIMEOUT,
               observe: bool = True, key_cache_seconds: float = 0.0) -> FastAPI:
    """The API over `engine` and `programmes`; `hold` is how long a quote reserves its entitlements,
    `request_seconds` bounds each request's database work and `body_seconds` the arrival of its body;
    `observe=False` leaves out request ids, request logs and request metrics (for the benchmark);
    `key_cache_seconds` is how long a verified API key is admitted without reading it again (0: every
    request reads its key; `loyalty serve` keeps them `api.limits.KEY_CACHE_SECONDS`)."""
    app = LoyaltyAPI(title="Loyalty engine benefits API", version=package_version(),
                     description="Benefits, quotes with holds, redemptions, events and ledgers for loan systems. "
                                 "Authenticate with an API key from `loyalty apikey create`. Every POST accepts an "
                                 "`Idempotency-Key` header. Errors are `application/problem+json` (RFC 9457). "
                                 "Every answer carries an `X-Request-ID` (the caller's, if it sent a valid one).",
                     docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.observe = observe
    app.state.engine, app.state.programmes, app.state.clock, app.state.hold = engine, programmes, clock, hold
    app.state.keys = KeyCache(key_cache_seconds)
    app.state.rules_status = None  # set by `loyalty serve` when it watches the rules for new versions
    app.include_router(router)
    app.include_router(admin)
    app.include_router(operations)
    install_webhooks(app)
    install_contract(app)
    app.add_middleware(HotPaths)  # inside the guard: its work is bounded like any other
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes, request_seconds=request_seconds,
                       body_seconds=body_seconds)
    _add_error_handlers(app)
    _add_docs(app)
    telemetry.watch_pool(engine)
    return app


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    telemetry.process_exited()


_DOCS_ASSETS = "/docs-assets"


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts and styles served from the installed package
    `fastapi-offline`, so the pages work with no internet."""
    app.mount(_DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that serves the API under a prefix
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}{_DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{_DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{_DOCS_ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{_DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{_DOCS_ASSETS}/favicon.png", with_google_fonts=False)


def _add_error_handlers(app: FastAPI) -> None:
    def path(request: Request) -> str:
        return request.url.path

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, path(request), exc.headers, exc.facts)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return problem_response(404, "not-found", str(exc), path(request))

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        return problem_response(422, "invalid-input", str(exc), path(request))

    @app.exception_handler(ConflictError)
    async def _conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return problem_response(409, exc.code, str(exc), path(request), facts=exc.facts)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
                  for error in exc.errors()]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(422, "invalid-request", f"the request does not fit the API: {summary}",
                                path(request), facts={"errors": errors})

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "see the API documentation at /docs"
        if exc.status_code == 404:
            detail = f"no endpoint {request.method} {request.url.path}; the API is described at /docs"
        return problem_response(exc.status_code, "http-error", detail, path(request), exc.headers)

    @app.exception_handler(PoolTimeoutError)
    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        log.error("database error on %s %s: %s", request.method, request.url.path, reason[0] if reason else "")
        return problem_response(503, "database-unavailable", "the database did not answer; retry shortly "
                                "(POSTs with the same Idempotency-Key are safe to retry)", path(request),
                                {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal-error", "the server failed on this request; it is logged. "
                                "Retrying with the same Idempotency-Key is safe", path(request))
