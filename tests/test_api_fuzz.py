"""schemathesis generates requests from the OpenAPI document, valid and invalid ones, for every operation
on SQLite and PostgreSQL: none may end in a server error, every answer must match its documented schema,
and every error must be a problem document."""
from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.api_support import borrower_events, make_api

EXAMPLES = int(os.environ.get("LOYALTY_FUZZ_EXAMPLES", "60"))  # per operation and mode; raise it for a deep run


def test_no_generated_request_makes_the_server_fail(engine, programmes):
    api = make_api(engine, programmes)
    api.client.post("/v1/events", json=borrower_events())
    auth = {"Authorization": f"Bearer {api.keys['admin']}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        for mode in GenerationMode:
            @given(case=operation.as_strategy(mode, path_parameters={"client_id": "C-1"}
                                              if "{client_id}" in operation.path else None))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call(headers=auth)
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
                if response.status_code >= 400:
                    assert response.headers["content-type"] == ["application/problem+json"], response.text
                    assert {"type", "title", "status", "detail"} <= set(response.json())

            try:
                check()
            except Unsatisfiable:
                # An operation with no parameters and no body has no invalid form to generate.
                assert mode == GenerationMode.NEGATIVE, operation.label
