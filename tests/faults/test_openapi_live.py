"""Promise 11: the running gateway, with real workers behind it, matches its OpenAPI document under fuzzing.

``tests/unit/test_openapi.py`` checks the document against the code and
fuzzes the app in-process; this runs schemathesis over HTTP against the
gateway under gunicorn, so the jobs it manages to submit are run by a real
worker against a real Redis.
"""

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = int(os.environ.get("DATAJOBS_FUZZ_EXAMPLES", 20))


def test_the_live_gateway_conforms_to_its_document(start_stack):
    # Only the shipped catalogue: fuzzed parameters of the test-only operations would crash workers and write files.
    # Short waits: the cases may wait on jobs queued behind others.
    stack = start_stack(concurrency=1, OPERATION_MODULES="", MAX_WAIT_SECONDS="0.5")
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/jobs"),
        ("GET", "/jobs/{job_id}"),
        ("DELETE", "/jobs/{job_id}"),
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def conforms(case):
            case.call_and_validate(checks=CHECKS, timeout=10)

        conforms()
