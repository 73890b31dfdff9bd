"""The OpenAPI document: generated from the models, committed under schemas/ (drift test), served
at /openapi.json as committed; and schemathesis, fuzzing every operation of the served document
against the live server, finds no 5xx and no answer outside the document (status, headers, schema)."""

from __future__ import annotations

import httpx
import orjson
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from smartico_stream.sources.rest.app import openapi_document
from tests.rest.conftest import BRAND, RestEnv, bearer
from tests.support.common import REPO

COMMITTED = REPO / "schemas" / "rest-openapi.json"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def test_committed_openapi_document_matches_the_models():
    assert COMMITTED.read_bytes() == openapi_document(), (
        "schemas/rest-openapi.json is stale; regenerate it: "
        "python -m smartico_stream.sources.rest.app > schemas/rest-openapi.json"
    )


def test_served_document_is_the_committed_one_and_fuzzing_finds_no_violation(rest_env: RestEnv):
    token = rest_env.make_key("fuzz", BRAND)
    service = rest_env.start()
    served = httpx.get(service.url + "/openapi.json")
    assert served.status_code == 200 and served.json() == orjson.loads(COMMITTED.read_bytes())
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {"POST /v1/events", "POST /v1/batch", "GET /v1/health"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=service.url, headers=bearer(token), checks=CHECKS, timeout=10)

        fuzz()
    assert service.metric("smartico_stream_rest_requests_total") >= 100  # the fuzzing did reach the server
    assert service.metric("smartico_stream_rest_requests_total", {"status": "500"}) == 0
