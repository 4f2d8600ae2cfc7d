"""The OpenAPI document as a contract for generated clients: FastAPI's document, finished with what the
request guard and the middleware do around the routes (one declaration each, for every operation).

- every `/v1` operation needs an API key, sent either way `api.security.KEY_SCHEMES` names;
- every error answer is `application/problem+json` with the one `Problem` schema;
- `X-Request-ID` is a request parameter and a response header of every operation;
- `Idempotency-Key` is a header parameter of every POST, PUT and DELETE (the guard enforces its bounds), and their
  success answer may carry `Idempotent-Replayed`;
- `Retry-After` is documented where it is sent (409, 503);
- an optional body (a reversal's reason, a commit's loan id) is documented as one to leave out, not as one
  that may be `null` (which generated clients would send as a body of their own);
- the event envelope of `POST /v1/events` is the named schema `EventIn` (and `EventBatch`), generated from
  the model ingest validates each event with.
"""
from __future__ import annotations

from fastapi import FastAPI

from api.guard import MAX_KEY_LENGTH, WRITES
from api.problems import MEDIA_TYPE
from api.routes import MAX_EVENTS
from api.security import KEY_SCHEMES
from engine.events import EventEnvelope

REQUEST_ID = {"name": "X-Request-ID", "in": "header", "required": False,
              "description": "your id for this request (a UUID, say): echoed in the answer, the logs and problem "
                             "documents; one is made up when absent or unusable",
              "schema": {"type": "string"}}
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "makes a retry safe: the same key with the same request replays the first "
                                  "answer; with another request it is a 409. Keys belong to the API key that "
                                  "sent them",
                   "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}}
_REQUEST_ID_HEADER = {"description": "the request's id: the caller's X-Request-ID, or one made up",
                      "schema": {"type": "string"}}
_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
_REPLAYED = {"description": "`true` when this is the stored answer to an earlier request with the same "
                            "Idempotency-Key", "schema": {"type": "string", "enum": ["true"]}}
_SCHEMAS = "#/components/schemas/"
EVENTS_PATH = "/v1/events"
KEYED = "/v1/"  # the paths that need an API key
WRITE_METHODS = {method.lower() for method in WRITES}


def install(app: FastAPI) -> None:
    """Serve `app`'s OpenAPI document finished as described above (generated once, like FastAPI's own)."""
    generate = app.openapi
    finished: list[dict] = []  # the last document finished (FastAPI makes a new one only if the routes change)

    def openapi() -> dict:
        document = generate()
        if not finished or finished[0] is not document:
            finish(document)
            finished[:] = [document]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def finish(document: dict) -> None:
    """Complete a document FastAPI generated (in place)."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_event_schemas())
    components["securitySchemes"] = {scheme.scheme_name: scheme.model.model_dump(mode="json", by_alias=True,
                                                                                 exclude_none=True)
                                     for scheme in KEY_SCHEMES}
    for path, methods in document.get("paths", {}).items():
        for method, operation in methods.items():
            post = method in WRITE_METHODS  # each takes an Idempotency-Key (api.guard.WRITES)
            if path.startswith(KEYED):
                operation["security"] = [{scheme.scheme_name: []} for scheme in KEY_SCHEMES]
            operation["parameters"] = [*operation.get("parameters", []), REQUEST_ID,
                                       *([IDEMPOTENCY_KEY] if post else [])]
            if post and path == EVENTS_PATH:
                operation["requestBody"] = _events_body()
            elif "requestBody" in operation:
                _leave_out_optional(operation["requestBody"])
            for status, response in operation.get("responses", {}).items():
                _finish_response(int(status), response, post)


def _finish_response(status: int, response: dict, post: bool) -> None:
    headers = response.setdefault("headers", {})
    headers["X-Request-ID"] = _REQUEST_ID_HEADER
    if status >= 400:  # problems are served as application/problem+json, not as FastAPI's default
        content = response.get("content", {})
        if "application/json" in content:
            content[MEDIA_TYPE] = content.pop("application/json")
    if status in (409, 503):
        headers["Retry-After"] = _RETRY_AFTER
    if post and status < 300:
        headers["Idempotent-Replayed"] = _REPLAYED


def _leave_out_optional(body: dict) -> None:
    for content in body.get("content", {}).values():
        schema = content.get("schema", {})
        choices = [choice for choice in schema.get("anyOf", []) if choice != {"type": "null"}]
        if not body.get("required") and len(choices) == 1 < len(schema["anyOf"]):
            content["schema"] = choices[0]


def _event_schemas() -> dict[str, dict]:
    event = EventEnvelope.model_json_schema(ref_template=_SCHEMAS + "{model}")
    event.update(title="EventIn", description="one event as a source system sends it, as a line of `loyalty "
                 "ingest`: `data` holds the attributes its type declares in the rules (amounts as decimal strings)",
                 examples=[_EVENT_EXAMPLE])
    batch = {"title": "EventBatch", "description": f"1 to {MAX_EVENTS} events, answered item by item",
             "type": "array", "items": {"$ref": _SCHEMAS + "EventIn"}, "minItems": 1, "maxItems": MAX_EVENTS}
    return {"EventIn": event, "EventBatch": batch}


def _events_body() -> dict:
    return {"required": True, "description": "one event, or a batch: each item is applied, a duplicate or rejected "
                                             "on its own (a bad item never refuses the others)",
            "content": {"application/json": {"schema": {"anyOf": [{"$ref": _SCHEMAS + "EventIn"},
                                                                 {"$ref": _SCHEMAS + "EventBatch"}]}}}}


_EVENT_EXAMPLE = {"id": "evt-1", "client_id": "C-1001", "type": "loan.drawn", "occurred_at": "2026-03-01T10:00:00Z",
                  "data": {"loan_id": "L-1", "product": "working_capital", "amount": "30000000.00", "currency": "CNY",
                           "term_months": 12}}
