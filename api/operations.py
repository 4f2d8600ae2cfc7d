"""Liveness, readiness and metrics: no key needed (operators restrict /metrics at the network)."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import State

from api.deadlines import HEALTH_TIMEOUT, DeadlineExceeded, in_thread
from api.problems import problem_response, problem_responses
from api.routes import as_sent
from service import telemetry
from service.readiness import Health, NotReady, Readiness, health, readiness
from service.rules_watcher import ReloadStatus

operations = APIRouter(tags=["operations"])


def _rules_status(state: State) -> ReloadStatus | None:
    """What the rules watcher serves, when `loyalty serve` set one up."""
    return state.rules_status() if state.rules_status else None


@operations.get("/healthz", operation_id="getHealth", response_model=Health)
async def healthz(request: Request) -> Response:
    """Liveness: the process answers (no database is consulted); the release, the programme version in force
    and the rules served."""
    state = request.app.state
    return as_sent(health(state.engine, state.programmes.for_moment(state.clock()), _rules_status(state)))


@operations.get("/readyz", operation_id="getReadiness", response_model=Readiness, response_model_exclude_none=True,
                responses=problem_responses(503))
async def readyz(request: Request) -> Readiness | JSONResponse:
    """Readiness: 503 while the database does not answer (within 2 s) or lacks this release's schema;
    `degraded` (200, with the reason) while a changed rule file is refused and the last good rules are served."""
    state = request.app.state
    try:
        return await in_thread(lambda: readiness(state.engine, _rules_status(state)), HEALTH_TIMEOUT)
    except (NotReady, DeadlineExceeded) as exc:  # each says what is missing, e.g. "the database did not answer"
        return problem_response(503, "not-ready", str(exc), request.url.path, {"Retry-After": "2"})


@operations.get("/metrics", operation_id="getMetrics", response_class=Response,
                responses={200: {"description": "Prometheus text format", "content": {"text/plain": {
                    "schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    """Metrics in the Prometheus text format (requests, events, quotes, redemptions, reviews, rules, pool)."""
    state = request.app.state
    programmes = state.programmes
    programme = programmes.for_moment(state.clock())
    telemetry.show_programme(programme.id, [p.version for p in programmes.versions], programme.version)
    body, content_type = telemetry.exposition()
    return Response(body, media_type=content_type)
