"""The FastAPI application: routes, the request guard, and errors as problem documents."""
from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException

from api.deadlines import HEALTH_TIMEOUT, DeadlineExceeded, in_thread
from api.guard import RequestGuard
from api.limits import BODY_TIMEOUT, REQUEST_TIMEOUT
from api.openapi import install as install_contract
from api.problems import ProblemError, problem_response
from api.routes import router
from engine.programme import ProgrammeSet
from service.clock import Clock, utc_now
from service.version import package_version
from service.errors import ConflictError, InputError, NotFoundError
from service.quotes import DEFAULT_HOLD

MAX_BODY_BYTES = 2 * 1024 * 1024
log = logging.getLogger("loyalty.api")


def create_app(engine: Engine, programmes: ProgrammeSet, clock: Clock = utc_now,
               hold: timedelta = DEFAULT_HOLD, max_body_bytes: int = MAX_BODY_BYTES,
               request_seconds: float = REQUEST_TIMEOUT, body_seconds: float = BODY_TIMEOUT) -> FastAPI:
    """The API over `engine` and `programmes`; `hold` is how long a quote reserves its entitlements,
    `request_seconds` bounds each request's database work and `body_seconds` the arrival of its body."""
    app = FastAPI(title="Loyalty engine benefits API", version=package_version(),
                  description="Benefits, quotes with holds, redemptions, events and ledgers for loan systems. "
                              "Authenticate with an API key from `loyalty apikey create`. Every POST accepts an "
                              "`Idempotency-Key` header. Errors are `application/problem+json` (RFC 9457).")
    app.state.engine, app.state.programmes, app.state.clock, app.state.hold = engine, programmes, clock, hold
    app.state.rules_status = None  # set by `loyalty serve` when it watches the rules for new versions
    app.include_router(router)
    install_contract(app)
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes, request_seconds=request_seconds,
                       body_seconds=body_seconds)
    _add_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        """Liveness and database reachability (no key needed); answers within 2 s even if the database does not."""
        programme = app.state.programmes.for_moment(clock())

        def ping() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await in_thread(ping, HEALTH_TIMEOUT)
        except (OperationalError, PoolTimeoutError):
            return problem_response(503, "database-unavailable", "the database does not answer", None,
                                    {"Retry-After": "2"})
        except DeadlineExceeded as exc:
            return problem_response(503, "database-unavailable", f"the database does not answer: {exc}", None,
                                    {"Retry-After": "2"})
        rules = app.state.rules_status() if app.state.rules_status else None
        return JSONResponse({"status": "ok", "version": package_version(), "database": engine.dialect.name,
                             "programme": {"id": programme.id, "version": programme.version},
                             "rules": rules.as_dict() if rules else None})

    return app


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
